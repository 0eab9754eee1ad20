"""DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models"): multistep, data prediction, orders 2 (2M) and 3 (3M).

In alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t) and lambda_t = log(alpha_t / sigma_t), the probability-flow
ODE's exact solution from s to t is x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda
x_0(lambda) dlambda (eq. 9). The solver approximates x_0(lambda) by a polynomial through the last 1, 2 or 3 data
predictions (eq. 10 and Algorithm 2; the third order as in the authors' and diffusers' code) and integrates it
exactly. The first steps use the orders available; the last step, to sigma = 0, is first order (it returns the
predicted x_0), and with fewer than 15 steps 3M's second-to-last step is second order, as in the reference code.

Nothing in eq. 9 needs alpha^2 + sigma^2 = 1: it holds for any path x_t = alpha_t x_0 + sigma_t eps, so the solvers
here (``solve_dpm_multistep``, ``solve_sde_dpm``) take the path as lists of alpha, sigma and lambda at the points
visited and a function predicting x_0 at each. ``sample_dpm_solver`` gives them a DDPM schedule's; samplers/
objective_solvers.py gives them rectified flow's (alpha = 1 - t, sigma = t) and EDM's (alpha = 1). A path may start
where alpha = 0 (flow's t = 1, lambda = -inf): the first step then has h = inf, e^{-h} = 0, and the next step's
difference to that point has weight 1 / r = 0, the limits of the finite formulas, which float arithmetic gives.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..config import DEFAULT_STEPS
from ..schedule import NoiseSchedule
from .common import Denoiser, ImageNoise, StepCallback, log_snr_steps, predict_x0_eps

# (index of the point on the path, x there) -> the predicted x_0, the solvers' one call of the network.
X0Prediction = Callable[[int, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample_dpm_solver(model: Denoiser, schedule: NoiseSchedule, x_T: torch.Tensor, *,
                      steps: int | None = DEFAULT_STEPS["dpm++2m"],      # network evaluations
                      order: int = 2,                                    # 2: DPM-Solver++(2M), 3: (3M)
                      prediction: str = "eps",                           # what the network outputs: eps, x0 or v
                      clip_range: tuple[float, float] | None = (-1, 1),  # clip predicted x_0; None: off
                      threshold: float | None = None,                    # dynamic thresholding quantile
                      spacing: str = "trailing",                         # which timesteps are visited (SPACINGS)
                      noise: ImageNoise | None = None,                   # unused: the solver is deterministic
                      on_step: StepCallback | None = None,               # called as on_step(t, x_t, predicted x_0)
                      progress: bool = True) -> torch.Tensor:
    """Solve the probability-flow ODE from x_T (pure noise at the first timestep) to x_0."""
    timesteps, alpha, sigma, lam = log_snr_steps(schedule, steps, spacing)

    def predict(i: int, x: torch.Tensor) -> torch.Tensor:
        return predict_x0_eps(model, schedule, x, timesteps[i], prediction, clip_range, threshold, on_step)[0]

    return solve_dpm_multistep(predict, x_T, alpha, sigma, lam, order=order, desc=f"dpm-solver++({order}m)",
                               progress=progress)


def solve_dpm_multistep(predict_x0: X0Prediction, x: torch.Tensor, alpha: list[float], sigma: list[float],
                        lam: list[float], *, order: int = 2, desc: str = "dpm-solver++",
                        progress: bool = True) -> torch.Tensor:
    """DPM-Solver++(``order``M) from x at the first point of the path to x_0, through every point given; the last
    step lands on the last point's predicted x_0 (sigma = 0 after it)."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    history = []  # (lambda, predicted x_0), newest last
    n = len(lam)
    for i in tqdm(range(n), desc=desc, disable=not progress, leave=False):
        x0 = predict_x0(i, x)
        history = [*history[-2:], (lam[i], x0)]
        if i == n - 1:  # to sigma = 0: the first-order step lands on the predicted x_0
            return x0
        k = min(order, len(history), 2 if i == n - 2 and n < 15 else order)
        h = lam[i + 1] - lam[i]
        phi1 = -math.expm1(-h)  # 1 - e^{-h}
        x = first_order_step(x, x0, sigma[i], sigma[i + 1], alpha[i + 1], h)
        if k >= 2:
            r0 = (lam[i] - history[-2][0]) / h
            d1_0 = (x0 - history[-2][1]) / r0
            if k == 2:
                x = x + 0.5 * alpha[i + 1] * phi1 * d1_0
            else:
                r1 = (history[-2][0] - history[-3][0]) / h
                d1_1 = (history[-2][1] - history[-3][1]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi2 = phi1 / h - 1                       # (1 - e^{-h}) / h - 1
                phi3 = (h - phi1) / h**2 - 0.5            # (e^{-h} - 1 + h) / h^2 - 1/2
                x = x - alpha[i + 1] * phi2 * d1 - alpha[i + 1] * phi3 * d2
    return x


def first_order_step(x_s: torch.Tensor, x0_s: torch.Tensor, sigma_s: float, sigma_t: float, alpha_t: float,
                     h: float) -> torch.Tensor:
    """DPM-Solver++(1) from s to t, h = lambda_t - lambda_s: x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s
    (Lu et al. 2022, eq. 9 with x_0(lambda) held at x0_s; Algorithm 2's first step; DDIM in these variables).
    The higher orders and UniPC add their corrections to it."""
    return (sigma_t / sigma_s) * x_s - alpha_t * math.expm1(-h) * x0_s


@torch.no_grad()
def sample_sde_dpm_solver(model: Denoiser, schedule: NoiseSchedule, x_T: torch.Tensor, *,
                          steps: int | None = DEFAULT_STEPS["sde-dpm++2m"],  # network evaluations
                          prediction: str = "eps",                           # what the network outputs
                          clip_range: tuple[float, float] | None = (-1, 1),  # clip predicted x_0; None: off
                          threshold: float | None = None,                    # dynamic thresholding quantile
                          spacing: str = "trailing",                         # which timesteps are visited
                          noise: ImageNoise | None = None,                   # per-image generators for the noise
                          on_step: StepCallback | None = None,               # on_step(t, x_t, predicted x_0)
                          progress: bool = True) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, appendix; the variant the authors' and diffusers' code name
    sde-dpmsolver++): the same data-prediction polynomial, integrated along the reverse SDE instead of the ODE,

        x_t = (sigma_t / sigma_s) e^{-h} x_s + alpha_t (1 - e^{-2h}) (D0 + D1 / 2) + sigma_t sqrt(1 - e^{-2h}) z,

    with D1 the multistep correction (0 at the first step). The noise it adds at every step corrects errors of an
    imperfect model, as ancestral DDPM does, at the solver's cost in evaluations."""
    timesteps, alpha, sigma, lam = log_snr_steps(schedule, steps, spacing)

    def predict(i: int, x: torch.Tensor) -> torch.Tensor:
        return predict_x0_eps(model, schedule, x, timesteps[i], prediction, clip_range, threshold, on_step)[0]

    return solve_sde_dpm(predict, x_T, alpha, sigma, lam, noise=noise, progress=progress)


def solve_sde_dpm(predict_x0: X0Prediction, x: torch.Tensor, alpha: list[float], sigma: list[float],
                  lam: list[float], *, noise: ImageNoise | None = None, desc: str = "sde-dpm-solver++(2m)",
                  progress: bool = True) -> torch.Tensor:
    """SDE-DPM-Solver++(2M) along the path from x at its first point to x_0 (see ``sample_sde_dpm_solver``). The
    step keeps the marginals of any path alpha_t x_0 + sigma_t eps, variance-preserving or not: the x_0 coefficient
    is alpha_t (e^{-2h} + 1 - e^{-2h}) and the variance sigma_t^2 (e^{-2h} + 1 - e^{-2h})."""
    noise = noise or ImageNoise()
    previous = None  # (lambda, predicted x_0) of the last step
    for i in tqdm(range(len(lam)), desc=desc, disable=not progress, leave=False):
        x0 = predict_x0(i, x)
        if i == len(lam) - 1:  # to sigma = 0: the predicted x_0, no noise
            return x0
        h = lam[i + 1] - lam[i]
        weight = -math.expm1(-2 * h)  # 1 - e^{-2h}
        d = x0 if previous is None else x0 + 0.5 * (x0 - previous[1]) / ((lam[i] - previous[0]) / h)
        x = (sigma[i + 1] / sigma[i] * math.exp(-h)) * x + alpha[i + 1] * weight * d + \
            sigma[i + 1] * math.sqrt(weight) * noise.randn(x.shape, x.device)
        previous = (lam[i], x0)
    return x


def sample_dpm_solver_2m(model: Denoiser, schedule: NoiseSchedule, x_T: torch.Tensor, *,
                         steps: int | None = DEFAULT_STEPS["dpm++2m"], **options) -> torch.Tensor:
    """DPM-Solver++(2M)."""
    return sample_dpm_solver(model, schedule, x_T, steps=steps, order=2, **options)


def sample_dpm_solver_3m(model: Denoiser, schedule: NoiseSchedule, x_T: torch.Tensor, *,
                         steps: int | None = DEFAULT_STEPS["dpm++3m"], **options) -> torch.Tensor:
    """DPM-Solver++(3M)."""
    return sample_dpm_solver(model, schedule, x_T, steps=steps, order=3, **options)
