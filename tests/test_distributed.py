"""Several processes, as torchrun starts them: CPU processes over gloo stand in for GPUs over NCCL and for machines
on a network (two torchrun commands on one machine with a c10d rendezvous on localhost are two "nodes").

The reference for every run is one plain process with the same config: the same global batch, the same images in
the same order and the same random numbers, so the same losses and weights up to the order of float additions.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import tiny_config_dict
from ddpmkit import distributed
from ddpmkit.checkpoint import read_checkpoint
from ddpmkit.cli import main
from ddpmkit.config import config_from_dict
from ddpmkit.data import BatchOrder, ImageData, _RankSampler, batch_stream
from ddpmkit.errors import DdpmkitError
from ddpmkit.global_batch import BLOCK_IMAGES, BatchSplit, StepRandomness, step_seed
from ddpmkit.run_log import read_records
from ddpmkit.train import train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
WEIGHT_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}


def _config(root: Path, **train_changes) -> dict:
    d = tiny_config_dict(root)
    d["model"]["class_conditional"] = True  # label dropout draws random numbers too
    d["data"]["hflip"] = True
    d["train"].update({"grad_accum": 2, "steps": 6, **train_changes})
    return d


def _write(d: dict, path: Path) -> Path:
    path.write_text(json.dumps(d))
    return path


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _torchrun(args: list[str], nproc: int = 2, launch: list[str] | None = None, timeout: float = 120,
              **kwargs) -> subprocess.CompletedProcess:
    command = [*TORCHRUN, *(launch or ["--standalone"]), f"--nproc_per_node={nproc}", "-m", "ddpmkit", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_env(), **kwargs)


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _assert_same_training(run: Path, reference: Path, loss_rel: float = 1e-5) -> None:
    """Same loss at every logged step, same held-out losses, same final weights and EMA (float tolerance)."""
    def losses(path):
        return {(r["step"], key): r[key] for r in read_records(path / "log.jsonl")
                for key in ("loss", "heldout_loss") if key in r}
    mine, theirs = losses(run), losses(reference)
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        assert mine[key] == pytest.approx(value, rel=loss_rel), key
    a, b = read_checkpoint(run / "final.pt"), read_checkpoint(reference / "final.pt")
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        weights_a = a["model"] if part == "model" else a["ema"]["model"]
        weights_b = b["model"] if part == "model" else b["ema"]["model"]
        for name, tensor in weights_b.items():
            torch.testing.assert_close(weights_a[name], tensor, **WEIGHT_TOLERANCE, msg=f"{part} {name}")


@pytest.fixture(scope="module")
def reference_run(tiny_idx_root, tmp_path_factory) -> Path:
    """The tiny conditional config (flips, label dropout, 2 micro-batches per step) trained by one plain process."""
    run = tmp_path_factory.mktemp("one_process")
    train(config_from_dict(_config(tiny_idx_root)), run, progress=False)
    return run


@pytest.fixture(scope="module")
def two_process_run(tiny_idx_root, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("two_processes") / "run"
    config = _write(_config(tiny_idx_root), run.parent / "tiny.json")
    _ok(_torchrun(["train", "--config", str(config), "--run-dir", str(run), "--no-progress"]))
    return run


# -- what the processes share, without processes ----------------------------------------------------------------

def test_a_global_batch_that_does_not_split_is_refused_with_the_fix():
    assert BatchSplit(12, 2, 3).micro_batch == 2
    with pytest.raises(DdpmkitError, match=r"batch_size=12 .* 2 process\(es\) x 4 micro-batch.*grad_accum to one of "
                                           r"1, 2, 3, 6"):
        BatchSplit(12, 2, 4)
    with pytest.raises(DdpmkitError, match="make train.batch_size a multiple of 8"):
        BatchSplit(12, 8, 1)


@pytest.mark.parametrize("world, accum", [(1, 1), (1, 4), (2, 2), (4, 1)])
def test_the_ranks_micro_batches_tile_each_global_batch(world, accum):
    order, split = BatchOrder(num_images=10, batch_size=8, seed=3), BatchSplit(8, world, accum)
    streamed = [list(_RankSampler(order, split, r, 1, 4)) for r in range(world)]
    data = ImageData(torch.arange(10, dtype=torch.uint8)[:, None, None, None], None, None, [], 1, "test")
    in_memory = [[x.flatten().tolist() for x, _ in batch_stream(data, order, split, r, 1, 4, torch.device("cpu"))]
                 for r in range(world)]
    for step in range(1, 4):
        k = step - 1
        tiles = [streamed[r][k * accum + m] for r in range(world) for m in range(accum)]
        assert sum(tiles, []) == order.indices(step).tolist()  # every image once, in the global order
        assert [in_memory[r][k * accum + m] for r in range(world) for m in range(accum)] == tiles


def _draw(part: slice, seed: int = 7, step: int = 3, image_shape=(1, 2, 2)) -> StepRandomness:
    return StepRandomness.draw(torch.Generator(), seed, step, part, image_shape, 10, hflip=True, label_dropout=0.5)


def _fields(drawn: StepRandomness) -> list[torch.Tensor]:
    return [drawn.t, drawn.noise, drawn.flips, drawn.drops]


def test_step_randomness_is_a_function_of_seed_step_and_image():
    a, again, other = _draw(slice(0, 40)), _draw(slice(0, 40)), _draw(slice(0, 40), step=4)
    assert all(torch.equal(x, y) for x, y in zip(_fields(a), _fields(again)))
    assert not torch.equal(a.noise, other.noise)
    assert a.noise.shape == (40, 1, 2, 2) and a.t.shape == a.flips.shape == a.drops.shape == (40,)
    assert len({step_seed(0, s, "batch") for s in range(1000)} | {step_seed(1, s, "batch") for s in range(1000)}) \
        == 2000


@settings(max_examples=int(os.environ.get("DDPMKIT_FUZZ_EXAMPLES", "30")), deadline=None)
@given(micro=st.integers(1, 40), world=st.integers(1, 4), accum=st.integers(1, 4))
def test_every_micro_batch_draws_its_slice_of_the_global_batchs_numbers(micro, world, accum):
    # What one process with the whole batch in one pass draws, sliced: the numbers don't depend on the split.
    split = BatchSplit(micro * world * accum, world, accum)
    whole = _fields(_draw(slice(0, split.batch_size)))
    for rank in range(world):
        for m in range(accum):
            part = split.part(rank, m)
            assert all(torch.equal(mine, all_of[part]) for mine, all_of in zip(_fields(_draw(part)), whole))


class _RandomDraws(TorchDispatchMode):
    """The shape of what each random operation run inside it draws."""

    def __init__(self):
        super().__init__()
        self.shapes: list[torch.Size] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in ("rand", "randn", "randint", "normal_", "uniform_", "random_"):
            self.shapes.append(out.shape)
        return out


@pytest.mark.parametrize("part, blocks", [(slice(2048, 2056), 1), (slice(30, 38), 2), (slice(64, 160), 3)])
def test_a_micro_batch_draws_only_the_blocks_it_overlaps(part, blocks):
    # A rank of a 4,096-image global batch draws numbers for its own images' blocks, not for the 4,096.
    with _RandomDraws() as drawn:
        _draw(part, image_shape=(3, 4, 4))
    per_image = 1 + 3 * 4 * 4 + 1 + 1 + 1  # t, noise, flip, drop, u
    assert sum(shape.numel() for shape in drawn.shapes) == blocks * BLOCK_IMAGES * per_image


def test_a_process_draws_only_its_micro_batchs_numbers_in_training(tiny_idx_root, tmp_path, monkeypatch):
    # One process, 64 images a step in 8 micro-batches of 8: no random draw holds more than one block of images.
    drawn, draw = _RandomDraws(), StepRandomness.draw

    def watched(*args, **kwargs):
        with drawn:
            return draw(*args, **kwargs)
    monkeypatch.setattr(StepRandomness, "draw", watched)
    cfg = config_from_dict(_config(tiny_idx_root, steps=1, batch_size=64, grad_accum=8, eval_every=0))
    train(cfg, tmp_path, progress=False)
    noise = [shape[0] for shape in drawn.shapes if shape[1:] == (1, 8, 8)]
    assert len(noise) == 8 and max(noise) == BLOCK_IMAGES < 64


def test_one_process_commands_refuse_torchrun(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["plot-schedule", "--output", "x.png"]) == 2
    assert "'ddpmkit plot-schedule' runs as one process; start it without torchrun" in capsys.readouterr().err


def test_gather_vote_and_replica_check_across_two_processes():
    """tests/distributed_checks.py under torchrun: gather order, the stop vote, sums, and the replica check catching
    a 1e-7 difference. (Processes from torch.multiprocessing.spawn sometimes abort in gloo's teardown at exit with
    this PyTorch, "terminate called without an active exception"; processes that torchrun starts exit cleanly.)"""
    script = Path(__file__).with_name("distributed_checks.py")
    result = _ok(subprocess.run([*TORCHRUN, "--standalone", "--nproc_per_node=2", str(script)], capture_output=True,
                                text=True, timeout=120, env=_env()))
    assert result.stdout.count("all checks passed") == 2


# -- training ----------------------------------------------------------------------------------------------------

def test_two_processes_train_exactly_as_one(two_process_run, reference_run):
    _assert_same_training(two_process_run, reference_run)
    records = read_records(two_process_run / "log.jsonl")
    # The EMA (and the weights) of both processes were compared bit for bit at every checkpoint.
    assert [r["step"] for r in records if r.get("replicas_identical") == 2] == [3, 6]
    # Only rank 0 wrote: one TensorBoard event file, every record once, nothing beside what one process writes.
    assert len(list((two_process_run / "tensorboard").glob("events.*"))) == 1
    steps = [(r["step"], tuple(sorted(r))) for r in records]
    assert len(steps) == len(set(steps))
    assert sorted(p.name for p in two_process_run.iterdir()) == sorted(p.name for p in reference_run.iterdir())


def test_two_processes_train_and_distil_a_flow_model_exactly_as_one(tiny_idx_root, tmp_path):
    # The continuous objectives draw their noise levels from the same per-image numbers (u) as DDPM's timesteps and
    # reach the loop through the same losses.training_loss; flow stands for both here (edm's loss is tested in
    # tests/test_objectives.py, its training in tests/test_objective_training.py), to keep CI within its time.
    # A distillation round is a training run with its teacher's loss (ddpmkit.distill): the same holds for it.
    from ddpmkit.distill.rounds import distill

    d = {**_config(tiny_idx_root, steps=4), "diffusion": {"objective": "flow"}}
    train(config_from_dict(d), tmp_path / "one", progress=False)
    _ok(_torchrun(["train", "--config", str(_write(d, tmp_path / "config.json")), "--run-dir", str(tmp_path / "two"),
                   "--no-progress"]))
    _assert_same_training(tmp_path / "two", tmp_path / "one")
    teacher = str(tmp_path / "one" / "final.pt")
    distill(teacher, tmp_path / "student_one", steps=1, teacher_steps=2, round_steps=4, progress=False)
    _ok(_torchrun(["distill", "--checkpoint", teacher, "--steps", "1", "--teacher-steps", "2", "--round-steps", "4",
                   "--run-dir", str(tmp_path / "student_two"), "--no-progress"]))
    # A distillation loss is a small residual (1e-4 here): the weights' float rounding, which differs between one
    # process's accumulated gradients and DDP's all-reduced ones, moves it by a relative 1e-5 or so; the weights
    # themselves are compared at the usual tolerance.
    _assert_same_training(tmp_path / "student_two" / "round1_1steps", tmp_path / "student_one" / "round1_1steps",
                          loss_rel=1e-4)
    # Consistency distillation calls the replicated student twice per step, once without gradients for its target.
    distill(teacher, tmp_path / "cd_one", method="consistency", steps=1, teacher_steps=2, round_steps=4,
            progress=False)
    _ok(_torchrun(["distill", "--checkpoint", teacher, "--method", "consistency", "--steps", "1", "--teacher-steps",
                   "2", "--round-steps", "4", "--run-dir", str(tmp_path / "cd_two"), "--no-progress"]))
    _assert_same_training(tmp_path / "cd_two" / "round1_grid2", tmp_path / "cd_one" / "round1_grid2", loss_rel=1e-4)


def test_a_checkpoint_holds_nothing_tied_to_processes_or_devices(two_process_run):
    state = read_checkpoint(two_process_run / "final.pt")
    assert set(state) == {"model", "ema", "optimizer", "scaler", "step", "best", "best_settings", "lr_schedule",
                          "holds_out", "config", "unet", "class_names", "sha256"}  # no generator state or process count
    assert state["lr_schedule"] == {"end": 6, "decay_start": 2, "start_factor": 1.0}  # plain numbers, any process count
    assert not any(name.startswith("module.") for name in state["model"])  # the network's names, not DDP's


@pytest.mark.gpu
def test_a_run_moves_from_the_cpu_to_a_gpu_and_back(tiny_idx_root, tmp_path):
    d = _config(tiny_idx_root)
    for device, stop in (("cpu", 2), ("cuda", 4), ("cpu", 6)):
        train(config_from_dict({**d, "train": {**d["train"], "device": device}}), tmp_path, stop_at=stop,
              progress=False)
        assert read_checkpoint(tmp_path / "latest.pt")["step"] == stop


def test_resume_across_world_sizes(tiny_idx_root, reference_run, tmp_path):
    run = tmp_path / "run"
    config = _write(_config(tiny_idx_root), tmp_path / "tiny.json")
    args = ["train", "--config", str(config), "--run-dir", str(run), "--no-progress"]
    _ok(_torchrun([*args, "--stop-at", "2"]))                              # 2 processes to step 2
    assert read_checkpoint(run / "latest.pt")["step"] == 2
    train(config_from_dict(_config(tiny_idx_root)), run, stop_at=4, progress=False)  # 1 process to step 4
    assert "resuming at step 4" in _ok(_torchrun(args)).stdout             # 2 processes to the end
    _assert_same_training(run, reference_run)


def test_two_nodes_train_as_one_node(image_folder_config, tmp_path):
    """Two torchrun commands (the two machines) meet at a c10d rendezvous; the data is read on the fly, so each
    process decodes only its own images."""
    config, reference = image_folder_config
    port = _free_port()
    run = tmp_path / "run"
    args = ["train", "--config", str(config), "--run-dir", str(run), "--no-progress"]
    nodes = [subprocess.Popen([*TORCHRUN, "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1",
                               "--rdzv_backend=c10d", f"--rdzv_endpoint=localhost:{port}", "--rdzv_id=two-nodes",
                               "-m", "ddpmkit", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_env()) for node in (0, 1)]
    outputs = [node.communicate(timeout=120)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    _assert_same_training(run, reference)


@pytest.fixture(scope="module")
def image_folder_config(tmp_path_factory) -> tuple[Path, Path]:
    """A labelled image folder read on the fly (data.in_memory=no), and its one-process run."""
    from PIL import Image

    from conftest import make_two_class_images

    root = tmp_path_factory.mktemp("folder")
    images, labels = make_two_class_images(48, 8, seed=5)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / "images" / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"class{label}" / f"{i:03d}.png")
    d = _config(root)
    d["data"] = {"dataset": "folder", "root": str(root / "images"), "image_size": 8, "channels": 1,
                 "in_memory": "no", "num_workers": 0, "hflip": True}
    d["train"].update(eval_images=8)
    reference = root / "one_process"
    train(config_from_dict(d), reference, progress=False)
    return _write(d, root / "folder.json"), reference


def test_the_slurm_script_parses_and_starts_torchrun_on_every_machine():
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm" / "train.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "srun" in text and "--rdzv_backend=c10d" in text and "-m ddpmkit train" in text


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# -- sampling and evaluation -------------------------------------------------------------------------------------

def test_distributed_sample_writes_the_same_bytes_as_one_process(reference_run, tmp_path):
    args = ["sample", "--checkpoint", str(reference_run / "final.pt"), "--class", "0,1", "--num-samples", "5",
            "--batch-size", "3", "--sampler", "ddim", "--steps", "3", "--guidance", "1", "--no-progress"]
    assert main([*args, "--output-dir", str(tmp_path / "one")]) == 0
    _ok(_torchrun([*args, "--output-dir", str(tmp_path / "two")]))
    one, two = sorted((tmp_path / "one" / "images").iterdir()), sorted((tmp_path / "two" / "images").iterdir())
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 10
    for a, b in zip(one, two):
        assert a.read_bytes() == b.read_bytes(), a.name
    npz_one, npz_two = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    for key in ("arr_0", "seeds", "labels"):
        assert np.array_equal(npz_one[key], npz_two[key]), key
    assert (tmp_path / "one" / "grid.png").read_bytes() == (tmp_path / "two" / "grid.png").read_bytes()


def test_distributed_evaluate_gives_the_same_metrics_as_one_process(reference_run, tiny_idx_root, tiny_judge,
                                                                    tmp_path):
    args = ["evaluate", "--checkpoint", str(reference_run / "final.pt"), "--num-samples", "20", "--batch-size", "3",
            "--sampler", "ddim", "--steps", "3", "--guidance", "1", "--data-root", str(tiny_idx_root),
            "--classifier", str(tiny_judge), "--no-cache", "--no-progress"]
    assert main([*args, "--output-dir", str(tmp_path / "one")]) == 0
    _ok(_torchrun([*args, "--output-dir", str(tmp_path / "two")]))
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["metrics"] == two["metrics"] and one["samples"] == two["samples"]


def test_classifier_judge_under_torchrun(reference_run, tiny_judge, tmp_path):
    args = ["classifier", "judge", "--checkpoint", str(reference_run / "final.pt"), "--classifier", str(tiny_judge),
            "--guidance", "0,2", "--per-class", "3", "--steps", "2", "--no-progress"]
    assert main([*args, "--output", str(tmp_path / "one.json")]) == 0
    _ok(_torchrun([*args, "--output", str(tmp_path / "two.json")]))
    one, two = (json.loads((tmp_path / f"{n}.json").read_text())["results"] for n in ("one", "two"))
    assert one == two


# -- stopping and faults -----------------------------------------------------------------------------------------

def _long_run(tiny_idx_root: Path, tmp_path: Path) -> tuple[list[str], Path]:
    """A run long enough to be caught mid-way, with a checkpoint every 2 steps."""
    d = _config(tiny_idx_root, steps=2000, checkpoint_every=2, eval_every=0, log_every=1)
    run = tmp_path / "run"
    return ["train", "--config", str(_write(d, tmp_path / "long.json")), "--run-dir", str(run), "--no-progress"], run


def _workers(launcher: subprocess.Popen, count: int = 2, timeout: float = 60) -> dict[int, int]:
    """{rank: pid} of the ddpmkit processes a torchrun started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
        for pid in children.read_text().split() if children.exists() else []:
            try:
                env = dict(item.split("=", 1) for item in
                           Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
            except OSError:
                continue
            if "RANK" in env:
                found[int(env["RANK"])] = int(pid)
        if len(found) == count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"torchrun did not start {count} workers")


def _wait_for_step(run: Path, step: int, launcher: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if launcher.poll() is not None:
            raise AssertionError(f"the run ended early: {launcher.communicate()[0][-3000:]}")
        if any(r.get("step", 0) >= step for r in read_records(run / "log.jsonl")):
            return
        time.sleep(0.1)
    raise AssertionError(f"no step {step} in {run / 'log.jsonl'} within {timeout} s")


def _start(args: list[str], *launch: str) -> subprocess.Popen:
    return subprocess.Popen([*TORCHRUN, "--standalone", *launch, "--nproc_per_node=2", "-m", "ddpmkit", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())


def test_a_stop_signal_to_one_rank_stops_all_at_one_step_with_one_checkpoint(tiny_idx_root, tmp_path):
    args, run = _long_run(tiny_idx_root, tmp_path)
    launcher = _start(args)
    ranks = _workers(launcher)
    _wait_for_step(run, 5, launcher)
    os.kill(ranks[1], signal.SIGTERM)  # as a scheduler that pre-empts one process would
    output = launcher.communicate(timeout=60)[0]
    assert launcher.returncode != 0
    latest = read_checkpoint(run / "latest.pt")["step"]
    assert output.count("interrupted: saved") == 1 and f"saved {run / 'latest.pt'} at step {latest};" in output
    assert max(r["step"] for r in read_records(run / "log.jsonl")) == latest  # nobody went on past the stop
    assert latest < 2000


def test_a_killed_worker_ends_the_job_naming_it_and_the_same_command_resumes(tiny_idx_root, tmp_path):
    args, run = _long_run(tiny_idx_root, tmp_path)
    launcher = _start(args)
    ranks = _workers(launcher)
    _wait_for_step(run, 4, launcher)
    os.kill(ranks[1], signal.SIGKILL)
    started = time.monotonic()
    output = launcher.communicate(timeout=90)[0]
    assert launcher.returncode != 0 and time.monotonic() - started < 60
    assert "rank      : 1 (local_rank: 1)" in output and "Signal 9 (SIGKILL)" in output
    saved = read_checkpoint(run / "latest.pt")["step"]
    again = _ok(_torchrun([*args, "--stop-at", str(saved + 2)]))
    assert f"resuming at step {saved}" in again.stdout
    assert read_checkpoint(run / "latest.pt")["step"] == saved + 2


def test_torchrun_max_restarts_recovers_a_crashed_worker(tiny_idx_root, tmp_path):
    d = _config(tiny_idx_root, steps=100, checkpoint_every=2, eval_every=0, log_every=1)
    run = tmp_path / "run"
    args = ["train", "--config", str(_write(d, tmp_path / "c.json")), "--run-dir", str(run), "--no-progress"]
    launcher = _start(args, "--max-restarts=1")
    ranks = _workers(launcher)
    _wait_for_step(run, 4, launcher)
    os.kill(ranks[1], signal.SIGKILL)
    output = launcher.communicate(timeout=120)[0]
    assert launcher.returncode == 0, output[-3000:]
    assert "resuming at step" in output
    assert read_checkpoint(run / "final.pt")["step"] == 100
