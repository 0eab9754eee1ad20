"""The CUDA paths against their CPU twins (issue #28): training steps in fp32 (TF32 off and on), bf16 and fp16 with
the gradient scaler; the network compiled; every sampler eager and replayed as CUDA graphs, with guidance, against the
CPU's samples for the same seeds; evaluation and the pictures; a checkpoint written on the GPU read by a process that
sees no GPU, and back; a step's EMA and non-finite guard without a host synchronisation; the dataset on the device;
a torchrun process group (NCCL).

Every test here is marked ``gpu``: skipped without CUDA, run by ``pytest -m gpu`` (scripts/gpu_check.sh). With
DDPMKIT_TEST_DEVICE=cpu the same tests run on the CPU instead, unmarked: the dry run of that script, which proves
the tests' own logic where no GPU is. The CUDA-only parts then fall back to stand-ins, each named where it happens:
inductor and CUDA graphs to torch.compile's eager backend, the sync debug mode to the record of host reads.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_two_class_images, tiny_config_dict, write_idx
from ddpmkit.build import noise_schedule, set_tf32, unet_spec
from ddpmkit.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from ddpmkit.config import DEFAULT_SAMPLER, SAMPLER_NAMES, config_from_dict
from ddpmkit.data import BatchOrder, batch_stream, load_images
from ddpmkit.evaluate import evaluate
from ddpmkit.global_batch import BatchSplit
from ddpmkit.pictures import denoising_strip, interpolate_classes, interpolate_noise
from ddpmkit.run_log import read_records
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.train import heldout_loss, train
from ddpmkit.train_report import TrainingReport
from ddpmkit.unet import UNet
from test_training_state import OpLog, _optimizer_step

TEST_DEVICE = os.environ.get("DDPMKIT_TEST_DEVICE", "cuda")
if TEST_DEVICE not in ("cuda", "cpu"):
    raise ValueError(f"DDPMKIT_TEST_DEVICE must be cuda or cpu, got {TEST_DEVICE!r}")
ON_GPU = TEST_DEVICE == "cuda"
pytestmark = [pytest.mark.gpu] if ON_GPU else []

# Samples of the same model and seeds, IEEE fp32 on both sides, differ only by the order of float sums (cuDNN's
# convolution algorithms, inductor's fused reductions): far below one uint8 level (1/255 = 0.0039) of an image in
# [0, 1]. TF32 would round products to 10 mantissa bits, hence train.tf32=false in the models compared here.
EAGER_ATOL = 1e-3
COMPILED_ATOL = 2e-3


@pytest.fixture(scope="module")
def device() -> torch.device:
    return torch.device(TEST_DEVICE)


@contextlib.contextmanager
def stand_in_compile(device: torch.device):
    """On the CPU twin, torch.compile with its eager backend: the test's own logic (which mode reaches
    torch.compile, CompiledDenoiser's step marking and copies) in seconds instead of inductor's minutes on 2 cores;
    inductor on the CPU has its own test (tests/test_speed_modes.py). On a GPU, the real thing."""
    if device.type == "cuda":
        yield []
        return
    real_compile, modes = torch.compile, []

    def eager_backend(model, mode=None, **kwargs):
        modes.append(mode)
        return real_compile(model, backend="eager", **{k: v for k, v in kwargs.items() if k != "options"})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", eager_backend)
        yield modes


@contextlib.contextmanager
def no_host_sync(device: torch.device):
    """Fail on any operation that makes the host wait for the device: CUDA's sync debug mode on a GPU. On the CPU
    there is nothing to wait for; the caller checks the record of host reads (OpLog) instead, which a synchronising
    read (.item(), bool(), int()) shows on both devices as aten._local_scalar_dense."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _tiny_dict(root: Path, device: torch.device, **train_changes) -> dict:
    """The tiny config of conftest.py on ``device``, with IEEE fp32 (train.tf32 off) unless asked otherwise."""
    d = tiny_config_dict(root)
    d["train"].update({"device": str(device), "tf32": False, **train_changes})
    return d


@pytest.fixture(scope="module")
def exact_checkpoint(tiny_conditional_checkpoint) -> dict:
    """The tiny class-conditional model with train.tf32 off (DiffusionSampler applies the checkpoint's switch)."""
    state = load_checkpoint(tiny_conditional_checkpoint)
    state["config"]["train"]["tf32"] = False
    return state


@pytest.fixture(scope="module")
def exact_checkpoint_file(exact_checkpoint, tmp_path_factory) -> Path:
    return save_checkpoint(exact_checkpoint, tmp_path_factory.mktemp("exact") / "model.pt")


# -- training -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_class_root(tmp_path_factory) -> Path:
    """512 training and 256 test 8x8 images of two classes: enough to see a model learn in 100 steps."""
    root = tmp_path_factory.mktemp("two_class")
    for split, n, seed in (("train", 512, 0), ("t10k", 256, 1)):
        images, labels = make_two_class_images(n, 8, seed)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


def _trained_loss(root: Path, device: torch.device, run_dir: Path, precision: str, tf32: bool) -> float:
    """Train the tiny model 100 steps on ``device`` in ``precision``; its EMA model's held-out loss, scored on the
    CPU in fp32 on fixed images, timesteps and noise (tests/test_speed_modes.py's recipe). Measured on the CPU:
    0.1249 in fp32, 0.1252 in bf16, 0.1249 in fp16, about 1.0 untrained; a second seed moves it by 0.007."""
    d = _tiny_dict(root, device, steps=100, batch_size=32, lr=3e-3, warmup_steps=10, eval_every=0, log_every=10,
                   checkpoint_every=1000, ema_decay=0.95, precision=precision, tf32=tf32)
    d["diffusion"]["num_timesteps"] = 100
    cfg = config_from_dict(d)
    final = train(cfg, run_dir, progress=False)
    if device.type == "cuda":  # train() set the process-wide switch as asked
        assert torch.backends.cuda.matmul.fp32_precision == ("tf32" if tf32 else "ieee")
    if precision == "fp16":  # the gradient scaler ran and its scale went into the checkpoint
        scaler = read_checkpoint(final)["scaler"]
        assert scaler is not None and 0 < scaler["scale"] <= 2.0**16, scaler
    model = DiffusionSampler(final, device="cpu", precision="fp32").model
    test = load_images(cfg.data, "test")
    scoring = replace(cfg, train=replace(cfg.train, precision="fp32", device="cpu"))
    return heldout_loss(model, noise_schedule(cfg.diffusion), test.images, test.labels, scoring, torch.device("cpu"))


@pytest.fixture(scope="module")
def fp32_loss(two_class_root, device, tmp_path_factory) -> float:
    return _trained_loss(two_class_root, device, tmp_path_factory.mktemp("fp32"), "fp32", tf32=False)


@pytest.mark.parametrize("precision, tf32", [("fp32", True), ("bf16", True), ("fp16", False)],
                         ids=["tf32", "bf16", "fp16-scaler"])
def test_training_in_each_precision_reaches_the_fp32_loss(two_class_root, device, fp32_loss, precision, tf32,
                                                          tmp_path):
    assert fp32_loss < 0.2, fp32_loss  # the IEEE fp32 reference trained
    loss = _trained_loss(two_class_root, device, tmp_path / precision, precision, tf32)
    assert loss == pytest.approx(fp32_loss, rel=0.1), (precision, loss, fp32_loss)


def test_the_training_images_live_on_the_device(tiny_idx_root, device):
    # data.in_memory: the whole set is one tensor on the device, indexed there; no DataLoader, no copies per step.
    cfg = config_from_dict(_tiny_dict(tiny_idx_root, device))
    cfg.data.in_memory = "yes"
    data = load_images(cfg.data, "train")
    stream = batch_stream(data, BatchOrder(len(data), 8, 0), BatchSplit(8, 1, 1), 0, 0, 2, device, num_workers=0)
    images, labels = next(stream)
    assert images.device.type == device.type and images.shape == (8, 1, 8, 8)


def test_the_compiled_network_computes_what_the_eager_one_does(tiny_idx_root, device):
    # Forward and gradients of the compiled U-Net (inductor's fused kernels) against the eager one, same inputs.
    cfg = config_from_dict(_tiny_dict(tiny_idx_root, device))
    set_tf32(device, False)
    model = UNet(unet_spec(cfg, 1, 0)).to(device)
    x = torch.randn(8, 1, 8, 8, device=device)
    t = torch.randint(0, 10, (8,), device=device)
    eager_out = model(x, t)
    eager_out.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    with stand_in_compile(device):
        compiled = torch.compile(model)
    out = compiled(x, t)
    out.square().mean().backward()
    assert torch.allclose(out, eager_out, atol=1e-4), (out - eager_out).abs().max()
    for p, g in zip(model.parameters(), eager_grads):
        assert torch.allclose(p.grad, g, atol=1e-4, rtol=1e-3), (p.grad - g).abs().max()


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_records(run_dir / "log.jsonl") if "loss" in r]


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_training_follows_the_eager_run(tiny_idx_root, device, mode, tmp_path):
    # The same data, timesteps and noise, so the same losses step by step up to the order of float sums.
    # reduce-overhead replays the forward and backward passes as CUDA graphs, whose outputs the next replay
    # overwrites: the loop must not keep one across steps.
    d = _tiny_dict(tiny_idx_root, device, steps=6, eval_every=0, log_every=1)
    train(config_from_dict(d), tmp_path / "eager", progress=False)
    with stand_in_compile(device) as modes:
        d["train"].update(compile=True, compile_mode=mode)
        final = train(config_from_dict(d), tmp_path / "compiled", progress=False)
    assert modes in ([], [mode])  # [] on a GPU, where the real torch.compile ran
    state = load_checkpoint(final)
    assert not any(k.startswith("_orig_mod") for k in state["model"])  # the plain model's keys
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(compiled) == len(eager) == 6
    assert np.allclose(compiled, eager, rtol=1e-3, atol=1e-5), (compiled, eager)


# -- a step without host synchronisation --------------------------------------------------------------------------

@pytest.mark.parametrize("finite", [True, False], ids=["finite", "nan"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_a_step_never_waits_for_the_device(tiny_config, device, precision, finite, tmp_path):
    # The loss, non-finite check, (scaled) optimizer step and EMA update stay on the device: a NaN step (NaN images)
    # is skipped by the flag, not by a read. The first step, outside the check, creates the optimizer's state.
    cfg = replace(tiny_config, train=replace(tiny_config.train, log_every=1000, precision=precision,
                                             device=str(device)))
    state, step = _optimizer_step(cfg, device)
    good = torch.rand(8, 1, 8, 8, device=device)
    report = TrainingReport(cfg, tmp_path, state.step, device, main=True, progress=False)

    def one_step(images: torch.Tensor) -> None:  # as train() takes it, with a step that writes no log line
        loss, grad_norm, skip, lr = step(itertools.repeat((images, None)))
        report.step_done(state.step, loss, skip, lr, grad_norm, step.guard, last=False)

    one_step(good)
    log = OpLog()
    with no_host_sync(device), log:
        one_step(good if finite else torch.full_like(good, float("nan")))
    report.close(finished=False)
    assert "aten._local_scalar_dense.default" not in log.ops
    assert "aten.convolution_backward.default" in log.ops  # the whole step was watched
    skipped = step.guard.read_interval(2)
    assert state.ema.state_dict()["num_updates"] == 2 - skipped
    # fp16's scaler may skip a first step whose scaled gradients overflow; nothing else skips a finite step.
    assert skipped >= (0 if finite else 1) and (precision == "fp16" or skipped == (0 if finite else 1)), skipped


# -- sampling -----------------------------------------------------------------------------------------------------

SAMPLE_OPTIONS = {"labels": [0, 1, 1, 0], "guidance": 1.5, "progress": False}  # guidance: 8 images per forward


@pytest.fixture(scope="module")
def cpu_samples(exact_checkpoint) -> dict[str, torch.Tensor]:
    """Every sampler's images on the CPU in fp32, seeds 0-3, at its default steps (at most the tiny model's T=10)."""
    sampler = DiffusionSampler(exact_checkpoint, device="cpu", precision="fp32")
    return {name: sampler.sample(4, sampler=name, **SAMPLE_OPTIONS) for name in SAMPLER_NAMES}


@pytest.fixture(scope="module")
def graphed_sampler(exact_checkpoint, device) -> DiffusionSampler:
    """The model compiled once for sampling, as CUDA graphs (mode reduce-overhead) on a GPU; every sampler then
    replays the same graph (one batch shape)."""
    with stand_in_compile(device):
        return DiffusionSampler(exact_checkpoint, device=str(device), precision="fp32", compile="reduce-overhead")


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_on_the_device_gives_the_cpu_samples(exact_checkpoint, device, cpu_samples, name):
    sampler = DiffusionSampler(exact_checkpoint, device=str(device), precision="fp32")
    out = sampler.sample(4, sampler=name, **SAMPLE_OPTIONS)
    assert torch.allclose(out, cpu_samples[name], atol=EAGER_ATOL, rtol=0), (out - cpu_samples[name]).abs().max()


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_every_sampler_through_cuda_graphs_gives_the_cpu_samples(graphed_sampler, cpu_samples, name):
    assert graphed_sampler.network.mode == "reduce-overhead"
    out = graphed_sampler.sample(4, sampler=name, **SAMPLE_OPTIONS)
    assert torch.allclose(out, cpu_samples[name], atol=COMPILED_ATOL, rtol=0), (out - cpu_samples[name]).abs().max()


def test_bf16_sampling_stays_near_the_fp32_samples(exact_checkpoint, device, cpu_samples):
    # bf16 keeps 8 mantissa bits in the network; the sampler's own arithmetic stays fp32 (test_speed_modes.py).
    # Measured on the CPU (this barely trained model, 10 steps): mean difference 4e-5, largest 5e-4. The bounds
    # only catch a broken path (NaN, a wrong dtype or layout); the samples' quality in bf16 is the fashion stage's.
    out = DiffusionSampler(exact_checkpoint, device=str(device), precision="bf16").sample(
        4, sampler=DEFAULT_SAMPLER, **SAMPLE_OPTIONS)
    difference = (out - cpu_samples[DEFAULT_SAMPLER]).abs()
    assert difference.mean() < 0.01 and difference.max() < 0.1, (difference.mean(), difference.max())


# -- evaluation and pictures --------------------------------------------------------------------------------------

def test_evaluation_on_the_device_gives_the_cpu_numbers(exact_checkpoint_file, tiny_idx_root, tiny_judge, device,
                                                        tmp_path):
    common = {"num_samples": 20, "sampler": "ddim", "steps": 3, "guidance": 1.0, "data_root": str(tiny_idx_root),
              "classifier": tiny_judge, "cache_dir": None, "precision": "fp32", "progress": False}
    reports = {where: evaluate(exact_checkpoint_file, device=where, save_samples=tmp_path / f"{where}.npz", **common)
               for where in ("cpu", str(device))}
    on_cpu, on_device = reports["cpu"], reports[str(device)]
    assert on_device["samples"]["device"].startswith(device.type)
    a = np.load(tmp_path / "cpu.npz")["arr_0"].astype(int)
    b = np.load(tmp_path / f"{device}.npz")["arr_0"].astype(int)
    assert np.abs(a - b).max() <= 1  # at most a rounding step apart
    for name in ("fd_mnist_classifier", "classifier_is", "accuracy", "precision", "recall"):
        assert on_device["metrics"][name] == pytest.approx(on_cpu["metrics"][name], rel=0.02, abs=0.05), name


def test_pictures_on_the_device_are_the_cpu_pictures(exact_checkpoint, device):
    samplers = {where: DiffusionSampler(exact_checkpoint, device=where, precision="fp32")
                for where in ("cpu", str(device))}
    pictures = {}
    for where, s in samplers.items():
        pictures[where] = [
            interpolate_noise(s, 0, 1, points=4, cls=1, guidance=1.0, steps=3, progress=False),
            interpolate_classes(s, 0, 1, points=4, steps=3, progress=False),
            torch.from_numpy(np.array(denoising_strip(s, frames=4, cls=0, seed=2, deterministic_steps=3,
                                                       progress=False))).float() / 255,
        ]
    for cpu, on_device in zip(pictures["cpu"], pictures[str(device)]):
        assert cpu.shape == on_device.shape and (cpu - on_device).abs().max() <= 1 / 255 + 1e-6


# -- checkpoints between devices ----------------------------------------------------------------------------------

READ_WITHOUT_A_GPU = """
import sys, numpy as np, torch
from ddpmkit.config import config_from_dict
from ddpmkit.checkpoint import read_checkpoint
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.train import train
assert not torch.cuda.is_available()
run = sys.argv[1]
state = read_checkpoint(run + "/latest.pt")  # verifies the digest the GPU process wrote
images = DiffusionSampler(run + "/latest.pt", device="cpu", precision="fp32").sample(
    4, sampler="ddim", steps=3, labels=[0, 1, 0, 1], guidance=1.0, progress=False)
np.save(run + "/cpu_samples.npy", images.numpy())
config = config_from_dict(state["config"])
config.train.device = "cpu"
train(config, run, stop_at=4, progress=False)
print("read, sampled and resumed on the CPU at step", read_checkpoint(run + "/latest.pt")["step"])
"""


def test_a_checkpoint_moves_from_the_device_to_a_machine_without_a_gpu_and_back(tiny_idx_root, device, tmp_path):
    d = _tiny_dict(tiny_idx_root, device, eval_every=0)
    d["model"]["class_conditional"] = True
    run = tmp_path / "run"
    train(config_from_dict(d), run, stop_at=2, progress=False)
    on_device = DiffusionSampler(run / "latest.pt", device=str(device), precision="fp32").sample(
        4, sampler="ddim", steps=3, labels=[0, 1, 0, 1], guidance=1.0, progress=False)
    # A process that sees no GPU: reads the file with its digest, samples the same images and trains on to step 4.
    result = subprocess.run([sys.executable, "-c", READ_WITHOUT_A_GPU, str(run)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "resumed on the CPU at step 4" in result.stdout
    on_cpu = torch.from_numpy(np.load(run / "cpu_samples.npy"))
    assert torch.allclose(on_device, on_cpu, atol=EAGER_ATOL), (on_device - on_cpu).abs().max()
    train(config_from_dict(d), run, stop_at=6, progress=False)  # and back on the device
    assert read_checkpoint(run / "latest.pt")["step"] == 6


def test_torchrun_trains_on_the_device(tiny_idx_root, device, tmp_path):
    # One process under torchrun: the process group (NCCL on a GPU, gloo on the CPU) and DDP around the network.
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(_tiny_dict(tiny_idx_root, device, eval_every=0)))
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                             "-m", "ddpmkit", "train", "--config", str(config), "--run-dir", str(run),
                             "--no-progress"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "NCCL_DEBUG": "INFO", "PYTHONUNBUFFERED": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert read_checkpoint(run / "final.pt")["step"] == 6
    if device.type == "cuda":
        assert "NCCL INFO" in output, output[-2000:]
