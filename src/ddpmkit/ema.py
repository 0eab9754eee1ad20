"""Exponential moving average of the weights, the copy used for sampling (DDPM §4: decay 0.9999)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Holds ``model``, a frozen copy of the network whose weights trail the trained ones.

    With ``warmup`` the decay at update n is min(decay, (1 + n) / (10 + n)), so the average is not dominated by
    the random initial weights in short runs.
    """

    def __init__(self, network: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.model = copy.deepcopy(network).eval().requires_grad_(False)
        self.decay, self.warmup, self.num_updates = decay, warmup, 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        decay = self.current_decay()
        ema_params = list(self.model.parameters())
        params = [p.detach() for p in network.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - decay)  # ema += (1 - decay) (p - ema), one fused kernel
        for ema_buf, buf in zip(self.model.buffers(), network.buffers()):
            ema_buf.copy_(buf)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
