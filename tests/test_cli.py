"""The command line, end to end on the tiny data: train -> sample, resume, help texts, one-line errors."""
import argparse
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ddpmkit import cli
from ddpmkit.cli import build_parser, main
from ddpmkit.errors import DdpmkitError
from ddpmkit.sampling import DiffusionSampler
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


def test_step_defaults_in_the_help_are_the_table():
    from ddpmkit.config import DEFAULT_STEPS

    commands = build_parser()._subparsers._group_actions[0].choices
    text = " ".join(commands["sample"].format_help().split())
    for name, count in DEFAULT_STEPS.items():
        assert f"{name} {count}" in text, name
    for command in ("interpolate", "strip"):  # pictures.picture_steps
        assert f"default {DEFAULT_STEPS['ddim']}" in " ".join(commands[command].format_help().split()), command


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "ddpmkit", "config", "--preset", "quick"], capture_output=True,
                            text=True, check=True)
    assert json.loads(result.stdout)["model"]["attention_resolutions"] == []


# -- numbers on the command line --------------------------------------------------------------------------------------

def test_sample_refuses_nan_guidance(tiny_conditional_checkpoint, tmp_path, capsys):
    # It used to sample without complaint (NaN weights give NaN images, written as black PNGs).
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(tiny_conditional_checkpoint), "--class", "0", "--guidance", "nan",
                 "--num-samples", "1", "--steps", "2", "--output-dir", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == "ddpmkit: error: argument --guidance: must be a finite number, got 'nan'; see 'ddpmkit sample " \
                  "--help'\n"
    assert not out.exists()


@pytest.mark.parametrize("options,message", [
    ({"guidance": math.nan}, "guidance must be a finite number, got nan"),
    ({"guidance": -math.inf}, "guidance must be a finite number, got -inf"),
    ({"sampler": "ddim", "eta": math.nan}, "eta must be a finite number >= 0, got nan"),
    ({"sampler": "ddim", "eta": math.inf}, "eta must be a finite number >= 0, got inf"),
])
def test_library_refuses_non_finite_guidance_and_eta(tiny_conditional_checkpoint, options, message):
    # DiffusionSampler.run is where every sampling path (sample, pictures, evaluate, judge) passes.
    sampler = DiffusionSampler(tiny_conditional_checkpoint, device="cpu")
    with pytest.raises(DdpmkitError, match=message):
        sampler.sample(2, labels=[0, 1], steps=2, progress=False, **options)


@pytest.fixture
def no_work(monkeypatch):
    """The commands themselves, replaced: a test of the argument checks fails if a bad value gets through."""
    def reached(args):
        raise AssertionError(f"the command ran with {args}")
    for name in ("_train", "_sample", "_pictures", "_evaluate", "_classifier"):
        monkeypatch.setattr(cli, name, reached)


CKPT = ["--checkpoint", "/nonexistent/model.pt"]


@pytest.mark.parametrize("argv,option,allowed", [
    (["sample", *CKPT, "--guidance", "nan"], "--guidance", "must be a finite number, got 'nan'"),
    (["sample", *CKPT, "--guidance", "inf"], "--guidance", "must be a finite number, got 'inf'"),
    (["sample", *CKPT, "--eta", "nan"], "--eta", "must be a finite number >= 0, got 'nan'"),
    (["sample", *CKPT, "--eta", "-0.5"], "--eta", "must be a finite number >= 0, got '-0.5'"),
    (["sample", *CKPT, "--steps", "0"], "--steps", "must be a whole number >= 1, got '0'"),
    (["sample", *CKPT, "--num-samples", "0"], "--num-samples", "must be a whole number >= 1"),
    (["sample", *CKPT, "--batch-size", "-3"], "--batch-size", "must be a whole number >= 1"),
    (["sample", *CKPT, "--seed", "-1"], "--seed", "must be a whole number >= 0, got '-1'"),
    (["sample", *CKPT, "--seed", str(2**63)], "--seed", "must be a whole number <= 9223372036854775807"),
    (["sample", *CKPT, "--seed", str(2**63 - 1), "--num-samples", "2"], "--seed",
     "seeds 9223372036854775807 .. 9223372036854775808 go past 9223372036854775807; use a smaller --seed"),
    (["interpolate", *CKPT, "--points", "1"], "--points", "must be a whole number >= 2"),
    (["interpolate", *CKPT, "--steps", "0"], "--steps", "must be a whole number >= 1"),
    (["interpolate", *CKPT, "--to-seed", "-2"], "--to-seed", "must be a whole number >= 0"),
    (["interpolate", *CKPT, "--guidance", "-inf"], "--guidance", "expected one argument"),  # argparse: an option
    (["interpolate", *CKPT, "--guidance=-inf"], "--guidance", "must be a finite number"),
    (["strip", *CKPT, "--frames", "1"], "--frames", "must be a whole number >= 2"),
    (["strip", *CKPT, "--ddpm-steps", "0"], "--stochastic-steps/--ddpm-steps", "must be a whole number >= 1"),
    (["strip", *CKPT, "--ddim-steps", "0"], "--deterministic-steps/--ddim-steps", "must be a whole number >= 1"),
    (["strip", *CKPT, "--deterministic-steps", "0"], "--deterministic-steps/--ddim-steps", "must be a whole number >= 1"),
    (["strip", *CKPT, "--seed", "1.5"], "--seed", "expected a whole number, got '1.5'"),
    (["animate", *CKPT, "--per-class", "0"], "--per-class", "must be a whole number >= 1"),
    (["animate", *CKPT, "--frames", "0"], "--frames", "must be a whole number >= 2"),
    (["animate", *CKPT, "--steps", "0"], "--steps", "must be a whole number >= 1"),
    (["animate", *CKPT, "--duration", "0"], "--duration", "must be a finite number > 0, got '0'"),
    (["animate", *CKPT, "--duration", "nan"], "--duration", "must be a finite number > 0"),
    (["animate", *CKPT, "--hold", "-1"], "--hold", "must be a finite number >= 0"),
    (["animate", *CKPT, "--hold", "inf"], "--hold", "must be a finite number >= 0"),
    (["animate", *CKPT, "--seed", str(2**63 - 4), "--per-class", "8"], "--seed", "use a smaller --seed"),
    (["plot-schedule", "--num-timesteps", "0"], "--num-timesteps", "must be a whole number >= 21"),
    (["classifier", "train", "--dataset", "mnist", "--epochs", "0"], "--epochs", "must be a whole number >= 1"),
    (["classifier", "train", "--dataset", "mnist", "--holdout", "0"], "--holdout", "must be a whole number >= 1"),
    (["classifier", "judge", *CKPT, "--guidance", "0,nan,3"], "--guidance", "must be a finite number, got 'nan'"),
    (["classifier", "judge", *CKPT, "--guidance", "0,x"], "--guidance", "expected a number, got 'x'"),
    (["classifier", "judge", *CKPT, "--guidance", ","], "--guidance", "expected comma-separated values"),
    (["classifier", "judge", *CKPT, "--per-class", "0"], "--per-class", "must be a whole number >= 1"),
    (["classifier", "judge", *CKPT, "--steps", "0"], "--steps", "must be a whole number >= 1"),
    (["classifier", "judge", *CKPT, "--seed", "-1"], "--seed", "must be a whole number >= 0"),
    (["evaluate", *CKPT, "--num-samples", "0"], "--num-samples", "must be a whole number >= 1"),
    (["evaluate", *CKPT, "--steps", "0"], "--steps", "must be a whole number >= 1"),
    (["evaluate", *CKPT, "--eta", "inf"], "--eta", "must be a finite number >= 0"),
    (["evaluate", *CKPT, "--guidance", "nan"], "--guidance", "must be a finite number"),
    (["evaluate", *CKPT, "--inversion-steps", "10,0"], "--inversion-steps", "must be a whole number >= 1, got '0'"),
    (["evaluate", *CKPT, "--inversion-images", "0"], "--inversion-images", "must be a whole number >= 1"),
    (["evaluate", *CKPT, "--inversion-refine", "-1"], "--inversion-refine", "must be a whole number >= 0"),
    (["evaluate", *CKPT, "--diversity-pairs", "0"], "--diversity-pairs", "must be a whole number >= 1"),
    (["evaluate", *CKPT, "--batch-size", "0"], "--batch-size", "must be a whole number >= 1"),
    (["evaluate", *CKPT, "--batch-size", str(2**63)], "--batch-size", "must be a whole number <= 9223372036854775807"),
    (["evaluate", *CKPT, "--seed", "-1"], "--seed", "must be a whole number >= 0"),
    (["train", "--stop-at", "0"], "--stop-at", "must be a whole number >= 1"),
    (["demo", *CKPT, "--port", "65536"], "--port", "must be a whole number <= 65535"),  # was let through to Gradio
    (["demo", *CKPT, "--port", "0"], "--port", "must be a whole number >= 1"),
])
def test_numeric_options_are_checked_before_any_work(argv, option, allowed, no_work, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    command = " ".join(argv[:2] if argv[0] == "classifier" else argv[:1])
    assert err.startswith(f"ddpmkit: error: argument {option}") or err.startswith(f"ddpmkit: error: {option}")
    assert allowed in err and err.endswith(f"; see 'ddpmkit {command} --help'\n") and err.count("\n") == 1


def _subcommands(parser=None, prefix=()):
    """(command words, parser) for every command, 'classifier train' and 'classifier judge' included."""
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _subcommands(sub, (*prefix, name)) if sub._subparsers else [((*prefix, name), sub)]


def test_every_numeric_option_has_a_checked_type():
    # Plain int/float let NaN, infinities and negative counts through: every numeric option uses a checked type,
    # and the defaults pass their own checks.
    numeric = 0
    for words, parser in _subcommands():
        for action in parser._actions:
            assert action.type not in (int, float), f"ddpmkit {' '.join(words)} {action.option_strings[0]}"
            if getattr(action.type, "checked", False):
                numeric += 1
                if isinstance(action.default, str):
                    action.type(action.default)
    assert numeric >= 40


def test_plot_schedule_refuses_a_T_too_small_for_the_linear_schedule(tmp_path, capsys):
    # T = 5 scales the linear schedule's last beta to 0.02 * 1000 / 5 = 4: this was a ValueError traceback.
    assert main(["plot-schedule", "--num-timesteps", "5", "--output", str(tmp_path / "s.png")]) == 2
    assert "argument --num-timesteps: must be a whole number >= 21, got '5'" in capsys.readouterr().err
    assert main(["plot-schedule", "--num-timesteps", "21", "--output", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()


# -- argparse's own errors: one line, status 2, no SystemExit ---------------------------------------------------------

@pytest.mark.parametrize("argv,message", [
    ([], "the following arguments are required: COMMAND; see 'ddpmkit --help'"),
    (["smaple"], "argument COMMAND: invalid choice: 'smaple'"),
    (["sample"], "the following arguments are required: --checkpoint; see 'ddpmkit sample --help'"),
    (["sample", *CKPT, "--sampler", "lms"], "argument --sampler: invalid choice: 'lms'"),
    (["sample", *CKPT, "--bogus", "1"], "unrecognized arguments: --bogus 1; see 'ddpmkit sample --help'"),
    (["sample", *CKPT, "--steps"], "argument --steps: expected one argument; see 'ddpmkit sample --help'"),
    (["classifier"], "the following arguments are required: ACTION; see 'ddpmkit classifier --help'"),
    (["classifier", "judge"], "required: --checkpoint; see 'ddpmkit classifier judge --help'"),
    (["evaluate", *CKPT, "--samples", "x.npz"], "argument --samples: not allowed with argument --checkpoint"),
    (["config", "--set"], "argument --set: expected one argument; see 'ddpmkit config --help'"),
])
def test_usage_errors_are_one_line_with_status_2(argv, message, no_work, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("ddpmkit: error: ") and message in captured.err
    assert captured.err.count("\n") == 1 and captured.out == ""


def test_a_line_break_in_an_argument_stays_on_one_line(capsys):
    assert main(["sample", *CKPT, "--oops\nwhat"]) == 2
    assert capsys.readouterr().err == "ddpmkit: error: unrecognized arguments: --oops\\nwhat; see 'ddpmkit sample " \
                                      "--help'\n"


@pytest.mark.parametrize("argv", [["--help"], ["sample", "--help"], ["classifier", "judge", "-h"], ["--version"]])
def test_help_and_version_return_0(argv, no_work, capsys):
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and ("usage: ddpmkit" in captured.out or captured.out == "ddpmkit 0.1.0\n")


def test_command_line_errors_from_a_shell():
    result = subprocess.run([sys.executable, "-m", "ddpmkit", "sample", "--checkpoint", "x.pt", "--guidance", "nan"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "ddpmkit: error: argument --guidance: must be a finite number, got 'nan'; see " \
                            "'ddpmkit sample --help'\n"
