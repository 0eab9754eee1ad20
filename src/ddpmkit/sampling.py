"""Sampling from a trained checkpoint: the ``DiffusionSampler`` object and the ``generate`` library function."""
from __future__ import annotations

from pathlib import Path

import torch

from .build import clip_range, noise_schedule, resolve_device, unet_from_dict
from .checkpoint import load_checkpoint
from .config import config_from_dict
from .samplers import SAMPLERS, ImageNoise
from .errors import DdpmkitError


class DiffusionSampler:
    """A trained model ready to draw images.

    >>> sampler = DiffusionSampler("runs/quick/final.pt")
    >>> images = sampler.sample_ddim(num_samples=16, steps=50)   # float (16, C, H, W) in [0, 1]

    Image i of a call with ``seed=s`` starts from noise seeded by s + i, so it is the same whatever the batch size.
    """

    def __init__(self, checkpoint: str | Path | dict, device: str = "auto", use_ema: bool = True):
        state = checkpoint if isinstance(checkpoint, dict) else load_checkpoint(checkpoint)
        self.device = resolve_device(device)
        self.config = config_from_dict(state["config"], source="checkpoint config")
        self.model = unet_from_dict(state["unet"])
        self.model.load_state_dict(state["ema"]["model"] if use_ema else state["model"])
        self.model.to(self.device).eval().requires_grad_(False)
        self.schedule = noise_schedule(self.config.diffusion).to(self.device)
        self.class_names: list[str] = list(state.get("class_names", []))
        self.step = int(state["step"])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        spec = self.model.spec
        return spec.image_channels, spec.image_size, spec.image_size

    def _denoiser(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t)

    def sample(self, num_samples: int = 16, sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0,
               seed: int = 0, batch_size: int = 256, clip: bool | None = None, progress: bool = True) -> torch.Tensor:
        """Draw ``num_samples`` images with ``sampler`` (ddpm, deterministic or ddim); float in [0, 1] on the CPU."""
        if sampler not in SAMPLERS:
            raise DdpmkitError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if num_samples < 1 or batch_size < 1:
            raise DdpmkitError("num_samples and batch_size must be at least 1")
        T = self.schedule.num_timesteps
        if steps is not None and not 1 <= steps <= T:
            raise DdpmkitError(f"steps must be between 1 and T={T}, got {steps}")
        if eta < 0:
            raise DdpmkitError(f"eta must be >= 0, got {eta}")
        options = {"steps": steps, "prediction": self.config.diffusion.prediction, "progress": progress,
                   "clip_range": clip_range(self.config) if clip is None or clip else None}
        if sampler == "ddpm":
            options["variance"] = self.config.diffusion.variance
        if sampler == "ddim":
            options["eta"] = eta
            options["steps"] = steps or 50
        chunks = []
        for start in range(0, num_samples, batch_size):
            seeds = list(range(seed + start, seed + min(start + batch_size, num_samples)))
            noise = ImageNoise.from_seeds(seeds)
            x_T = noise.randn((len(seeds), *self.image_shape)).to(self.device)
            x0 = SAMPLERS[sampler](self._denoiser, self.schedule, x_T, noise=noise, **options)
            chunks.append(x0.float().cpu())
        images = torch.cat(chunks)
        return images.clamp(0, 1) if self.config.data.zero_one else ((images + 1) / 2).clamp(0, 1)

    def sample_ancestral(self, num_samples: int = 16, steps: int | None = None, **kwargs) -> torch.Tensor:
        """DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), over all T steps or ``steps`` respaced ones."""
        return self.sample(num_samples, sampler="ddpm", steps=steps, **kwargs)

    def sample_deterministic(self, num_samples: int = 16, steps: int | None = None, **kwargs) -> torch.Tensor:
        """DDIM with eta = 0 over all T steps (or ``steps``)."""
        return self.sample(num_samples, sampler="deterministic", steps=steps, **kwargs)

    def sample_ddim(self, num_samples: int = 16, steps: int = 50, eta: float = 0.0, **kwargs) -> torch.Tensor:
        """DDIM (Song et al. 2020) over ``steps`` timesteps with noise scale ``eta``."""
        return self.sample(num_samples, sampler="ddim", steps=steps, eta=eta, **kwargs)
