"""Ancestral sampling (DDPM, Ho et al. 2020, Algorithm 2), over all T steps or a respaced subset (IDDPM §4)."""
from __future__ import annotations

import math

import torch

from ..schedule import NoiseSchedule, posterior
from .common import Denoiser, ImageNoise, StepCallback, predict_x0_eps, reverse_steps

VARIANCES = ("posterior", "beta")


@torch.no_grad()
def sample_ddpm(model: Denoiser, schedule: NoiseSchedule, x_T: torch.Tensor, *,
                steps: int | None = None,                          # None: all T steps; fewer: respaced (IDDPM §4)
                prediction: str = "eps",                           # what the network outputs: eps, x0 or v
                variance: str = "posterior",                       # sigma_t^2: posterior tilde-beta_t, or beta_t
                clip_range: tuple[float, float] | None = (-1, 1),  # clip predicted x_0 to the data range; None: off
                threshold: float | None = None,                    # dynamic thresholding quantile (e.g. 0.995)
                spacing: str = "trailing",                         # which timesteps fewer steps visit (SPACINGS)
                noise: ImageNoise | None = None,                   # per-image generators for the added noise
                on_step: StepCallback | None = None,               # called as on_step(t, x_t, predicted x_0)
                progress: bool = True) -> torch.Tensor:
    """Run the reverse process from x_T to x_0.

    Each step samples x_{t-1} ~ N(mu(x_t, x_0), sigma_t^2 I) with mu the posterior mean of DDPM eq. 7 at the
    predicted x_0 (``posterior`` in schedule.py). On a respaced subset tau, beta_t is replaced by
    1 - abar_tau_i / abar_tau_{i-1} (IDDPM eq. 19). No noise is added at the last step.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {VARIANCES}")
    noise = noise or ImageNoise()
    x = x_T
    for t, t_prev, abar, abar_prev in reverse_steps(schedule, steps, "ddpm", progress, spacing):
        x0, _ = predict_x0_eps(model, schedule, x, t, prediction, clip_range, threshold, on_step)
        q = posterior(abar, abar_prev)
        x = float(q.coef_x0) * x0 + float(q.coef_xt) * x  # DDPM eq. 7's mean at the predicted x_0
        if t_prev >= 0:
            sigma2 = float(q.variance if variance == "posterior" else q.beta)
            x = x + math.sqrt(sigma2) * noise.randn(x.shape, x.device)
    return x
