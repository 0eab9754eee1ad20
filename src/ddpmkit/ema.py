"""Exponential moving average of the weights, the copy used for sampling (DDPM §4: decay 0.9999)."""
from __future__ import annotations

import copy

import torch
from torch import nn


def decay_for_halflife(halflife_images: float, batch_size: int) -> float:
    """The per-step decay whose average halves an old weight's share every ``halflife_images`` training images
    (EDM's ``ema_halflife_kimg``, Karras et al. 2022, appendix F.1): decay ** (halflife_images / batch_size) = 1/2.
    An EMA length in images stays the same when the batch size changes; a per-step decay does not."""
    return 0.5 ** (batch_size / halflife_images)


class EMA:
    """Holds ``model``, a frozen copy of the network whose weights trail the trained ones.

    With ``warmup`` the decay at update n is min(decay, (1 + n) / (10 + n)), so the average is not dominated by
    the random initial weights in short runs. The update count lives on the network's device, so that an update
    skipped for a non-finite step (``skip`` = 1) leaves the average and its count as they were without the host
    having to look: an update reads nothing back to the host (no synchronisation) and makes no float64 tensor (MPS
    has none); the count is an int64, exact however long the run.
    """

    def __init__(self, network: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.model = copy.deepcopy(network).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.num_updates = torch.zeros((), dtype=torch.int64, device=next(network.parameters()).device)

    def current_weight(self) -> torch.Tensor:
        """1 - decay, the share of the current weights in the next update: a float32 on the device. Computed as
        such, 9 / (10 + n) with warm-up, since 1 - decay rounded to float32 would lose the digits that matter."""
        floor = torch.full((), 1 - self.decay, dtype=torch.float32, device=self.num_updates.device)
        if not self.warmup:
            return floor
        return torch.maximum(9 / (self.num_updates + 10).float(), floor)

    @torch.no_grad()
    def update(self, network: nn.Module, skip: torch.Tensor | None = None) -> None:
        weight = self.current_weight()
        if skip is not None:
            weight = weight * (1 - skip.float())
        ema_params = list(self.model.parameters())
        # ema += weight (p - ema) in three fused kernels and one model-sized temporary; the weight stays on the
        # device: _foreach_mul_ takes it as a tensor, where _foreach_lerp_ reads a 0-d tensor weight back to the host
        # as a Python number (and a list of them goes one kernel per tensor).
        steps = torch._foreach_sub([p.detach() for p in network.parameters()], ema_params)
        torch._foreach_mul_(steps, weight)
        torch._foreach_add_(ema_params, steps)
        for ema_buf, buf in zip(self.model.buffers(), network.buffers()):
            ema_buf.copy_(buf if skip is None else torch.where(skip.bool(), ema_buf, buf))
        self.num_updates += 1 if skip is None else 1 - skip.to(torch.int64)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": int(self.num_updates)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates.fill_(int(state["num_updates"]))
