"""DDIM inversion (Song et al. 2020, §4.3 and §5.4): run the deterministic ODE forwards, from an image x_0 to the
latent x_T that deterministic DDIM decodes back into (nearly) that image."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from ..config import DEFAULT_STEPS
from ..schedule import NoiseSchedule
from .common import Denoiser, predict_x0_eps, spaced_timesteps


def _euler_step(x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, abar_to: float) -> torch.Tensor:
    """DDIM eq. 13/14 in its usual form: x at level abar_to from the predicted x_0 and eps."""
    return math.sqrt(abar_to) * x0 + math.sqrt(1 - abar_to) * eps


@torch.no_grad()
def invert_ddim(model: Denoiser, schedule: NoiseSchedule, x_0: torch.Tensor, *,
                steps: int | None = DEFAULT_STEPS["ddim"],  # evaluations (without refine); the decoder's too
                prediction: str = "eps",   # what the network outputs: eps, x0 or v
                refine: int = 0,           # fixed-point iterations per step that make the step the exact inverse
                spacing: str = "trailing",  # the decoder's timestep spacing
                progress: bool = True) -> torch.Tensor:
    """x_0 -> x_T along the timesteps that ``sample_ddim(steps=steps, eta=0, clip_range=None)`` visits backwards.

    Each step is the Euler step of DDIM eq. 14 taken towards more noise: with eps evaluated at the current point,
    x_next = sqrt(abar_next) x0_pred + sqrt(1 - abar_next) eps. The first step starts from the clean image
    (abar = 1), a level the network was never trained at, so it uses the first timestep's label.

    The decoder's step from x_next back uses eps(x_next) instead of eps(x), so the plain inversion is exact only in
    the limit of small steps. ``refine`` > 0 solves for x_next with that many fixed-point iterations of
    x_next = sqrt(abar_next / abar) (x - sqrt(1 - abar) e) + sqrt(1 - abar_next) e, e = eps(x_next, t_next):
    once converged, decoding returns x_0 up to float error (at 1 + refine network evaluations per step).
    Clipping of x_0 is never applied: it would make the map non-invertible.
    """
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}")
    timesteps = spaced_timesteps(schedule.num_timesteps, steps, spacing, schedule.alphas_cumprod_float64)[::-1]
    abar = schedule.alphas_cumprod_float64
    x = x_0
    for i, t_next in enumerate(tqdm(timesteps, desc="ddim inversion", disable=not progress, leave=False)):
        t_here = timesteps[i - 1] if i > 0 else t_next   # label for eps at the current point
        abar_here = float(abar[timesteps[i - 1]]) if i > 0 else 1.0
        abar_next = float(abar[t_next])
        x0, eps = predict_x0_eps(model, schedule, x, t_here, prediction, None)
        if i == 0:   # at abar = 1, x itself is x_0; the prediction only supplies eps
            x0 = x
        x_next = _euler_step(x, x0, eps, abar_next)
        for _ in range(refine):
            _, eps_next = predict_x0_eps(model, schedule, x_next, t_next, prediction, None)
            x0_here = (x - math.sqrt(1 - abar_here) * eps_next) / math.sqrt(abar_here)
            x_next = _euler_step(x, x0_here, eps_next, abar_next)
        x = x_next
    return x
