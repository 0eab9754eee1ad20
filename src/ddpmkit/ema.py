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
    having to look.
    """

    def __init__(self, network: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.model = copy.deepcopy(network).eval().requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.num_updates = torch.zeros((), dtype=torch.float64, device=next(network.parameters()).device)

    def current_decay(self) -> torch.Tensor:
        if not self.warmup:
            return torch.full_like(self.num_updates, self.decay)
        return ((1 + self.num_updates) / (10 + self.num_updates)).clamp(max=self.decay)

    @torch.no_grad()
    def update(self, network: nn.Module, skip: torch.Tensor | None = None) -> None:
        keep = 1.0 if skip is None else 1 - skip.to(self.num_updates.dtype)
        weight = ((1 - self.current_decay()) * keep).float()
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in network.parameters()]
        torch._foreach_lerp_(ema_params, params, weight)  # ema += (1 - decay) (p - ema), one fused kernel
        for ema_buf, buf in zip(self.model.buffers(), network.buffers()):
            ema_buf.copy_(buf if skip is None else torch.where(skip.bool(), ema_buf, buf))
        self.num_updates += keep

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": int(self.num_updates)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates.fill_(int(state["num_updates"]))
