"""What every sampler shares: which timesteps to visit, per-image noise, and turning a network output into x_0, eps."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from ..schedule import NoiseSchedule

# A denoiser as the samplers see it: (x_t, t) -> network output. Class labels and guidance are bound in by the caller.
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Called once per step with (t, x_t, predicted x_0), e.g. to record a denoising strip or an animation.
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def spaced_timesteps(num_timesteps: int, steps: int | None) -> list[int]:
    """The timesteps a sampler visits, from noisiest to cleanest.

    ``steps=None`` (or T) visits all T. When ``steps`` divides T, every (T // steps)-th timestep counting from 0:
    the "linear" sub-sequence of DDIM (Song et al. 2020, appendix D.2), also diffusers' "leading" spacing. Otherwise
    ``steps`` timesteps evenly spread over 0..T-1 and rounded (IDDPM's ``space_timesteps``), so that a count such
    as 600 of 1000 still starts near t = T-1 rather than collapsing to stride 1 from t = 599.
    """
    if steps is None or steps == num_timesteps:
        return list(range(num_timesteps - 1, -1, -1))
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and T={num_timesteps}, got {steps}")
    if num_timesteps % steps == 0:
        stride = num_timesteps // steps
        return [i * stride for i in range(steps)][::-1]
    if steps == 1:
        return [num_timesteps - 1]
    return [round(i * (num_timesteps - 1) / (steps - 1)) for i in range(steps)][::-1]


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


def predict_x0_eps(model: Denoiser, schedule: NoiseSchedule, x: torch.Tensor, t: int, prediction: str,
                   clip_range: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the network at timestep t and return (x_0, eps); x_0 optionally clipped, eps re-derived to match."""
    t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    output = model(x, t_batch).float()
    x0, eps = schedule.x0_and_eps(prediction, output, x, t_batch)
    if clip_range is not None:
        x0 = x0.clamp(*clip_range)
        eps = schedule.eps_from_x0(x, t_batch, x0)
    return x0, eps


def reverse_steps(schedule: NoiseSchedule, steps: int | None, desc: str,
                  progress: bool) -> Iterator[tuple[int, int, float, float]]:
    """(t, t_prev, abar_t, abar_prev) for each step of a reverse process, with a progress bar.

    t_prev is -1 at the last step, where abar_prev = 1 (x_0 is noise-free); alphas are float64 scalars.
    """
    timesteps = spaced_timesteps(schedule.num_timesteps, steps)
    abar = schedule.alphas_cumprod_float64
    for i, t in enumerate(tqdm(timesteps, desc=desc, disable=not progress, leave=False)):
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        yield t, t_prev, float(abar[t]), (float(abar[t_prev]) if t_prev >= 0 else 1.0)
