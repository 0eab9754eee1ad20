"""The training state on the device: no float64 there (Apple's MPS has none), and no host read in a step's
non-finite check, optimizer step and EMA update (each would stall the device's queue every step)."""
from __future__ import annotations

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from ddpmkit.build import noise_schedule, unet_spec
from ddpmkit.ema import EMA
from ddpmkit.losses import diffusion_loss
from ddpmkit.nonfinite import NonFiniteGuard, optimizer_step
from ddpmkit.unet import UNet


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


def _training_state(cfg, device: torch.device):
    """What the training loop builds on its device: model, EMA, schedule, optimizer, guard."""
    model = UNet(unet_spec(cfg, channels=1, num_classes=0)).to(device)
    ema = EMA(model, decay=0.999, warmup=True)
    schedule = noise_schedule(cfg.diffusion).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=device.type in ("cpu", "cuda"))
    return model, ema, schedule, optimizer, NonFiniteGuard(device, limit=3)


def _loss_and_grad_norm(model, schedule, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.randint(0, schedule.num_timesteps, (len(images),), device=images.device)
    loss = diffusion_loss(model, schedule, images, t, torch.randn_like(images))
    loss.backward()
    return loss.detach(), torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)


def _one_step(model, ema, schedule, optimizer, guard, images: torch.Tensor, watch: TorchDispatchMode) -> None:
    """One training step as the loop takes it; ``watch`` sees its non-finite check, optimizer step and EMA update."""
    loss, grad_norm = _loss_and_grad_norm(model, schedule, images)
    with watch:
        skip = guard.check(loss, grad_norm)
        optimizer_step(optimizer, torch.amp.GradScaler(images.device.type, enabled=False), skip)
        optimizer.zero_grad(set_to_none=True)
        ema.update(model, skip)


def test_the_training_state_holds_no_float64_on_a_device(tiny_config):
    # The meta device stands in for MPS: it has float64, so the mode refuses it, and every tensor is checked after.
    device = torch.device("meta")
    with NoFloat64OffTheHost():
        model, ema, schedule, optimizer, guard = _training_state(tiny_config, device)
        loss, grad_norm = _loss_and_grad_norm(model, schedule, torch.rand(2, 1, 8, 8, device=device))
        skip = guard.check(loss, grad_norm)
        optimizer.step()  # not fused off CPU and CUDA: optimizer_step reads the flag first, which meta cannot
        ema.update(model, skip)
    tensors = [*model.state_dict().values(), *ema.model.state_dict().values(), *schedule.buffers(),
               ema.num_updates, guard.counts]
    assert all(x.dtype != torch.float64 for x in tensors if x.device == device)


def test_the_ema_count_is_exact_beyond_float32():
    # float32 counts whole numbers exactly only up to 2**24 steps; a long run counts on.
    ema = EMA(torch.nn.Linear(1, 1), decay=0.9999)
    ema.load_state_dict({**ema.state_dict(), "num_updates": 2**24 + 1})
    ema.update(ema.model)
    assert ema.state_dict()["num_updates"] == 2**24 + 2


@pytest.mark.parametrize("finite", [True, False])
def test_a_step_reads_nothing_back_to_the_host(tiny_config, finite):
    # On the CPU a read of a tensor by the host (.item(), int(), bool()) dispatches to _local_scalar_dense; on a GPU
    # it is a synchronisation. A skipped step (a NaN loss) takes the same path.
    model, ema, schedule, optimizer, guard = _training_state(tiny_config, torch.device("cpu"))
    images = torch.rand(2, 1, 8, 8) if finite else torch.full((2, 1, 8, 8), float("nan"))
    log = OpLog()
    _one_step(model, ema, schedule, optimizer, guard, images, log)
    assert "aten._local_scalar_dense.default" not in log.ops
    assert ema.state_dict()["num_updates"] == int(finite) and guard.read_interval(1) == int(not finite)


@pytest.mark.gpu
def test_a_cuda_step_does_not_synchronise(tiny_config):
    device = torch.device("cuda")
    state = _training_state(tiny_config, device)
    images = torch.rand(2, 1, 8, 8, device=device)
    _one_step(*state, images, OpLog())  # the first step creates the optimizer's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _one_step(*state, images, OpLog())
    finally:
        torch.cuda.set_sync_debug_mode("default")
