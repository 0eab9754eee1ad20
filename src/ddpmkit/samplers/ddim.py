"""DDIM (Song et al. 2020): the generalised, non-Markovian reverse process; eta = 0 makes it deterministic."""
from __future__ import annotations

import math

import torch

from ..config import DEFAULT_STEPS
from ..schedule import NoiseSchedule, posterior
from .common import Denoiser, ImageNoise, StepCallback, predict_x0_eps, reverse_steps


@torch.no_grad()
def sample_ddim(model: Denoiser, schedule: NoiseSchedule, x_T: torch.Tensor, *,
                steps: int | None = DEFAULT_STEPS["ddim"],         # number of network evaluations; None: all T
                eta: float = 0.0,                                  # 0: deterministic DDIM, 1: DDPM-like noise
                prediction: str = "eps",                           # what the network outputs: eps, x0 or v
                clip_range: tuple[float, float] | None = (-1, 1),  # clip predicted x_0 to the data range; None: off
                threshold: float | None = None,                    # dynamic thresholding quantile (e.g. 0.995)
                spacing: str = "trailing",                         # which timesteps fewer steps visit (SPACINGS)
                noise: ImageNoise | None = None,                   # per-image generators for the added noise
                on_step: StepCallback | None = None,               # called as on_step(t, x_t, predicted x_0)
                progress: bool = True) -> torch.Tensor:
    """Run DDIM from x_T to x_0 over ``steps`` timesteps.

    DDIM eq. 12: x_{t-1} = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev - sigma_t^2) eps + sigma_t z, with
    DDIM eq. 16: sigma_t = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).
    When x_0 is clipped, eps is re-derived from the clipped x_0 so that both stay consistent.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    noise = noise or ImageNoise()
    x = x_T
    for t, t_prev, abar, abar_prev in reverse_steps(schedule, steps, "ddim", progress, spacing):
        x0, eps = predict_x0_eps(model, schedule, x, t, prediction, clip_range, threshold, on_step)
        sigma = eta * math.sqrt(float(posterior(abar, abar_prev).variance))  # eq. 16: eta sqrt(tilde-beta)
        x = math.sqrt(abar_prev) * x0 + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * eps
        if eta > 0:
            x = x + sigma * noise.randn(x.shape, x.device)
    return x


def sample_deterministic(model: Denoiser, schedule: NoiseSchedule, x_T: torch.Tensor, *,
                         steps: int | None = None, prediction: str = "eps",
                         clip_range: tuple[float, float] | None = (-1, 1), threshold: float | None = None,
                         spacing: str = "trailing", noise: ImageNoise | None = None,
                         on_step: StepCallback | None = None, progress: bool = True) -> torch.Tensor:
    """The deterministic sampler: DDIM with eta = 0, by default over all T steps (the probability-flow ODE's
    Euler discretisation in alpha-bar, DDIM §4.3). ``noise`` is accepted for a uniform signature and unused."""
    return sample_ddim(model, schedule, x_T, steps=steps, eta=0.0, prediction=prediction, clip_range=clip_range,
                       threshold=threshold, spacing=spacing, on_step=on_step, progress=progress)
