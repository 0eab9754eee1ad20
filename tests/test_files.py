"""files.py: atomic writes, and the temporaries that writers killed mid-write leave behind."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ddpmkit.cli import main
from ddpmkit.files import atomic_write, is_temporary, remove_stale_temporaries


def _stale(folder, name: str):
    """What ``atomic_write(folder / name)`` leaves when its process is killed mid-write."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.ddpmkit-k1ll3d00.tmp"
    path.write_bytes(b"half a file")
    assert is_temporary(path)
    return path


def test_every_command_clears_what_a_killed_run_left_in_its_output_folder(tiny_conditional_checkpoint, tiny_idx_root,
                                                                          tiny_judge, tmp_path):
    # A killed sample / evaluate / picture command leaves .NAME.XXXX.tmp files; the next command writing there
    # removes them, as training does in its run directory.
    ckpt = ["--checkpoint", str(tiny_conditional_checkpoint)]
    quick = ["--no-progress"]
    left = [_stale(tmp_path / "samples", "grid.png"), _stale(tmp_path / "samples" / "images", "seed_00000.png"),
            _stale(tmp_path / "eval", "metrics.json"), _stale(tmp_path / "pictures", "strip.png"),
            _stale(tmp_path / "gifs", "unconditional.gif")]
    assert main(["sample", *ckpt, "--num-samples", "2", "--sampler", "ddim", "--steps", "2",
                 "--output-dir", str(tmp_path / "samples"), *quick]) == 0
    assert main(["evaluate", "--samples", str(tmp_path / "samples" / "samples.npz"), "--dataset", "mnist",
                 "--data-root", str(tiny_idx_root), "--classifier", str(tiny_judge), "--metrics", "is", "--no-cache",
                 "--output-dir", str(tmp_path / "eval"), *quick]) == 0
    assert main(["strip", *ckpt, "--frames", "2", "--ddim-steps", "2", "--output",
                 str(tmp_path / "pictures" / "strip.png"), *quick]) == 0
    assert main(["animate", *ckpt, "--per-class", "1", "--frames", "2", "--steps", "2", "--sampler", "ddim",
                 "--output-dir", str(tmp_path / "gifs"), *quick]) == 0
    assert [p for p in left if p.exists()] == []
    assert not [p for p in tmp_path.rglob("*") if is_temporary(p)]


def test_another_programs_hidden_temporaries_are_left_alone(tmp_path):
    # Outputs often go to a folder other programs use (the current one): only ddpmkit's own temporaries are cleared.
    theirs = [tmp_path / ".notes.txt.tmp", tmp_path / ".swap.a1b2c3d4.tmp"]
    for path in theirs:
        path.write_bytes(b"another program's")
    mine = _stale(tmp_path, "grid.png")
    with atomic_write(tmp_path / "grid.png") as f:
        f.write(b"png")
    assert not mine.exists() and all(p.read_bytes() == b"another program's" for p in theirs)


def test_a_temporary_still_being_written_is_left_alone(tmp_path):
    # Clearing must never delete the file of a writer that is alive (another command writing to the same folder):
    # only those whose writer is gone.
    with atomic_write(tmp_path / "new.bin") as f:
        f.write(b"in progress")
        dead = _stale(tmp_path, "old.bin")
        live = [p for p in tmp_path.iterdir() if is_temporary(p) and p != dead]
        assert remove_stale_temporaries(tmp_path) == [dead]
        assert [p for p in live if p.exists()] == live and len(live) == 1
    assert (tmp_path / "new.bin").read_bytes() == b"in progress" and not dead.exists()


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_the_temporary_of_a_killed_writer_is_cleared_by_the_next_write(tmp_path):
    # A process killed inside atomic_write: the next write into that folder (another process) clears its file.
    script = textwrap.dedent(f"""
        import os, signal, sys
        from ddpmkit.files import atomic_write
        with atomic_write({str(tmp_path / 'out.npz')!r}) as f:
            f.write(b"partial")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    run = subprocess.run([sys.executable, "-c", script], env={**os.environ}, capture_output=True)
    assert run.returncode == -signal.SIGKILL
    left = [p for p in tmp_path.iterdir() if is_temporary(p)]
    assert len(left) == 1 and left[0].name.startswith(".out.npz.")
    with atomic_write(tmp_path / "other.npz") as f:
        np.save(f, np.zeros(2))
    assert not left[0].exists() and sorted(p.name for p in tmp_path.iterdir()) == ["other.npz"]
