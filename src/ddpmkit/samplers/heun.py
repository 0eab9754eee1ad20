"""Heun's second-order method on the probability-flow ODE, EDM's deterministic sampler (Karras et al. 2022,
Algorithm 1; with churn, the stochastic Algorithm 2), in the VP schedule's terms.

With sigma(t) = sqrt((1 - abar_t) / abar_t) and x^ = x_t / sqrt(abar_t) (EDM's scaling s(t) = sqrt(abar_t),
table 1), the ODE is dx^/dsigma = (x^ - D(x^; sigma)) / sigma (EDM eq. 4 with s = 1), where D is the network's
predicted x_0 at x_t = sqrt(abar_t) x^. Each step is an Euler step corrected by the slope at its end (two network
evaluations), except the last one, to sigma = 0, which is Euler: ``steps`` levels cost 2 steps - 1 evaluations.
The network is only evaluated at the timesteps it was trained on; churn's raised noise level is the nearest one.
"""
from __future__ import annotations

import math

import torch

from ..config import DEFAULT_STEPS
from ..schedule import NoiseSchedule
from .common import Denoiser, ImageNoise, StepCallback, predict_x0_eps, spaced_timesteps
from .continuous import integrate


@torch.no_grad()
def sample_heun(model: Denoiser, schedule: NoiseSchedule, x_T: torch.Tensor, *,
                steps: int | None = DEFAULT_STEPS["heun"],         # noise levels; 2 steps - 1 network evaluations
                prediction: str = "eps",                           # what the network outputs: eps, x0 or v
                clip_range: tuple[float, float] | None = (-1, 1),  # clip predicted x_0; None: off
                threshold: float | None = None,                    # dynamic thresholding quantile
                spacing: str = "trailing",                         # which timesteps are visited (SPACINGS)
                churn: float = 0.0,                                # EDM's S_churn: 0 = deterministic (Alg. 1)
                churn_range: tuple[float, float] = (0.0, math.inf),  # S_tmin, S_tmax: sigmas where churn acts
                churn_noise: float = 1.0,                          # S_noise
                noise: ImageNoise | None = None,                   # per-image generators for churn's noise
                on_step: StepCallback | None = None,               # called as on_step(t, x_t, predicted x_0)
                progress: bool = True) -> torch.Tensor:
    """Solve the probability-flow ODE from x_T (pure noise at the first timestep) to x_0."""
    timesteps = spaced_timesteps(schedule.num_timesteps, steps, spacing, schedule.alphas_cumprod_float64)
    abar = schedule.alphas_cumprod_float64
    all_sigmas = ((1 - abar) / abar).sqrt()

    def sigma_of(t: int) -> float:
        return float(all_sigmas[t])

    def denoise(x_hat: torch.Tensor, t: int) -> torch.Tensor:
        x_t = x_hat * math.sqrt(float(abar[t]))
        x0, _ = predict_x0_eps(model, schedule, x_t, t, prediction, clip_range, threshold, on_step)
        return x0

    t_of = {sigma_of(t): t for t in range(len(all_sigmas))}  # every level visited is a trained one

    def drift(x_hat: torch.Tensor, sigma: float) -> torch.Tensor:
        return (x_hat - denoise(x_hat, t_of[sigma])) / sigma  # EDM eq. 4 with s = 1

    def raise_level(x_hat: torch.Tensor, sigma: float) -> tuple[torch.Tensor, float]:
        """EDM Algorithm 2, lines 4-6, at the trained level nearest to sigma (1 + gamma)."""
        if not churn_range[0] <= sigma <= churn_range[1]:
            return x_hat, sigma
        raised = sigma_of(int((all_sigmas - sigma * (1 + gamma)).abs().argmin()))
        added = math.sqrt(max(raised**2 - sigma**2, 0.0)) * churn_noise * noise.randn(x_hat.shape, x_hat.device)
        return x_hat + added, raised

    noise = noise or ImageNoise()
    gamma = min(churn / len(timesteps), math.sqrt(2) - 1) if churn else 0.0
    levels = [sigma_of(t) for t in timesteps] + [0.0]
    return integrate(drift, x_T / math.sqrt(float(abar[timesteps[0]])), levels, heun=True,
                     churn=raise_level if gamma else None, desc="heun", progress=progress)
