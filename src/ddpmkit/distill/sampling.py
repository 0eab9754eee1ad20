"""A distilled student's sampler ("distilled"): a progressive student's DDIM steps over the grid it was distilled
on, or a consistency student's multistep consistency sampling (Song et al. 2023, Algorithm 1)."""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..samplers.common import ImageNoise, StepCallback
from ..paths import EDMPath, GaussianPath, ddim_step, on_path


def shown(path: GaussianPath, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x as pictures show it: an EDM x scaled into the data's range (as samplers/continuous.py's on_step does)."""
    return x / float((alpha**2 + sigma**2).sqrt()) if isinstance(path, EDMPath) else x


def _fraction(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.full((len(like),), value, dtype=torch.float64, device=like.device)


@torch.no_grad()
def sample_distilled(path: GaussianPath, network, noise_images: torch.Tensor, *, steps: int,
                     clip_range: tuple[float, float] | None = None, on_step: StepCallback | None = None,
                     progress: bool = True) -> torch.Tensor:
    """Images from a progressive student of ``steps`` steps: start at u = 0 from ``noise_images`` (standard normal),
    then at each u = i / steps predict x_0 and take the DDIM step to u = (i + 1) / steps; the last lands on x_0.
    ``network(x, level)`` has the labels bound in; ``clip_range`` clips each predicted x_0; ``on_step(u, x, x_0)``
    sees each evaluation."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    x = path.start(noise_images.float())
    for i in tqdm(range(steps), desc=f"distilled, {steps} steps", disable=not progress, leave=False):
        here, there = _fraction(i / steps, x), _fraction((i + 1) / steps, x)
        x0 = path.predict_x0(network, x, here).float()
        if clip_range is not None:
            x0 = x0.clamp(*clip_range)
        alpha, sigma = path.alpha_sigma(here)
        if on_step is not None:
            on_step(i / steps, shown(path, x, alpha[0], sigma[0]), x0)
        x = ddim_step(x, x0, (alpha, sigma), path.alpha_sigma(there))
    return x


@torch.no_grad()
def sample_consistency(path: GaussianPath, network, noise_images: torch.Tensor, *, steps: int,
                       noise: ImageNoise | None = None, clip_range: tuple[float, float] | None = None,
                       on_step: StepCallback | None = None, progress: bool = True) -> torch.Tensor:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1) in ``steps`` evaluations: x_0 = f(z, 0) from
    ``noise_images``; then at u = i / steps, i = 1 .. steps - 1, noise that x_0 afresh to z = alpha_u x_0 + sigma_u
    eps (eps from ``noise``: per-image generators, or the global RNG) and take x_0 = f(z, u). One step is the
    student's single-evaluation image; each further step trades a little of the first step's error for new noise."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    noise = noise or ImageNoise()
    x = path.start(noise_images.float())
    x0 = x
    for i in tqdm(range(steps), desc=f"consistency, {steps} steps", disable=not progress, leave=False):
        here = _fraction(i / steps, x)
        alpha, sigma = path.alpha_sigma(here)
        if i:
            x = on_path(x0, noise.randn(x0.shape, x0.device), (alpha, sigma))
        x0 = path.predict_x0(network, x, here).float()
        if clip_range is not None:
            x0 = x0.clamp(*clip_range)
        if on_step is not None:
            on_step(i / steps, shown(path, x, alpha[0], sigma[0]), x0)
    return x0
