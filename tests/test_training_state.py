"""The training state on the device: no float64 there (Apple's MPS has none), and no host read in a step's
non-finite check, optimizer step and EMA update (each would stall the device's queue every step)."""
from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from ddpmkit.build import noise_schedule, unet_spec
from ddpmkit.ema import EMA
from ddpmkit.global_batch import BatchSplit
from ddpmkit.losses import diffusion_loss
from ddpmkit.nonfinite import NonFiniteGuard
from ddpmkit.schedule import NoiseSchedule
from ddpmkit.train_report import TrainingReport
from ddpmkit.train_state import TrainingState
from ddpmkit.train_step import OptimizerStep


class NoFloat64OffTheHost(TorchDispatchMode):
    """Fails every operation that takes or makes a float64 tensor anywhere but on the CPU, as MPS fails."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in pytree.tree_leaves((args, kwargs, out)):
            if isinstance(x, torch.Tensor) and x.dtype == torch.float64 and x.device.type != "cpu":
                raise AssertionError(f"{func} has a float64 tensor on {x.device}")
        return out


class OpLog(TorchDispatchMode):
    """The aten operations run inside it, by name."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _training_state(cfg, device: torch.device) -> tuple[TrainingState, NoiseSchedule]:
    """What the training loop builds on its device: TrainingState.new and the schedule."""
    state = TrainingState.new(cfg, unet_spec(cfg, channels=1, num_classes=0), device, holds_out=False,
                              class_names=[])
    return state, noise_schedule(cfg.diffusion).to(device)


def _optimizer_step(cfg, device: torch.device) -> tuple[TrainingState, OptimizerStep]:
    """The training state and the loop's step (OptimizerStep) on it."""
    state, schedule = _training_state(cfg, device)
    split = BatchSplit(cfg.train.batch_size, world_size=1, grad_accum=cfg.train.grad_accum)
    return state, OptimizerStep(cfg, state, state.model, state.model, schedule, split, device)


def _one_step(cfg, state, step, images: torch.Tensor, watch: TorchDispatchMode, run_dir) -> None:
    """One step of the loop as train() takes it, a step that writes no log line; ``watch`` sees all of it: the
    forward and backward passes, the non-finite check, the optimizer, the EMA and the report's bookkeeping."""
    report = TrainingReport(cfg, run_dir, state.step, images.device, main=True, progress=False)
    batches = itertools.repeat((images, None))
    with watch:
        loss, grad_norm, skip, lr = step(batches)
        report.step_done(state.step, loss, skip, lr, grad_norm, step.guard, last=False)
    report.close(finished=False)


def test_the_training_state_holds_no_float64_on_a_device(tiny_config):
    # The meta device stands in for MPS: it has float64, so the mode refuses it, and every tensor is checked after.
    device = torch.device("meta")
    with NoFloat64OffTheHost():
        state, schedule = _training_state(tiny_config, device)
        guard = NonFiniteGuard(device, limit=3)
        images = torch.rand(2, 1, 8, 8, device=device) * 2 - 1
        t = torch.randint(0, schedule.num_timesteps, (2,), device=device)
        diffusion_loss(state.model, schedule, images, t, torch.randn_like(images)).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), 1.0)
        skip = guard.check(torch.zeros((), device=device), grad_norm)
        state.optimizer.step()  # not fused off CPU and CUDA: optimizer_step reads the flag first, which meta cannot
        state.ema.update(state.model, skip)
    tensors = [*state.model.state_dict().values(), *state.ema.model.state_dict().values(), *schedule.buffers(),
               state.ema.num_updates, guard.counts]
    assert all(x.dtype != torch.float64 for x in tensors if x.device == device)


def test_the_ema_count_is_exact_beyond_float32():
    # float32 counts whole numbers exactly only up to 2**24 steps; a long run counts on.
    ema = EMA(torch.nn.Linear(1, 1), decay=0.9999)
    ema.load_state_dict({**ema.state_dict(), "num_updates": 2**24 + 1})
    ema.update(ema.model)
    assert ema.state_dict()["num_updates"] == 2**24 + 2


@pytest.mark.parametrize("finite", [True, False])
def test_a_step_reads_nothing_back_to_the_host(tiny_config, tmp_path, finite):
    # On the CPU a read of a tensor by the host (.item(), int(), bool()) dispatches to _local_scalar_dense; on a GPU
    # it is a synchronisation. A skipped step (NaN images, so a NaN loss) takes the same path.
    cfg = replace(tiny_config, train=replace(tiny_config.train, log_every=1000))
    state, step = _optimizer_step(cfg, torch.device("cpu"))
    images = torch.rand(8, 1, 8, 8) if finite else torch.full((8, 1, 8, 8), float("nan"))
    log = OpLog()
    _one_step(cfg, state, step, images, log, tmp_path)
    assert "aten._local_scalar_dense.default" not in log.ops
    assert "aten.convolution_backward.default" in log.ops  # the whole step was watched, backward pass included
    assert state.ema.state_dict()["num_updates"] == int(finite) and step.guard.read_interval(1) == int(not finite)


@pytest.mark.gpu
def test_a_cuda_step_does_not_synchronise(tiny_config, tmp_path):
    device = torch.device("cuda")
    cfg = replace(tiny_config, train=replace(tiny_config.train, log_every=1000))
    state, step = _optimizer_step(cfg, device)
    images = torch.rand(8, 1, 8, 8, device=device)
    _one_step(cfg, state, step, images, OpLog(), tmp_path)  # the first step creates the optimizer's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _one_step(cfg, state, step, images, OpLog(), tmp_path)
    finally:
        torch.cuda.set_sync_debug_mode("default")
