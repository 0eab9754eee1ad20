"""Settings changed when a run is resumed: whatever changes, the run goes on as the same run (issue #24).

Each test resumes a tiny run with another setting and compares it with the run never interrupted, or reads the
log and best.pt, so a setting that silently changed the training set, the 'best' comparison or the learning rate
shows up as a difference."""
import importlib
import json
import math

import pytest
import torch
from PIL import Image

from ddpmkit.checkpoint import read_checkpoint
from ddpmkit.config import config_from_dict
from ddpmkit.train import train

from conftest import tiny_config_dict

train_module = importlib.import_module("ddpmkit.train")  # the module; the package's name 'train' is the function


@pytest.fixture(scope="module")
def folder_root(tmp_path_factory):
    """An image folder (no test split) of 40 8x8 PNGs in two classes."""
    root = tmp_path_factory.mktemp("folder")
    g = torch.Generator().manual_seed(0)
    for k in range(40):
        cls = "a" if k % 2 else "b"
        (root / cls).mkdir(exist_ok=True)
        pixels = torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / cls / f"{k:02d}.png")
    return root


def _folder_config(root, **train):
    d = tiny_config_dict(root)
    d["data"] = {"dataset": "folder", "root": str(root), "image_size": 8, "num_workers": 0}
    d["train"].update({"steps": 4, "log_every": 1, "checkpoint_every": 2, "eval_images": 8, **train})
    return config_from_dict(d)


def _weights(path):
    return read_checkpoint(path)["model"]


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("first, then", [(2, 0), (0, 2)])
def test_changing_eval_every_on_resume_keeps_the_training_set(folder_root, tmp_path, capsys, first, then):
    straight = train(_folder_config(folder_root, eval_every=first), tmp_path / "straight", progress=False)
    train(_folder_config(folder_root, eval_every=first), tmp_path / "resumed", stop_at=2, progress=False)
    resumed = train(_folder_config(folder_root, eval_every=then), tmp_path / "resumed", progress=False)
    # The same images in the same batch order: the same weights as the run never interrupted.
    for name, tensor in _weights(straight).items():
        assert torch.equal(tensor, _weights(resumed)[name]), name
    after = [r for r in _records(tmp_path / "resumed") if r["step"] > 2]
    assert not any("heldout_loss" in r for r in after)  # 2 -> 0: no evaluation; 0 -> 2: none possible
    if then:
        assert "no held-out evaluation in this run" in capsys.readouterr().err
    assert read_checkpoint(resumed)["holds_out"] is bool(first)


class _ScriptedFD:
    """A stand-in for the in-training FD that returns the values it is given, one per evaluation."""
    values: list[float] = []

    def __init__(self, cfg, image_shape, class_names, cache_dir=None):
        self.name = "fd_mnist_classifier"

    def __call__(self, model, schedule, device):
        return self.values.pop(0)


def _mnist_config(root, **train):
    d = tiny_config_dict(root)
    d["train"].update({"steps": 4, "log_every": 1, "checkpoint_every": 2, **train})
    return config_from_dict(d)


def test_best_by_fd_starts_afresh_when_the_fd_settings_change(tiny_idx_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train_module, "TrainingFD", _ScriptedFD)
    fd_run = dict(eval_every=0, fd_every=2, best_by="fd", fd_samples=10, fd_steps=3)
    _ScriptedFD.values = [1.0]
    train(_mnist_config(tiny_idx_root, **fd_run), tmp_path / "run", stop_at=2, progress=False)
    assert read_checkpoint(tmp_path / "run" / "best.pt")["step"] == 2
    # 1,000 samples instead of 10: FD's bias differs, so 5.0 is no worse than the old 1.0; it is the new best.
    _ScriptedFD.values = [5.0]
    train(_mnist_config(tiny_idx_root, **{**fd_run, "fd_samples": 1000}), tmp_path / "run", progress=False)
    best = read_checkpoint(tmp_path / "run" / "best.pt")
    assert best["step"] == 4 and best["best"] == 5.0 and best["best_settings"]["fd_samples"] == 1000
    assert "fd_samples 10 -> 1000" in capsys.readouterr().err
    assert any("fd_samples 10 -> 1000" in r.get("note", "") for r in _records(tmp_path / "run"))  # and in the log
    # The same settings again: an ordinary comparison, a worse value leaves best.pt as it is.
    _ScriptedFD.values = [7.0]
    train(_mnist_config(tiny_idx_root, **{**fd_run, "fd_samples": 1000, "steps": 6}), tmp_path / "run",
          progress=False)
    assert read_checkpoint(tmp_path / "run" / "best.pt")["step"] == 4


def test_extending_a_finished_run_continues_at_its_last_learning_rate(folder_root, tmp_path):
    cfg = dict(eval_every=0, lr=1e-3, warmup_steps=1, min_lr_ratio=0.1)
    train(_folder_config(folder_root, **cfg), tmp_path / "run", progress=False)
    train(_folder_config(folder_root, **{**cfg, "steps": 8}), tmp_path / "run", progress=False)
    rates = {r["step"]: r["lr"] for r in _records(tmp_path / "run") if "lr" in r}
    # A record holds the rate its step was taken with: step 4's record the rate at step 3 of the 4-step cosine.
    assert rates[4] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 3))))
    # Then the rate the first cosine reached at its end, 0.1 lr, held: no jump back up.
    assert [rates[s] for s in (5, 6, 7, 8)] == pytest.approx([1e-4] * 4)


def test_a_batch_larger_than_the_data_set_is_named_once(tiny_idx_root, tmp_path, capsys):
    d = tiny_config_dict(tiny_idx_root)
    d["data"]["max_images"] = 4
    d["train"].update(steps=2, eval_every=0, batch_size=64)
    train(config_from_dict(d), tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert err.count("train.batch_size=64 is larger than the 4 training images") == 1


def test_a_model_trained_with_l1_and_min_snr_before_the_refusal_still_samples(tiny_conditional_checkpoint, tmp_path):
    # The combination is refused for training only: checkpoints of earlier versions still load everywhere.
    from ddpmkit.checkpoint import save_checkpoint
    from ddpmkit.errors import ConfigError
    from ddpmkit.sampling import DiffusionSampler

    state = read_checkpoint(tiny_conditional_checkpoint)
    state["config"]["diffusion"].update(loss="l1", loss_weighting="min_snr")
    old = save_checkpoint({k: v for k, v in state.items() if k != "sha256"}, tmp_path / "old.pt")
    assert DiffusionSampler(old, device="cpu").sample(1, sampler="ddim", steps=2, progress=False).shape[0] == 1
    with pytest.raises(ConfigError, match="or loss_weighting=none with loss=l1"):
        train(config_from_dict(state["config"]), tmp_path / "run", progress=False)
