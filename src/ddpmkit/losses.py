"""The training objective: one function (DDPM Algorithm 1, with the prediction target and distance configurable)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .schedule import NoiseSchedule


def diffusion_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor,
                   y: torch.Tensor | None = None, *, prediction: str = "eps", loss: str = "mse") -> torch.Tensor:
    """Mean loss between the network's output at x_t = q_sample(x0, t, noise) and its target.

    With prediction="eps" and loss="mse" this is DDPM's L_simple (eq. 14). "bce" treats the output as the
    probability of each pixel of x_0 in [0, 1] (the network ends in a sigmoid) and is computed in float32.
    """
    xt = schedule.q_sample(x0, t, noise)
    output = model(xt, t, y) if y is not None else model(xt, t)
    target = schedule.training_target(prediction, x0, t, noise)
    if loss == "mse":
        return F.mse_loss(output.float(), target)
    if loss == "l1":
        return F.l1_loss(output.float(), target)
    if loss == "bce":
        with torch.autocast(device_type=output.device.type, enabled=False):
            return F.binary_cross_entropy(output.float().clamp(1e-6, 1 - 1e-6), target)
    raise ValueError(f"unknown loss {loss!r}; choose mse, l1 or bce")
