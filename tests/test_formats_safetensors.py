"""A model as one .safetensors file: read back by ddpmkit, readable by safetensors alone, damage recognised."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ddpmkit.checkpoint import DamagedCheckpoint, load_checkpoint
from ddpmkit.cli import main
from ddpmkit.config import config_from_dict
from ddpmkit.errors import DdpmkitError
from ddpmkit.export import export
from ddpmkit.sampling import DiffusionSampler


@pytest.fixture
def exported(tiny_conditional_checkpoint, tmp_path):
    path = tmp_path / "model.safetensors"
    assert main(["export", "--checkpoint", str(tiny_conditional_checkpoint), "--format", "safetensors",
                 "--output", str(path)]) == 0
    return path


def test_safetensors_holds_the_ema_weights_and_the_config_as_metadata(tiny_conditional_checkpoint, exported):
    state = load_checkpoint(tiny_conditional_checkpoint)
    with safe_open(str(exported), framework="pt") as f:  # safetensors alone reads it: no ddpmkit, no pickle
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert tensors.keys() == state["ema"]["model"].keys()
    assert all(torch.equal(tensors[k], v) for k, v in state["ema"]["model"].items())
    assert config_from_dict(json.loads(metadata["ddpmkit.config"])).to_dict() == state["config"]  # JSON: lists
    assert json.loads(metadata["ddpmkit.class_names"]) == state["class_names"]
    assert metadata["ddpmkit.step"] == str(state["step"]) and metadata["ddpmkit.weights"] == "ema"


def test_a_safetensors_file_samples_as_its_checkpoint_does(tiny_conditional_checkpoint, exported, tmp_path):
    original = DiffusionSampler(tiny_conditional_checkpoint, device="cpu", precision="fp32")
    again = DiffusionSampler(exported, device="cpu", precision="fp32")
    assert again.model.spec == original.model.spec and again.class_names == original.class_names
    assert again.config.to_dict() == original.config.to_dict() and again.step == original.step
    options = dict(labels=[0, 1, 2], guidance=1.5, sampler="ddim", steps=3, progress=False)
    assert torch.equal(again.generate([5, 6, 7], **options), original.generate([5, 6, 7], **options))
    assert main(["sample", "--checkpoint", str(exported), "--class", "0", "--num-samples", "2", "--sampler", "ddim",
                 "--steps", "2", "--output-dir", str(tmp_path / "samples"), "--no-progress"]) == 0


def test_no_ema_exports_the_raw_weights(tiny_conditional_checkpoint, tmp_path):
    path = export(tiny_conditional_checkpoint, tmp_path / "raw.safetensors", format="safetensors", use_ema=False)
    raw = load_checkpoint(tiny_conditional_checkpoint)["model"]
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["ddpmkit.weights"] == "raw"
        assert all(torch.equal(f.get_tensor(k), v) for k, v in raw.items())


def test_a_damaged_file_is_recognised(exported):
    data = bytearray(exported.read_bytes())
    data[-3] ^= 0xFF  # a flipped byte in the last tensor
    exported.write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpoint, match="no longer matches the digest"):
        DiffusionSampler(exported, device="cpu")
    exported.write_bytes(bytes(data[: len(data) // 2]))  # an interrupted copy
    with pytest.raises(DamagedCheckpoint, match="truncated or not a safetensors file"):
        DiffusionSampler(exported, device="cpu")


def test_weights_without_ddpmkits_config_are_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "weights.safetensors"
    save_file({"conv_in.weight": torch.zeros(8, 1, 3, 3)}, str(path))
    with pytest.raises(DdpmkitError, match="without ddpmkit's config"):
        DiffusionSampler(path, device="cpu")
    assert main(["sample", "--checkpoint", str(path), "--output-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_export_does_not_replace_a_file_unless_asked(exported, tiny_conditional_checkpoint, capsys):
    before = exported.read_bytes()
    assert main(["export", "--checkpoint", str(tiny_conditional_checkpoint), "--format", "safetensors",
                 "--output", str(exported)]) == 2
    assert "--overwrite" in capsys.readouterr().err and exported.read_bytes() == before
    assert main(["export", "--checkpoint", str(tiny_conditional_checkpoint), "--format", "safetensors",
                 "--output", str(exported), "--overwrite", "--no-ema"]) == 0
    assert exported.read_bytes() != before


def test_formats_never_import_the_package_init():
    # issue 24: formats/ took __version__ from the package's __init__, which imports every layer (train, sampling)
    # above it; it reads ddpmkit.version, a module that imports nothing.
    import ast
    from pathlib import Path

    import ddpmkit.formats

    for path in Path(ddpmkit.formats.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                upward = node.level >= 2 and not node.module or node.level == 0 and node.module == "ddpmkit"
                assert not upward, f"{path.name}:{node.lineno} imports the package's __init__"
                assert node.module not in ("cli", "train", "ddpmkit.cli", "ddpmkit.train"), f"{path.name}:{node.lineno}"
