"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models"):
a multistep solver of the probability-flow ODE in data prediction, whose corrector (UniC) refines every new point
with the network evaluation that the next step needs anyway, so it raises the order at no extra evaluation.

Symbols as in dpm_solver.py: alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t);
a step goes from s (with prediction x0_s) to t, h = lambda_t - lambda_s. Both parts are one update (paper §3):

    x_t = (sigma_t / sigma_s) x_s - alpha_t (e^{-h} - 1) x0_s - alpha_t B(h) sum_m rho_m D_m,
    D_m = (x0_m - x0_s) / r_m,   r_m = (lambda_m - lambda_s) / h,

over earlier points m for the predictor UniP, and over those plus the new point t itself (r = 1, x0_t the network's
prediction at the predicted x_t) for the corrector UniC. The rho solve R rho = g / B(h), R_{km} = r_m^k,
g_k = k! h phi_{k+1}(h) (the paper's phi functions in -h, data prediction); with a single D, rho = 1/2, as in the
authors' code. B(h) is the paper's choice B1(h) = h ("bh1") or B2(h) = e^h - 1 ("bh2", the default: the authors
recommend it for guided sampling). As in the reference code the first steps use the orders available and the final
steps lower orders (the last step, to sigma = 0, returns the predicted x_0).

As DPM-Solver++ (dpm_solver.py), ``solve_unipc`` takes any path alpha_t x_0 + sigma_t eps as lists; a first point
with alpha = 0 (lambda = -inf) is the limit of the formulas: the corrector's new point has r = 1 whatever h, and an
earlier point at lambda = -inf has weight 0 in the predictor, so it is left out of the differences.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import DEFAULT_STEPS
from ..schedule import NoiseSchedule
from .common import Denoiser, ImageNoise, StepCallback, log_snr_steps, predict_x0_eps
from .dpm_solver import X0Prediction, first_order_step

VARIANTS = ("bh1", "bh2")


@torch.no_grad()
def sample_unipc(model: Denoiser, schedule: NoiseSchedule, x_T: torch.Tensor, *,
                 steps: int | None = DEFAULT_STEPS["unipc"],        # network evaluations
                 order: int = 2,                                    # 1, 2 or 3 (of the predictor; UniC adds one)
                 variant: str = "bh2",                              # B(h): bh1 = h, bh2 = e^h - 1
                 prediction: str = "eps",                           # what the network outputs: eps, x0 or v
                 clip_range: tuple[float, float] | None = (-1, 1),  # clip predicted x_0; None: off
                 threshold: float | None = None,                    # dynamic thresholding quantile
                 spacing: str = "trailing",                         # which timesteps are visited (SPACINGS)
                 noise: ImageNoise | None = None,                   # unused: the solver is deterministic
                 on_step: StepCallback | None = None,               # called as on_step(t, x_t, predicted x_0)
                 progress: bool = True) -> torch.Tensor:
    """Solve the probability-flow ODE from x_T (pure noise at the first timestep) to x_0 with UniPC."""
    timesteps, alpha, sigma, lam = log_snr_steps(schedule, steps, spacing)

    def predict(i: int, x: torch.Tensor) -> torch.Tensor:
        return predict_x0_eps(model, schedule, x, timesteps[i], prediction, clip_range, threshold, on_step)[0]

    return solve_unipc(predict, x_T, alpha, sigma, lam, order=order, variant=variant, progress=progress)


def solve_unipc(predict_x0: X0Prediction, x: torch.Tensor, alpha: list[float], sigma: list[float], lam: list[float],
                *, order: int = 2, variant: str = "bh2", desc: str | None = None,
                progress: bool = True) -> torch.Tensor:
    """UniPC from x at the first point of the path to x_0, through every point given; the last step lands on the
    last point's predicted x_0."""
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if variant == "bh1" and not math.isfinite(lam[0]):
        raise ValueError("UniPC's bh1 (B(h) = h) has no limit for a first step from alpha = 0 (h = inf): use bh2")
    n = len(lam)
    history = []              # history: (lambda, predicted x_0) of the last `order` points, newest last
    x_before, used = x, 0     # x at the newest point of history, and the order of the step that left it
    for i in tqdm(range(n), desc=desc or f"unipc-{variant}({order})", disable=not progress, leave=False):
        x0 = predict_x0(i, x)
        if i == n - 1:  # to sigma = 0: the first-order step lands on the predicted x_0
            return x0
        if i > 0:       # UniC: the same step again, now through the new point as well
            earlier = history[-used:-1][::-1]
            x = _update(x_before, history[-1], [*earlier, (lam[i], x0)], lam[i], alpha[i], sigma[i],
                        sigma[i - 1], variant)
        history = [*history, (lam[i], x0)][-order:]
        used = min(order, n - i, i + 1)
        x_before = x
        x = _update(x, history[-1], history[-used:-1][::-1], lam[i + 1], alpha[i + 1], sigma[i + 1], sigma[i],
                    variant)  # UniP
    return x


def _update(x_s: torch.Tensor, newest: tuple[float, torch.Tensor], points: list[tuple[float, torch.Tensor]],
            lam_t: float, alpha_t: float, sigma_t: float, sigma_s: float, variant: str) -> torch.Tensor:
    """One UniPC step from s (``newest``: lambda_s, x0_s) to lambda_t, with the differences to ``points``."""
    lam_s, x0_s = newest
    points = [(lam, x0) for lam, x0 in points if math.isfinite(lam)]  # a point at lambda = -inf weighs 0
    h = lam_t - lam_s
    hh = -h                                      # data prediction integrates in -h
    h_phi_1 = math.expm1(hh)                     # e^{-h} - 1
    x_t = first_order_step(x_s, x0_s, sigma_s, sigma_t, alpha_t, h)
    if not points:
        return x_t
    ratios = [1.0 if lam == lam_t else (lam - lam_s) / h for lam, _ in points]  # r = 1 at t, even for h = inf
    B = hh if variant == "bh1" else h_phi_1
    rhos = [0.5] if len(points) == 1 else np.linalg.solve(np.vander(ratios, increasing=True).T,
                                                          _g(hh, len(points)) / B)
    correction = sum(float(rho) * (x0 - x0_s) / r for rho, r, (_, x0) in zip(rhos, ratios, points))
    return x_t - alpha_t * B * correction


def _g(hh: float, size: int) -> np.ndarray:
    """k! hh phi_{k+1}(hh) for k = 1 .. size, by the recursion phi_{k+1}(z) = (phi_k(z) - 1 / k!) / z."""
    values, h_phi, factorial = [], math.expm1(hh) / hh - 1, 1
    for k in range(1, size + 1):
        values.append(h_phi * factorial)
        factorial *= k + 1
        h_phi = h_phi / hh - 1 / factorial
    return np.array(values)
