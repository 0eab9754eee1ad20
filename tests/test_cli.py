"""The command line, end to end on the tiny data: train -> sample, resume, help texts, one-line errors."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ddpmkit.cli import build_parser, main
from conftest import tiny_config_dict


@pytest.fixture
def config_file(tiny_idx_root, tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_config_dict(tiny_idx_root)))
    return path


def test_train_then_sample(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", str(config_file), "--set", "train.steps=4", "--run-dir", str(run),
                 "--no-progress"]) == 0
    assert (run / "final.pt").is_file()
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(run), "--sampler", "ddim", "--steps", "3", "--num-samples", "5",
                 "--seed", "7", "--output-dir", str(out), "--no-progress"]) == 0
    npz = np.load(out / "samples.npz")
    assert npz["arr_0"].shape == (5, 8, 8, 1) and npz["arr_0"].dtype == np.uint8
    assert list(npz["seeds"]) == [7, 8, 9, 10, 11]
    assert sorted(p.name for p in (out / "images").iterdir())[0] == "seed_00007.png"
    assert Image.open(out / "images" / "seed_00007.png").size == (8, 8)
    grid = Image.open(out / "grid.png")
    assert grid.size == (3 * 10 + 2, 2 * 10 + 2)  # 3 columns x 2 rows of 8 px images with 2 px padding
    # The saved PNG is the same image as the npz entry.
    assert np.array_equal(np.asarray(Image.open(out / "images" / "seed_00009.png").convert("L")), npz["arr_0"][2, ..., 0])

    # Running the same command again resumes (here: finds the run finished) instead of starting over.
    capsys.readouterr()
    assert main(["train", "--config", str(config_file), "--set", "train.steps=4", "--run-dir", str(run),
                 "--no-progress"]) == 0
    assert "already trained for 4 steps" in capsys.readouterr().out
    # ... and a longer --set train.steps continues from step 4.
    assert main(["train", "--config", str(config_file), "--set", "train.steps=6", "--run-dir", str(run),
                 "--no-progress"]) == 0
    assert "resuming at step 4" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["sample", "--checkpoint", "/nonexistent/x.pt"], "checkpoint /nonexistent/x.pt not found"),
    (["train", "--set", "train.lr=-1"], "train.lr: must be > 0"),
    (["train", "--set", "data.dataset=folder", "--run-dir", "{tmp}"], "data.dataset=folder needs a folder"),
])
def test_errors_are_one_line(argv, message, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_sample_rejects_bad_steps(config_file, tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--config", str(config_file), "--set", "train.steps=2", "--run-dir", str(run), "--no-progress"])
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(run / "final.pt"), "--steps", "11", "--output-dir", str(tmp_path)]) == 2
    assert "steps must be between 1 and T=10" in capsys.readouterr().err


@pytest.mark.parametrize("command,options", [
    ("train", ["--preset", "--config", "--set", "--run-dir", "--resume", "--fresh", "--stop-at"]),
    ("sample", ["--checkpoint", "--sampler", "--steps", "--eta", "--num-samples", "--seed", "--output-dir"]),
    ("config", ["--preset", "--config", "--set"]),
])
def test_help_is_complete(command, options):
    text = build_parser()._subparsers._group_actions[0].choices[command].format_help()
    for option in options:
        assert option in text


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "ddpmkit", "config", "--preset", "quick"], capture_output=True,
                            text=True, check=True)
    assert json.loads(result.stdout)["model"]["attention_resolutions"] == []
