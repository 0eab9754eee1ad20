"""What every sampler shares: which timesteps to visit, per-image noise, and turning a network output into x_0, eps."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import SPACINGS  # trailing (the default) starts at T - 1, where the model was trained on nearly pure
from ..schedule import NoiseSchedule  # noise; the others may start lower while x_T is pure noise (Lin et al. 2024)

# A denoiser as the samplers see it: (x_t, t) -> network output. Class labels and guidance are bound in by the caller.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Called once per step with (t, x_t, predicted x_0), e.g. to record a denoising strip or an animation.
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


KARRAS_RHO = 7.0  # EDM's rho (Karras et al. 2022, eq. 5)


def spaced_timesteps(num_timesteps: int, steps: int | None, spacing: str = "trailing",
                     alphas_cumprod: torch.Tensor | None = None) -> list[int]:
    """The ``steps`` timesteps a sampler visits, from noisiest to cleanest; ``steps=None`` (or T) visits all T.

    trailing  round(T - i T / S) - 1: starts at T - 1 (Lin et al. 2024, table 2; diffusers' "trailing")
    leading   i * (T // S): DDIM's linear sub-sequence (Song et al. 2020, appendix D.2; diffusers' "leading")
    linspace  round(linspace(0, T - 1, S)) (diffusers' DDIM "linspace")
    logsnr    uniform in log-SNR lambda = log(abar / (1 - abar)) between t = T - 1 and t = 0, rounded to the
              nearest timestep (DPM-Solver's "logSNR" steps, Lu et al. 2022, §3.3)
    karras    uniform in sigma^(1/rho), sigma = sqrt((1 - abar) / abar), rho = 7, between the same ends, rounded to
              the nearest timestep (Karras et al. 2022, eq. 5)
    logsnr and karras need ``alphas_cumprod``; where rounding would repeat a timestep, the later one moves down (or,
    at t = 0, the earlier ones up), so that S distinct timesteps are visited.
    """
    T = num_timesteps
    if steps is None or steps == T:
        return list(range(T - 1, -1, -1))
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and T={T}, got {steps}")
    if spacing == "trailing":
        return [int(v) - 1 for v in np.round(np.arange(T, 0, -T / steps))][:steps]
    if spacing == "leading":
        return [i * (T // steps) for i in range(steps)][::-1]
    if spacing == "linspace":
        return [int(v) for v in np.linspace(0, T - 1, steps).round()][::-1]
    if spacing not in ("logsnr", "karras"):
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if alphas_cumprod is None:
        raise ValueError(f"{spacing} spacing needs the schedule's alphas_cumprod")
    abar = alphas_cumprod.double().cpu().numpy()
    if spacing == "logsnr":
        level = np.log(abar / (1 - abar))  # increases as t falls
    else:
        level = -((1 - abar) / abar) ** (0.5 / KARRAS_RHO)  # -sigma^(1/rho), increases as t falls
    targets = np.linspace(level[T - 1], level[0], steps)
    chosen = [int(np.abs(level - target).argmin()) for target in targets]
    for i in range(1, steps):  # distinct: a repeat moves down, then what went below 0 moves up
        chosen[i] = min(chosen[i], chosen[i - 1] - 1)
    for i in range(steps - 1, -1, -1):
        chosen[i] = max(chosen[i], chosen[i + 1] + 1 if i + 1 < steps else 0)
    return chosen


class ImageNoise:
    """Gaussian noise drawn image by image from one generator per image.

    Seeding each image on its own makes a sample depend only on its seed, never on the batch it was drawn in
    (the habit of NVlabs/edm's ``--seeds``). With ``generators=None`` the global RNG is used.
    """

    def __init__(self, generators: Sequence[torch.Generator] | None = None):
        self.generators = list(generators) if generators is not None else None

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], device: torch.device | str = "cpu") -> "ImageNoise":
        return cls([torch.Generator(device=device).manual_seed(int(s)) for s in seeds])

    def randn(self, shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """A (B, ...) batch of standard normal noise; image i comes from generator i."""
        if self.generators is None:
            return torch.randn(tuple(shape), device=device)
        if len(self.generators) != shape[0]:
            raise ValueError(f"{len(self.generators)} generators for a batch of {shape[0]} images")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=g.device).to(device)
                          for g in self.generators])


def dynamic_threshold(x0: torch.Tensor, data_range: tuple[float, float], ratio: float) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al. 2022, §2.3): with x_0 mapped to [-1, 1] by the data range, s is the
    ``ratio`` quantile of |x_0| per image (at least 1); x_0 is clipped to [-s, s] and divided by s. Pixels pushed
    past the range by strong guidance come back into it without saturating, as static clipping does."""
    low, high = data_range
    centre, half = (high + low) / 2, (high - low) / 2
    unit = (x0 - centre) / half
    s = torch.quantile(unit.abs().reshape(unit.shape[0], -1).float(), ratio, dim=1).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (unit.ndim - 1))).to(unit.dtype)
    return torch.maximum(torch.minimum(unit, s), -s) / s * half + centre


def predict_x0_eps(model: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, t: int, prediction: str,
                   clip_range: tuple[float, float] | None, threshold: float | None = None,
                   on_step: StepCallback | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the network at timestep t and return (x_0, eps). x_0 is clipped to ``clip_range`` or, with
    ``threshold`` (a quantile such as 0.995), dynamically thresholded within it; eps is re-derived to match.
    ``on_step`` hears of every evaluation, as on_step(t, x_t, x_0)."""
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    output = model(x, t_batch).float()
    x0, eps = schedule.x0_and_eps(prediction, output, x, t_batch)
    if clip_range is not None:
        x0 = dynamic_threshold(x0, clip_range, threshold) if threshold else x0.clamp(*clip_range)
        eps = schedule.eps_from_x0(x, t_batch, x0)
    if on_step is not None:
        on_step(t, x, x0)
    return x0, eps


def log_snr_steps(schedule: NoiseSchedule, steps: int | None,
                  spacing: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """The timesteps a multistep solver visits and, at each, alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and
    the half log-SNR lambda_t = log(alpha_t / sigma_t), in float64 (DPM-Solver's notation, Lu et al. 2022, §2)."""
    timesteps = spaced_timesteps(schedule.num_timesteps, steps, spacing, schedule.alphas_cumprod_float64)
    abar = schedule.alphas_cumprod_float64
    alpha = [math.sqrt(float(abar[t])) for t in timesteps]
    sigma = [math.sqrt(1 - float(abar[t])) for t in timesteps]
    return timesteps, alpha, sigma, [math.log(a / s) for a, s in zip(alpha, sigma)]


def reverse_steps(schedule: NoiseSchedule, steps: int | None, desc: str, progress: bool,
                  spacing: str = "trailing") -> Iterator[tuple[int, int, float, float]]:
    """(t, t_prev, abar_t, abar_prev) for each step of a reverse process, with a progress bar.

    t_prev is -1 at the last step, where abar_prev = 1 (x_0 is noise-free); alphas are float64 scalars.
    """
    timesteps = spaced_timesteps(schedule.num_timesteps, steps, spacing, schedule.alphas_cumprod_float64)
    abar = schedule.alphas_cumprod_float64
    for i, t in enumerate(tqdm(timesteps, desc=desc, disable=not progress, leave=False)):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        yield t, t_prev, float(abar[t]), (float(abar[t_prev]) if t_prev >= 0 else 1.0)
