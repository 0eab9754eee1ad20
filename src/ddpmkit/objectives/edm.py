"""EDM (Karras et al. 2022, "Elucidating the design space of diffusion-based generative models"): x = y + sigma n,
the preconditioned denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (eq. 7, Table 1), log-normal training
noise levels, the loss weight lambda(sigma) that makes the effective target's weight 1 (eq. 8), and the sampling
levels of eq. 5.

| symbol     | here                                                   |
|------------|--------------------------------------------------------|
| y, n       | x0 (data), noise (standard normal)                     |
| sigma      | the noise level, a float tensor of shape (B,)          |
| F          | the network, ``network(x, level, y)``                  |
| c_noise    | 1/4 ln sigma; the network sees ``NOISE_LEVEL_SCALE`` times it |
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# The network's level input is 1000 c_noise = 250 ln sigma: over sigma in [0.002, 80] it spans about -1550..1100, the
# scale of the 0..1000 timesteps the U-Net's sinusoidal embedding is made for (EDM's own network takes c_noise with an
# embedding of other frequencies; a constant factor only moves the embedding's frequencies).
NOISE_LEVEL_SCALE = 1000.0


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or kept in float64: a network's bf16 or fp16 output under autocast is measured in float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-image values (B,) shaped to broadcast over images (B, C, H, W)."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


@dataclass(frozen=True)
class EDM:
    sigma_data: float = 0.5   # sigma_data: the data's standard deviation, images in [-1, 1] (Table 1)
    p_mean: float = -1.2      # ln sigma ~ N(P_mean, P_std^2) in training (Table 1)
    p_std: float = 1.2        # P_std
    sigma_min: float = 0.002  # the sampling range (Table 1)
    sigma_max: float = 80.0
    rho: float = 7.0          # eq. 5: the sampling levels are uniform in sigma^(1/rho)

    def preconditioning(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(c_skip, c_out, c_in, c_noise) of Table 1 at ``sigma``."""
        sd2, s2 = self.sigma_data**2, sigma**2
        return sd2 / (s2 + sd2), sigma * self.sigma_data / (s2 + sd2).sqrt(), 1 / (s2 + sd2).sqrt(), sigma.log() / 4

    def denoise(self, network, x: torch.Tensor, sigma: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (eq. 7); ``sigma`` of shape (B,)."""
        c_skip, c_out, c_in, c_noise = self.preconditioning(sigma)
        level = NOISE_LEVEL_SCALE * c_noise
        out = network(_column(c_in, x) * x, level) if y is None else network(_column(c_in, x) * x, level, y)
        return _column(c_skip, x) * x + _column(c_out, x) * at_least_float32(out)

    def loss_weight(self, sigma: torch.Tensor) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2 (Table 1)."""
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def training_sigmas(self, u: torch.Tensor) -> torch.Tensor:
        """Noise levels for uniform numbers ``u`` in (0, 1): ln sigma = P_mean + P_std Phi^-1(u), the log-normal of
        Table 1 by its inverse CDF."""
        return (self.p_mean + self.p_std * math.sqrt(2) * torch.erfinv(2 * u - 1)).exp()

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """x = y + sigma n (eq. 2's noised data)."""
        return x0 + _column(sigma, x0) * noise

    def loss(self, network, x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor,
             y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over images of lambda(sigma) ||D(y + sigma n; sigma) - y||^2 / pixels (eq. 2 with Table 1's lambda)."""
        denoised = self.denoise(network, self.add_noise(x0, noise, sigma), sigma, y)
        per_image = (denoised - at_least_float32(x0)).square().flatten(1).mean(1)
        return (self.loss_weight(at_least_float32(sigma)) * per_image).mean()

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        """``steps`` levels from sigma_max down to sigma_min, uniform in sigma^(1/rho) (eq. 5), then 0: float64."""
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        sigmas = self.sigma_at(torch.linspace(0, 1, steps, dtype=torch.float64))
        return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)])

    def sigma_at(self, ramp: torch.Tensor) -> torch.Tensor:
        """Eq. 5's level at ``ramp`` in [0, 1]: uniform in sigma^(1/rho) from sigma_max (0) to sigma_min (1)."""
        low, high = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (high + ramp * (low - high)) ** self.rho
