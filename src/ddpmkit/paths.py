"""Each objective as a Gaussian path over the fraction of a sampling run, the view in which distillation
(distill/) and editing (editing/) are written once for ddpm, edm and flow models.

Progressive distillation (Salimans & Ho 2022) is stated for any noised data z_t = alpha_t x + sigma_t eps: a DDIM
step, its two-steps-in-one target (their eq. 8 and Algorithm 2) and the truncated-SNR weight use nothing else. So a
model enters distillation as

    alpha(u), sigma(u)      its path at the fraction u in [0, 1] of a run (u = 0: the start, pure noise; u = 1: data,
                            alpha = 1 and sigma = 0)
    predict_x0(x, u)        its network's x_0 prediction there (each objective's own parametrisation)
    start(noise)            where a run starts for standard-normal ``noise`` (edm: sigma_max times it)

A run of N steps visits u = 0, 1/N, ..., (N - 1)/N and ends at u = 1; the grid of 2N steps holds the grid of N, which
is what lets each round of progressive distillation halve the steps. The fractions map onto each objective's own
levels as its samplers space them: ddpm's trailing timesteps round(T (1 - u)) - 1 (so a student's N steps are the
timesteps ``ddim`` visits with N steps), flow's shifted times (SD3 eq. 23; Euler with N steps visits the same), and
EDM's levels uniform in sigma^(1/rho) from sigma_max towards sigma_min (eq. 5, over u in [0, 1) instead of EDM's
[0, 1], so that grids nest).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .objectives import EDM, RectifiedFlow, objective_of
from .schedule import NoiseSchedule


def column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-image values (B,) shaped to broadcast over images (B, C, H, W), in ``like``'s float type."""
    return values.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def _fractions(u: torch.Tensor | float, device=None) -> torch.Tensor:
    return torch.as_tensor(u, dtype=torch.float64, device=device).reshape(-1)


@dataclass(frozen=True)
class DDPMPath:
    """DDPM's discrete process: alpha = sqrt(abar_t), sigma = sqrt(1 - abar_t) at t = round(T (1 - u)) - 1."""
    schedule: NoiseSchedule
    prediction: str

    def timesteps(self, u: torch.Tensor) -> torch.Tensor:
        T = self.schedule.num_timesteps
        return (torch.round(T - _fractions(u) * T) - 1).clamp(0, T - 1).long()

    def alpha_sigma(self, u: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        u = _fractions(u)
        abar = self.schedule.alphas_cumprod_float64.to(u.device)[self.timesteps(u).to(u.device)]
        clean = u >= 1
        return torch.where(clean, 1.0, abar.sqrt()), torch.where(clean, 0.0, (1 - abar).sqrt())

    def predict_x0(self, network, x: torch.Tensor, u: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t = self.timesteps(u).to(x.device)
        out = network(x, t) if y is None else network(x, t, y)
        return self.schedule.x0_and_eps(self.prediction, out.float(), x, t)[0]

    def start(self, noise: torch.Tensor) -> torch.Tensor:
        return noise


@dataclass(frozen=True)
class FlowPath:
    """Rectified flow: alpha = 1 - t, sigma = t at the shifted time t of 1 - u; x_0 = x - t v."""
    objective: RectifiedFlow

    def times(self, u: torch.Tensor | float) -> torch.Tensor:
        return self.objective.shifted(1 - _fractions(u))

    def alpha_sigma(self, u: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.times(u)
        return 1 - t, t

    def predict_x0(self, network, x: torch.Tensor, u: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t = self.times(u).to(device=x.device, dtype=torch.float32)
        return x - column(t, x) * self.objective.velocity(network, x, t, y)

    def start(self, noise: torch.Tensor) -> torch.Tensor:
        return noise


@dataclass(frozen=True)
class EDMPath:
    """EDM: alpha = 1, sigma = (sigma_max^(1/rho) + u (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho (eq. 5), 0 at
    u = 1; x_0 = D(x; sigma)."""
    objective: EDM

    def sigmas(self, u: torch.Tensor | float) -> torch.Tensor:
        u = _fractions(u)
        return torch.where(u >= 1, 0.0, self.objective.sigma_at(u.clamp(max=1)))

    def alpha_sigma(self, u: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.sigmas(u)
        return torch.ones_like(sigma), sigma

    def predict_x0(self, network, x: torch.Tensor, u: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        sigma = self.sigmas(u).to(device=x.device, dtype=torch.float32)
        return self.objective.denoise(network, x, sigma, y)

    def start(self, noise: torch.Tensor) -> torch.Tensor:
        return noise * self.objective.sigma_max


GaussianPath = DDPMPath | FlowPath | EDMPath


def path_of(cfg, schedule: NoiseSchedule) -> GaussianPath:
    """The path of a model trained as ``cfg`` says (``schedule``: its DDPM schedule, used by ddpm models only)."""
    objective = objective_of(cfg.diffusion)
    if objective is None:
        return DDPMPath(schedule, cfg.diffusion.prediction)
    return FlowPath(objective) if cfg.diffusion.objective == "flow" else EDMPath(objective)


def grid_draw(u: torch.Tensor, n: int, max_guidance: float,
              labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training loop's uniform ``u`` (B,) -> each image's step i = floor(u n) of an n-step grid (float64), and a
    guidance-distilled student's w (None when it learns no guidance, or for unconditional images): max_guidance
    times the rest u n - i, which is uniform in [0, 1) and independent of i. So distillation draws nothing beyond
    what the loop gives every loss (and stays exact under torchrun)."""
    scaled = u.double() * n
    step = torch.floor(scaled).clamp(0, n - 1)
    if not max_guidance or labels is None:
        return step, None
    return step, (max_guidance * (scaled - step).clamp(0, 1)).float()


def on_path(x0: torch.Tensor, eps: torch.Tensor, at: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """z = alpha x_0 + sigma eps at ``at`` = (alpha, sigma), one pair per image."""
    alpha, sigma = at
    return column(alpha, x0) * x0 + column(sigma, x0) * eps


def with_guidance(network, guidance: torch.Tensor | None):
    """``network`` with a guidance-distilled student's per-image w bound in (unchanged when ``guidance`` is None)."""
    if guidance is None:
        return network
    return lambda x, level, y=None: network(x, level, y, guidance=guidance)


def ddim_step(x: torch.Tensor, x0: torch.Tensor, here: tuple[torch.Tensor, torch.Tensor],
              there: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """DDIM's deterministic step (Song et al. 2020, eq. 12 with sigma = 0) on any Gaussian path: keep the x_0 and
    eps that x implies, z_there = alpha_there x_0 + sigma_there eps. ``here`` and ``there`` are (alpha, sigma) per
    image; sigma here must be > 0."""
    (a, s), (a2, s2) = [(column(p, x), column(q, x)) for p, q in (here, there)]
    eps = (x - a * x0) / s
    return a2 * x0 + s2 * eps
