"""Long commands show a progress bar with the time remaining, and end with one line saying where their output is."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from ddpmkit.cli import main

from conftest import tiny_config_dict

# tqdm's "n/total [elapsed<remaining": the remaining time is "?" until the first refresh, which a job this small may
# finish before.
REMAINING = re.compile(r"\d+/\d+ \[\d\d:\d\d<(\d\d:\d\d|\?)")


def run(argv, capsys) -> tuple[str, str]:
    assert main(argv) == 0
    out, err = capsys.readouterr()
    return out.strip().splitlines()[-1], err


def names_existing_output(line: str) -> bool:
    """The line names a file or folder that exists (a path-looking word of it, punctuation stripped)."""
    words = [w.strip(",:;()'\"").rstrip("/") for w in line.split()]
    return any(("/" in w or "." in w) and Path(w).exists() for w in words)


@pytest.fixture
def config_file(tiny_idx_root, tmp_path):
    import json

    path = tmp_path / "tiny.json"
    d = tiny_config_dict(tiny_idx_root)
    d["model"]["class_conditional"] = True
    path.write_text(json.dumps(d))
    return path


def test_train_sample_evaluate_animate_show_progress_and_where_their_output_went(config_file, tmp_path, capsys,
                                                                                 tiny_idx_root, tiny_judge):
    run_dir = tmp_path / "run"
    last, err = run(["train", "--config", str(config_file), "--run-dir", str(run_dir)], capsys)
    assert REMAINING.search(err) and last.startswith("done in") and names_existing_output(last)
    commands = {
        "sample": ["sample", "--checkpoint", str(run_dir), "--sampler", "ddpm", "--num-samples", "4",
                   "--output-dir", str(tmp_path / "samples")],
        "evaluate": ["evaluate", "--checkpoint", str(run_dir), "--num-samples", "20", "--sampler", "ddim",
                     "--steps", "3", "--metrics", "fd,is", "--data-root", str(tiny_idx_root), "--classifier",
                     str(tiny_judge), "--no-cache", "--output-dir", str(tmp_path / "evaluation")],
        "animate": ["animate", "--checkpoint", str(run_dir), "--class", "0,1", "--per-class", "2", "--frames", "3",
                    "--steps", "4", "--sampler", "ddim", "--output-dir", str(tmp_path / "gifs")],
        "strip": ["strip", "--checkpoint", str(run_dir), "--frames", "3", "--ddim-steps", "3", "--output", str(tmp_path / "strip.png")],
        "export": ["export", "--checkpoint", str(run_dir), "--output", str(tmp_path / "exported")],
    }
    for name, argv in commands.items():
        last, err = run(argv, capsys)
        assert names_existing_output(last), (name, last)
        if name != "export":  # export takes well under a second: no bar
            assert REMAINING.search(err), (name, err[-300:])
    # Without --output, judge prints its results: its last line says so, and how to keep them (it said nothing).
    last, err = run(["classifier", "judge", "--checkpoint", str(run_dir), "--classifier", str(tiny_judge),
                     "--guidance", "0", "--per-class", "2", "--sampler", "ddim", "--steps", "3"], capsys)
    assert REMAINING.search(err) and "nothing written (add --output" in last


def test_classifier_training_shows_progress_and_where_it_saved(tiny_idx_root, tmp_path, capsys):
    last, err = run(["classifier", "train", "--dataset", "mnist", "--root", str(tiny_idx_root), "--epochs", "1",
                     "--holdout", "8", "--output", str(tmp_path / "judge.pt")], capsys)
    assert REMAINING.search(err) and names_existing_output(last) and "judge.pt" in last


def test_demo_start_up_shows_progress_and_where_it_serves(tiny_conditional_checkpoint, capsys):
    pytest.importorskip("gradio", reason="the demo's extra: pip install 'ddpmkit[demo]'")
    import socket

    from ddpmkit.demo import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    running = serve(tiny_conditional_checkpoint, port=port, device="cpu", block=False)
    try:
        out, err = capsys.readouterr()
        assert REMAINING.search(err) and "3/4 [" in err  # the last stage shown: starting the server
        assert out.strip().splitlines()[-1].endswith(f"at http://127.0.0.1:{port} (Ctrl-C stops)")
    finally:
        running.close()
