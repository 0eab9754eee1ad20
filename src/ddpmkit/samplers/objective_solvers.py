"""DPM-Solver++ (2M, 3M, SDE-2M) and UniPC for EDM and rectified-flow models, by a change of variables.

Both objectives' noised data is a Gaussian path x = alpha x_0 + sigma eps, as DDPM's is, only not variance-preserving:

    rectified flow   alpha = 1 - t, sigma = t      (x_t = (1 - t) x_0 + t eps; x_0 = x_t - t v)
    EDM              alpha = 1,     sigma = sigma  (x = y + sigma n; x_0 = D(x; sigma))

The probability-flow ODE of any such path, written in lambda = log(alpha / sigma) and x / sigma, is the one
DPM-Solver++ and UniPC solve exactly in their linear part (Lu et al. 2022, eq. 9), so the solvers of dpm_solver.py
and unipc.py run on these paths unchanged, given alpha, sigma and lambda at the points visited and the model's x_0
prediction there. The points are each objective's own: flow's shifted times (SD3 eq. 23) from t = 1, where alpha = 0
and lambda = -inf (the solvers take that limit), and EDM's Karras levels (eq. 5) from sigma_max. The last step lands
on the last point's predicted x_0, as Euler's does, so ``steps`` points cost ``steps`` network evaluations.
"""
from __future__ import annotations

import math
from functools import partial

import torch

from ..objectives import EDM, RectifiedFlow
from .common import ImageNoise, StepCallback
from .dpm_solver import X0Prediction, solve_dpm_multistep, solve_sde_dpm
from .unipc import solve_unipc

# The solvers by their sampler names; each takes (predict_x0, x, alpha, sigma, lam, **options).
PATH_SOLVERS = {
    "dpm++2m": partial(solve_dpm_multistep, order=2),
    "dpm++3m": partial(solve_dpm_multistep, order=3),
    "sde-dpm++2m": solve_sde_dpm,
    "unipc": solve_unipc,
}
STOCHASTIC = ("sde-dpm++2m",)  # the solvers that draw noise (from ``noise``)


def half_log_snr(alpha: float, sigma: float) -> float:
    """lambda = log(alpha / sigma), -inf where alpha = 0."""
    return math.log(alpha / sigma) if alpha > 0 else -math.inf


def _per_image(level: float, x: torch.Tensor) -> torch.Tensor:
    """The level as the (B,) float tensor the objectives take (also samplers/continuous.py's)."""
    return torch.full((len(x),), level, dtype=torch.float32, device=x.device)


def _solve(solver: str, predict_x0: X0Prediction, x: torch.Tensor, alpha: list[float], sigma: list[float],
           noise: ImageNoise | None, desc: str, progress: bool, options: dict) -> torch.Tensor:
    if solver not in PATH_SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(PATH_SOLVERS)}")
    if solver in STOCHASTIC:
        options = {**options, "noise": noise}
    lam = [half_log_snr(a, s) for a, s in zip(alpha, sigma)]
    return PATH_SOLVERS[solver](predict_x0, x, alpha, sigma, lam, desc=desc, progress=progress, **options)


@torch.no_grad()
def solve_flow(solver: str, objective: RectifiedFlow, network, x: torch.Tensor, times: torch.Tensor, *,
               noise: ImageNoise | None = None, on_step: StepCallback | None = None, progress: bool = True,
               **options) -> torch.Tensor:
    """Take x at ``times[0]`` to t = 0 with ``solver`` through the points ``times`` (decreasing, all > 0 but the
    first may be 1). ``network(x, level)`` has the labels bound in; ``on_step(t, x_t, x_0)`` sees each evaluation."""
    times = [float(t) for t in times]

    def predict_x0(i: int, x_t: torch.Tensor) -> torch.Tensor:
        x0 = x_t - times[i] * objective.velocity(network, x_t, _per_image(times[i], x_t))
        if on_step is not None:
            on_step(times[i], x_t, x0)
        return x0

    return _solve(solver, predict_x0, x, [1 - t for t in times], times, noise, f"flow {solver}", progress, options)


@torch.no_grad()
def solve_edm(solver: str, objective: EDM, network, x: torch.Tensor, sigmas: torch.Tensor, *,
              noise: ImageNoise | None = None, on_step: StepCallback | None = None, progress: bool = True,
              **options) -> torch.Tensor:
    """Take x at noise level ``sigmas[0]`` to sigma = 0 with ``solver`` through the levels ``sigmas`` (decreasing,
    all > 0). ``on_step(sigma, x / sqrt(1 + sigma^2), D(x))`` sees each evaluation, x in the data's range as in
    samplers.continuous.sample_edm."""
    sigmas = [float(s) for s in sigmas]

    def predict_x0(i: int, x_i: torch.Tensor) -> torch.Tensor:
        denoised = objective.denoise(network, x_i, _per_image(sigmas[i], x_i))
        if on_step is not None:
            on_step(sigmas[i], x_i / math.sqrt(1 + sigmas[i] ** 2), denoised)
        return denoised

    return _solve(solver, predict_x0, x, [1.0] * len(sigmas), sigmas, noise, f"edm {solver}", progress, options)


def sample_flow_with_solver(solver: str, objective: RectifiedFlow, network, noise_images: torch.Tensor, *,
                            steps: int = 20, **options) -> torch.Tensor:
    """Images from a rectified-flow model: x = ``noise_images`` at t = 1, then ``solver`` over the objective's
    ``steps`` sampling times (its shift applied)."""
    return solve_flow(solver, objective, network, noise_images, objective.sampling_times(steps)[:-1], **options)


def sample_edm_with_solver(solver: str, objective: EDM, network, noise_images: torch.Tensor, *,
                           steps: int = 20, **options) -> torch.Tensor:
    """Images from an EDM model: x = sigma_max ``noise_images``, then ``solver`` over the ``steps`` levels of eq. 5."""
    sigmas = objective.sampling_sigmas(steps)[:-1]
    return solve_edm(solver, objective, network, noise_images * float(sigmas[0]), sigmas, **options)
