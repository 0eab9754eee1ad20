"""Faults injected into training: SIGTERM, kill -9 at random moments, NaN losses; and what a resumed run finds.

The kill test runs a reduced count in CI; by hand, ``DDPMKIT_KILL_TRIALS=100 pytest tests/test_fault_tolerance.py
-k kill`` runs more (``DDPMKIT_KILL_SEED`` picks the moments).
"""
import importlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

training = importlib.import_module("ddpmkit.losses")  # the module whose diffusion_loss a step's loss calls

from conftest import tiny_config_dict
from ddpmkit.checkpoint import read_checkpoint
from ddpmkit.errors import DdpmkitError
from ddpmkit.files import is_temporary
from ddpmkit.train import train
from test_training import _with



def _trials() -> int:
    return int(os.environ.get("DDPMKIT_KILL_TRIALS", "4"))


def _steps() -> int:
    """Training steps of the job: enough for every kill to land at a step of its own."""
    return max(24, 2 * _trials())


@pytest.fixture(scope="module")
def job(tiny_idx_root, tmp_path_factory):
    """A tiny job that writes a checkpoint every step (so kills often land mid-write), evaluates the held-out loss
    every 4 steps (best.pt), draws dropout, flips and label drops (RNG state that must be restored), and its result
    when run once, uninterrupted, in a process of its own."""
    d = tiny_config_dict(tiny_idx_root)
    d["model"].update(dropout=0.1, class_conditional=True)
    d["data"]["hflip"] = True
    d["train"].update(steps=_steps(), checkpoint_every=1, keep_checkpoints=2, eval_every=4, log_every=2)
    folder = tmp_path_factory.mktemp("job")
    config = folder / "job.json"
    config.write_text(json.dumps(d))
    reference = folder / "reference"
    subprocess.run(_command(config, reference), check=True, capture_output=True)
    return config, read_checkpoint(reference / "final.pt")


def _command(config: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "ddpmkit", "train", "--config", str(config), "--run-dir", str(run_dir),
            "--no-progress"]


def _assert_same_training_state(a: dict, b: dict) -> None:
    for key in ("model", "optimizer"):
        for name, tensor in _tensors(a[key]):
            assert torch.equal(tensor, dict(_tensors(b[key]))[name]), (key, name)
    for name, tensor in a["ema"]["model"].items():
        assert torch.equal(tensor, b["ema"]["model"][name]), ("ema", name)
    assert a["ema"]["num_updates"] == b["ema"]["num_updates"] and a["step"] == b["step"]


def _tensors(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(tree, torch.Tensor):
        yield prefix, tree


def _assert_nothing_half_written(run_dir: Path) -> None:
    """Every checkpoint a user can see loads and verifies; every log line is whole JSON."""
    for path in run_dir.rglob("*.pt"):
        read_checkpoint(path)
    lines = (run_dir / "log.jsonl").read_text().splitlines() if (run_dir / "log.jsonl").exists() else []
    for line in lines[:-1]:  # the last line may be cut by the kill; the next start drops it
        json.loads(line)


def test_sigterm_saves_at_the_step_boundary_and_resumes_exactly(job, tmp_path):
    config, reference = job
    run = tmp_path / "run"
    process = subprocess.Popen(_command(config, run), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "log.jsonl").is_file() or not (run / "log.jsonl").read_text():
        assert process.poll() is None and time.time() < deadline, "training did not start"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: finishing this step" in err and "run the same command again to resume" in err, err
    assert "Traceback" not in err
    stopped = read_checkpoint(run / "latest.pt")["step"]
    assert 2 <= stopped < _steps(), "stopped after the first log line, before the end"
    assert f"saved {run / 'latest.pt'} at step {stopped}" in err
    subprocess.run(_command(config, run), check=True, capture_output=True)
    _assert_same_training_state(read_checkpoint(run / "final.pt"), reference)
    assert not [p for p in run.rglob("*") if is_temporary(p)]


def _newest_periodic_step(run_dir: Path) -> int:
    folder = run_dir / "checkpoints"
    names = [p.name for p in folder.iterdir() if not is_temporary(p)] if folder.is_dir() else []
    return max((int(name[5:13]) for name in names if name.startswith("step_")), default=0)


def test_kill_9_at_random_moments_then_resume_gives_the_same_weights(job, tmp_path):
    # Each kill lands at a random step (increasing from kill to kill) plus a random fraction of a step, so over many
    # trials it hits every part of a step: the forward and backward pass, the digest, torch.save, the fsync, the
    # rename, linking latest.pt, deleting old checkpoints, the log and the held-out evaluation.
    config, reference = job
    rng = random.Random(int(os.environ.get("DDPMKIT_KILL_SEED", "0")))
    targets = sorted(rng.sample(range(1, _steps()), _trials()))
    run = tmp_path / "run"
    killed_at, mid_write = [], 0
    for target in targets:
        process = subprocess.Popen(_command(config, run), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while _newest_periodic_step(run) < target and process.poll() is None:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.08))
        assert process.poll() is None, f"the run ended before its kill: {process.stderr.read().decode()}"
        process.kill()
        process.wait()
        killed_at.append(_newest_periodic_step(run))
        mid_write += any(is_temporary(p) for p in run.rglob("*"))  # it died while writing a file
        _assert_nothing_half_written(run)
    finish = subprocess.run(_command(config, run), capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    print(f"{len(targets)} kills, {mid_write} of them while a file was being written; newest checkpoint at each "
          f"kill: {killed_at}")
    _assert_same_training_state(read_checkpoint(run / "final.pt"), reference)
    assert not [p for p in run.rglob("*") if is_temporary(p)], "a temporary file was left behind"
    steps = [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == sorted(set(steps)), "the log holds a step twice"


# -- numerical faults ---------------------------------------------------------------------------------------------

def _inject_nan(monkeypatch, bad_steps: set[int], accum: int = 1) -> None:
    """Make the loss NaN at the given (1-based) optimizer steps."""
    real, calls = training.diffusion_loss, []

    def loss_with_faults(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if (len(calls) - 1) // accum + 1 in bad_steps else loss

    monkeypatch.setattr(training, "diffusion_loss", loss_with_faults)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_nan_step_changes_neither_weights_nor_ema_and_is_counted(tiny_config, tmp_path, monkeypatch, precision):
    cfg = _with(tiny_config, train={"eval_every": 0, "log_every": 3, "precision": precision, "grad_accum": 2,
                                    "checkpoint_every": 100})
    before = read_checkpoint(train(cfg, tmp_path / "clean", stop_at=2, progress=False))
    _inject_nan(monkeypatch, {3}, accum=2)
    after = read_checkpoint(train(cfg, tmp_path / "faulty", stop_at=3, progress=False))
    assert after["step"] == 3
    for name, tensor in before["model"].items():
        assert torch.equal(tensor, after["model"][name]), name
    for name, tensor in before["ema"]["model"].items():
        assert torch.equal(tensor, after["ema"]["model"][name]), name
    assert after["ema"]["num_updates"] == before["ema"]["num_updates"] == 2
    for p_before, p_after in zip(before["optimizer"]["state"].values(), after["optimizer"]["state"].values()):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(p_before[key], p_after[key]), key
    record = json.loads((tmp_path / "faulty" / "log.jsonl").read_text().splitlines()[0])
    assert record["step"] == 3 and record["skipped_steps"] == 1
    assert math.isfinite(record["loss"])  # the mean over the two finite steps


def test_k_nonfinite_steps_in_a_row_stop_training_with_the_checkpoint_from_before(tiny_config, tmp_path, monkeypatch,
                                                                                  capsys):
    cfg = _with(tiny_config, train={"steps": 12, "eval_every": 0, "log_every": 100, "checkpoint_every": 1,
                                    "max_nonfinite_steps": 3})
    clean = read_checkpoint(train(cfg, tmp_path / "clean", stop_at=4, progress=False))
    _inject_nan(monkeypatch, set(range(5, 13)))
    with pytest.raises(DdpmkitError) as stopped:
        train(cfg, tmp_path / "faulty", progress=False)
    message = str(stopped.value)
    assert "NaN or infinite in 3 steps in a row (up to step 7)" in message
    assert "lower train.lr" in message and "fp16" in message and "run the same command again" in message
    assert "\n" not in message
    latest = read_checkpoint(tmp_path / "faulty" / "latest.pt")
    assert latest["step"] == 6  # steps 5 and 6 were written before the third fault in a row was seen
    for name, tensor in clean["model"].items():
        assert torch.equal(tensor, latest["model"][name]), name
    assert not (tmp_path / "faulty" / "final.pt").exists()
    # Resuming with a lower learning rate is allowed (lr may change between a run and its resumption).
    monkeypatch.undo()
    train(_with(cfg, train={"lr": 5e-4}), tmp_path / "faulty", progress=False)
    assert read_checkpoint(tmp_path / "faulty" / "final.pt")["step"] == 12


# -- the checkpoint's "best" and the fp16 loop ---------------------------------------------------------------------

def test_latest_holds_the_best_value_of_the_evaluation_at_its_own_step(tiny_config, tmp_path):
    # The evaluation at step 3 sets a new best; latest.pt of step 3 must know it, or a resumed run would later
    # overwrite best.pt with a model worse than the true best.
    cfg = _with(tiny_config, train={"eval_every": 3, "checkpoint_every": 3})
    train(cfg, tmp_path, stop_at=3, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    heldout = [r["heldout_loss"] for r in logged if "heldout_loss" in r]
    assert len(heldout) == 1
    assert read_checkpoint(tmp_path / "latest.pt")["best"] == heldout[0]
    assert read_checkpoint(tmp_path / "best.pt")["best"] == heldout[0]


def test_fp16_training_does_not_read_the_loss_scale_back_every_step(tiny_config, tmp_path, monkeypatch):
    # GradScaler.get_scale() copies the scale to the host: a full GPU synchronisation each time.
    calls = []
    real = torch.amp.GradScaler.get_scale
    monkeypatch.setattr(torch.amp.GradScaler, "get_scale", lambda self: (calls.append(1), real(self))[1])

    def count(steps: int) -> int:
        calls.clear()
        cfg = _with(tiny_config, train={"steps": steps, "precision": "fp16", "eval_every": 0,
                                        "checkpoint_every": 1000, "log_every": 2})
        train(cfg, tmp_path / f"run{steps}", progress=False)
        return len(calls)

    assert count(10) == count(4)  # only the final checkpoint's state_dict reads it


def test_a_resumed_log_holds_each_step_once(tiny_config, tmp_path):
    cfg = _with(tiny_config, train={"log_every": 1, "checkpoint_every": 2, "eval_every": 0})
    train(cfg, tmp_path, stop_at=3, progress=False)  # logs steps 1-3, checkpoints at 2 and 3
    log = tmp_path / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 4, "loss": 0.')  # a line cut by a kill
    os.remove(tmp_path / "latest.pt")                        # ... which also happened before step 3 was linked
    (tmp_path / "checkpoints" / "step_00000003.pt").unlink()
    train(cfg, tmp_path, progress=False)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
