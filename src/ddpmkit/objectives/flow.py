"""Rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2023), as Stable Diffusion 3 trains it (Esser et
al. 2024): x_t = (1 - t) x_0 + t eps, the network predicts the velocity v = eps - x_0 (dx_t/dt), t drawn
logit-normal (SD3 §3.1, "lognorm(0, 1)"), and sampling integrates dx/dt = v from t = 1 (pure noise) to t = 0.

| symbol | here                                               |
|--------|----------------------------------------------------|
| x_0    | x0 (data)                                          |
| eps    | noise (standard normal)                            |
| t      | a float tensor of shape (B,) in [0, 1]             |
| v      | the network's output, ``network(x_t, 1000 t, y)``  |
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .edm import _column, at_least_float32

TIME_SCALE = 1000.0  # the network sees 1000 t: the range of DDPM's timesteps, as diffusers' flow-matching pipelines


@dataclass(frozen=True)
class RectifiedFlow:
    logit_mean: float = 0.0  # training: t = sigmoid(m + s z), z ~ N(0, 1) (SD3 §3.1, its m = 0, s = 1)
    logit_std: float = 1.0   # s
    shift: float = 1.0       # sampling: t -> shift t / (1 + (shift - 1) t) (SD3 eq. 23); > 1 spends more steps near noise

    def interpolate(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x_0 + t eps."""
        t = _column(t, x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = dx_t / dt = eps - x_0."""
        return noise - x0

    def velocity(self, network, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The network's velocity at (x, t); ``t`` of shape (B,)."""
        level = TIME_SCALE * t
        return at_least_float32(network(x, level) if y is None else network(x, level, y))

    def training_times(self, u: torch.Tensor) -> torch.Tensor:
        """t for uniform numbers ``u`` in (0, 1): sigmoid(m + s Phi^-1(u)), the logit-normal by its inverse CDF."""
        return torch.sigmoid(self.logit_mean + self.logit_std * math.sqrt(2) * torch.erfinv(2 * u - 1))

    def loss(self, network, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
             y: torch.Tensor | None = None) -> torch.Tensor:
        """The conditional flow-matching loss: mean of ||v(x_t, t) - (eps - x_0)||^2 over pixels and images."""
        output = self.velocity(network, self.interpolate(x0, noise, t), t, y)
        return F.mse_loss(output, at_least_float32(self.velocity_target(x0, noise)))

    def sampling_times(self, steps: int) -> torch.Tensor:
        """``steps`` + 1 times from 1 to 0, uniform before the shift (SD3 eq. 23): float64."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        return self.shifted(torch.linspace(1, 0, steps + 1, dtype=torch.float64))

    def shifted(self, t: torch.Tensor) -> torch.Tensor:
        """Times moved by the shift (SD3 eq. 23): shift t / (1 + (shift - 1) t)."""
        return self.shift * t / (1 + (self.shift - 1) * t)
