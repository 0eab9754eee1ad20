"""A distilled student's sampler ("distilled"): DDIM's deterministic steps over the grid it was distilled on."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..samplers.common import StepCallback
from .paths import EDMPath, GaussianPath, ddim_step


def shown(path: GaussianPath, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x as pictures show it: an EDM x scaled into the data's range (as samplers/continuous.py's on_step does)."""
    return x / float((alpha**2 + sigma**2).sqrt()) if isinstance(path, EDMPath) else x


@torch.no_grad()
def sample_distilled(path: GaussianPath, network, noise_images: torch.Tensor, *, steps: int,
                     clip_range: tuple[float, float] | None = None, on_step: StepCallback | None = None,
                     progress: bool = True) -> torch.Tensor:
    """Images from a student of ``steps`` steps: start at u = 0 from ``noise_images`` (standard normal), then at each
    u = i / steps predict x_0 and take the DDIM step to u = (i + 1) / steps; the last lands on x_0. ``network(x,
    level)`` has the labels bound in; ``clip_range`` clips each predicted x_0; ``on_step(u, x, x_0)`` sees each
    evaluation."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    x = path.start(noise_images.float())
    for i in tqdm(range(steps), desc=f"distilled, {steps} steps", disable=not progress, leave=False):
        here = torch.full((len(x),), i / steps, dtype=torch.float64, device=x.device)
        there = torch.full_like(here, (i + 1) / steps)
        x0 = path.predict_x0(network, x, here).float()
        if clip_range is not None:
            x0 = x0.clamp(*clip_range)
        alpha, sigma = path.alpha_sigma(here)
        if on_step is not None:
            on_step(i / steps, shown(path, x, alpha[0], sigma[0]), x0)
        x = ddim_step(x, x0, (alpha, sigma), path.alpha_sigma(there))
    return x
