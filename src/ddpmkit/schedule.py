"""Beta schedules and the noise schedule: the forward process, the posterior and prediction conversions.

Symbols (Ho et al. 2020, "DDPM"; Nichol & Dhariwal 2021, "IDDPM"; Salimans & Ho 2022, "v"):

| code                    | paper                                  |
|-------------------------|----------------------------------------|
| ``t`` (0 .. T-1)        | t (1 .. T); index ``t`` is paper step t+1 |
| ``betas[t]``            | beta_t                                 |
| ``alphas[t]``           | alpha_t = 1 - beta_t                   |
| ``alphas_cumprod[t]``   | alpha-bar_t = prod_{s<=t} alpha_s      |
| ``posterior_variance``  | tilde-beta_t (DDPM eq. 7)              |
| ``abar_s``, ``abar_t``  | alpha-bar at an earlier step s < t     |
| ``eps``                 | epsilon, the noise added to x_0        |
| ``v``                   | v = sqrt(abar) eps - sqrt(1-abar) x_0  |

All tables are computed in float64 and stored as float32 buffers of shape (T,).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

PREDICTIONS = ("eps", "x0", "v")


def linear_beta_schedule(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Betas rising linearly from ``beta_start`` to ``beta_end`` as given (DDPM §4: 1e-4 to 0.02 for T = 1000).

    A config's beta_start/beta_end are for T = 1000 and scaled for other T: build.noise_schedule applies that rule."""
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def cosine_beta_schedule(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """IDDPM eq. 17: alpha-bar(t) = f(t) / f(0), f(t) = cos(((t/T + s) / (1 + s)) * pi/2)^2.

    beta_t = 1 - alpha-bar(t) / alpha-bar(t-1), clipped at ``max_beta`` to avoid the singularity at t = T.
    """
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alphas_cumprod = f / f[0]
    betas = 1 - alphas_cumprod[1:] / alphas_cumprod[:-1]
    return betas.clamp(max=max_beta)


class Posterior(NamedTuple):
    """q(x_s | x_t, x_0) = N(coef_x0 x_0 + coef_xt x_t, variance I) for s < t, and the step's beta."""
    coef_x0: torch.Tensor
    coef_xt: torch.Tensor
    variance: torch.Tensor
    beta: torch.Tensor


def posterior(abar_t: torch.Tensor | float, abar_s: torch.Tensor | float) -> Posterior:
    """DDPM eqs. 6-7 from one step t back to an earlier step s, given alpha-bar at both (abar_s = 1 for x_0).

    With beta = 1 - abar_t / abar_s, the beta of the one step s -> t (IDDPM eq. 19), adjacent steps give DDPM's
    beta_t and respaced ones the same formulas between non-adjacent timesteps (IDDPM §4):
        coef_x0 = sqrt(abar_s) beta / (1 - abar_t),  coef_xt = sqrt(1 - beta) (1 - abar_s) / (1 - abar_t),
        variance = tilde-beta = beta (1 - abar_s) / (1 - abar_t).
    Computed in float64 (elementwise over tensors of timesteps, or on plain numbers).
    """
    abar_t = torch.as_tensor(abar_t, dtype=torch.float64)
    abar_s = torch.as_tensor(abar_s, dtype=torch.float64)
    beta = 1 - abar_t / abar_s
    return Posterior(coef_x0=abar_s.sqrt() * beta / (1 - abar_t),
                     coef_xt=(1 - beta).sqrt() * (1 - abar_s) / (1 - abar_t),
                     variance=beta * (1 - abar_s) / (1 - abar_t), beta=beta)


def _gather(table: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """table[t] reshaped to broadcast over an image batch of ``ndim`` dimensions."""
    return table.to(t.device)[t].reshape(-1, *([1] * (ndim - 1)))


class NoiseSchedule(torch.nn.Module):
    """The fixed quantities of a diffusion process with T steps, and the maths that uses them.

    It is an ``nn.Module`` only so that ``.to(device)`` moves its tables; it has no parameters.
    """

    def __init__(self, betas: torch.Tensor):
        super().__init__()
        betas = betas.to(torch.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError("betas must be a 1-D tensor with every value in (0, 1)")
        alphas = 1 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        q_post = posterior(abar, abar_prev)  # DDPM eqs. 6-7 for each step t -> t - 1
        tables = {
            "betas": betas,
            "alphas": alphas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
            "posterior_variance": q_post.variance,   # tilde-beta_t
            "posterior_mean_coef_x0": q_post.coef_x0,  # coefficient of x_0 in the posterior mean
            "posterior_mean_coef_xt": q_post.coef_xt,  # and of x_t
        }
        for name, value in tables.items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)
        self.betas_float64 = betas  # float64 copies for samplers that step between arbitrary timesteps
        self.alphas_cumprod_float64 = abar

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio alpha-bar_t / (1 - alpha-bar_t) (Kingma et al. 2021)."""
        abar = self.alphas_cumprod.to(t.device)[t]
        return abar / (1 - abar)

    # -- forward process -------------------------------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)  (DDPM eq. 4)."""
        return (_gather(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
                + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0)  (DDPM eqs. 6-7)."""
        mean = (_gather(self.posterior_mean_coef_x0, t, xt.ndim) * x0
                + _gather(self.posterior_mean_coef_xt, t, xt.ndim) * xt)
        return mean, _gather(self.posterior_variance, t, xt.ndim)

    # -- conversions between what a network predicts -----------------------------------------------------------

    def velocity(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0  (Salimans & Ho 2022, §4)."""
        return (_gather(self.sqrt_alphas_cumprod, t, x0.ndim) * noise
                - _gather(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0)

    def training_target(self, prediction: str, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What a network predicting ``prediction`` should output for x_t = q_sample(x0, t, noise)."""
        if prediction == "eps":
            return noise
        if prediction == "x0":
            return x0
        if prediction == "v":
            return self.velocity(x0, t, noise)
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")

    def x0_from_eps(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert DDPM eq. 4: x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return ((xt - _gather(self.sqrt_one_minus_alphas_cumprod, t, xt.ndim) * eps)
                / _gather(self.sqrt_alphas_cumprod, t, xt.ndim))

    def eps_from_x0(self, xt: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Invert DDPM eq. 4 for the noise: eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
        return ((xt - _gather(self.sqrt_alphas_cumprod, t, xt.ndim) * x0)
                / _gather(self.sqrt_one_minus_alphas_cumprod, t, xt.ndim))

    def x0_and_eps(self, prediction: str, model_output: torch.Tensor, xt: torch.Tensor,
                   t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both x_0 and eps implied by a network output of kind ``prediction`` at (x_t, t)."""
        if prediction == "eps":
            return self.x0_from_eps(xt, t, model_output), model_output
        if prediction == "x0":
            return model_output, self.eps_from_x0(xt, t, model_output)
        if prediction == "v":
            a = _gather(self.sqrt_alphas_cumprod, t, xt.ndim)
            b = _gather(self.sqrt_one_minus_alphas_cumprod, t, xt.ndim)
            return a * xt - b * model_output, a * model_output + b * xt  # Salimans & Ho 2022, appendix D
        raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")
