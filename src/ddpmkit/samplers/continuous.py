"""Euler and Heun over a continuous noise level (Karras et al. 2022, Algorithms 1 and 2), for the objectives of
``ddpmkit.objectives``: EDM's sigma and rectified flow's t.

An ODE sampler here is a list of levels, from the noisiest to 0, and the drift dx/dlevel. For EDM the drift is
(x - D(x; sigma)) / sigma (Algorithm 1, line 7); for rectified flow it is the predicted velocity. Heun's correction
is skipped on a last step to level 0, where EDM's drift is undefined (Algorithm 1, line 9), so S levels cost 2S - 1
network evaluations. EDM's stochastic sampler (Algorithm 2, "churn") raises sigma before each step and adds the
matching noise; it is defined in sigma, so only ``sample_edm`` takes it.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from ..config import OBJECTIVE_SAMPLERS, steps_for
from ..objectives import EDM, RectifiedFlow
from .common import ImageNoise, StepCallback
from .objective_solvers import PATH_SOLVERS, _per_image, sample_edm_with_solver, sample_flow_with_solver

# dx/dlevel at (x, level); the level a float, the same for every image of the batch.
Drift = Callable[[torch.Tensor, float], torch.Tensor]
# Before a step from ``level``: (x, level) -> (x with added noise, the raised level); Algorithm 2, lines 4-6.
Churn = Callable[[torch.Tensor, float], tuple[torch.Tensor, float]]


def integrate(drift: Drift, x: torch.Tensor, levels: torch.Tensor, *, heun: bool = True, churn: Churn | None = None,
              desc: str = "ode", progress: bool = True) -> torch.Tensor:
    """Take x from ``levels[0]`` to ``levels[-1]`` by Euler steps (Algorithm 1, line 8) with Heun's correction
    (lines 9-11) unless ``heun`` is False."""
    levels = [float(v) for v in levels]
    for level, following in tqdm(list(zip(levels[:-1], levels[1:])), desc=desc, disable=not progress, leave=False):
        if churn is not None:
            x, level = churn(x, level)
        slope = drift(x, level)
        x_next = x + (following - level) * slope
        if heun and following != 0:  # the second-order correction (lines 9-11)
            x_next = x + (following - level) * (slope + drift(x_next, following)) / 2
        x = x_next
    return x


@torch.no_grad()
def sample_edm(objective: EDM, network, noise_images: torch.Tensor, *,
               steps: int = 18,                                     # noise levels (2 steps - 1 evaluations with heun)
               heun: bool = True,                                   # False: Euler, one evaluation per level
               churn: float = 0.0,                                  # S_churn: 0 = deterministic (Algorithm 1)
               churn_range: tuple[float, float] = (0.0, math.inf),  # S_tmin, S_tmax: the sigmas where churn acts
               churn_noise: float = 1.0,                            # S_noise
               noise: ImageNoise | None = None,                     # per-image generators for churn's noise
               on_step: StepCallback | None = None,                 # on_step(sigma, x / sqrt(1 + sigma^2), D(x))
               progress: bool = True) -> torch.Tensor:
    """Draw images from an EDM model: x_0 = sigma_max n (n = ``noise_images``, standard normal), then Algorithm 1
    (``churn`` 0) or 2 over ``objective.sampling_sigmas(steps)``. ``network(x, level)`` has the labels bound in.
    ``on_step`` sees every network evaluation, with x scaled as the variance-preserving x_t of the same noise level
    (x_t = sqrt(abar) x with abar = 1 / (1 + sigma^2)), so that pictures show it in the data's range."""
    sigmas = objective.sampling_sigmas(steps)
    gamma = min(churn / steps, math.sqrt(2) - 1)  # Algorithm 2, line 5
    noise = noise or ImageNoise()

    def drift(x: torch.Tensor, sigma: float) -> torch.Tensor:
        denoised = objective.denoise(network, x, _per_image(sigma, x))
        if on_step is not None:
            on_step(sigma, x / math.sqrt(1 + sigma**2), denoised)
        return (x - denoised) / sigma  # Algorithm 1, line 7

    def raise_level(x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, float]:
        if not churn_range[0] <= sigma <= churn_range[1]:
            return x, sigma
        raised = sigma * (1 + gamma)  # Algorithm 2, lines 5-6
        return x + math.sqrt(raised**2 - sigma**2) * churn_noise * noise.randn(x.shape, x.device), raised

    return integrate(drift, noise_images * float(sigmas[0]), sigmas, heun=heun,
                     churn=raise_level if gamma > 0 else None, desc="edm", progress=progress)


@torch.no_grad()
def sample_flow(objective: RectifiedFlow, network, noise_images: torch.Tensor, *,
                steps: int = 20,     # time steps (2 steps - 1 evaluations with heun)
                heun: bool = False,  # Heun's correction: second order
                noise: ImageNoise | None = None,  # unused: the ODE is deterministic
                on_step: StepCallback | None = None,  # on_step(t, x_t, predicted x_0 = x_t - t v)
                progress: bool = True) -> torch.Tensor:
    """Draw images from a rectified-flow model: integrate dx/dt = v(x, t) from t = 1 (x = ``noise_images``) to 0
    over ``objective.sampling_times(steps)``. ``network(x, level)`` has the labels bound in."""
    def drift(x: torch.Tensor, t: float) -> torch.Tensor:
        velocity = objective.velocity(network, x, _per_image(t, x))
        if on_step is not None:
            on_step(t, x, x - t * velocity)
        return velocity

    return integrate(drift, noise_images, objective.sampling_times(steps), heun=heun, desc="flow", progress=progress)


def invert_euler(drift: Drift, x: torch.Tensor, levels: torch.Tensor, *, refine: int = 0,
                 desc: str = "ode inversion", progress: bool = True) -> torch.Tensor:
    """The inverse of ``integrate(drift, ., levels, heun=False)``: x at ``levels[-1]`` = 0 (an image) to x at
    ``levels[0]``, the ODE run towards noise as DDIM inversion runs DDPM's (Song et al. 2020, §4.3).

    Each step is Euler's from level L to the next, higher L', with the drift at the current point, at L' when L = 0
    (where EDM's drift (x - D) / sigma is undefined; DDIM inversion's first step also takes the next timestep's
    label). The decoder steps back from x' with the drift at x' instead, so the plain inversion is exact only as
    the steps shrink; ``refine`` > 0 iterates x' = x + (L' - L) drift(x', L') that many times, which, converged, is
    exactly the x' whose decoder step lands on x."""
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}")
    up = [float(v) for v in levels][::-1]
    for level, following in tqdm(list(zip(up[:-1], up[1:])), desc=desc, disable=not progress, leave=False):
        x_next = x + (following - level) * drift(x, following if level == 0 else level)
        for _ in range(refine):
            x_next = x + (following - level) * drift(x_next, following)
        x = x_next
    return x


@torch.no_grad()
def invert_objective(name: str, objective: EDM | RectifiedFlow, network, images: torch.Tensor, *, steps: int = 50,
                     refine: int = 0, progress: bool = True) -> torch.Tensor:
    """Images (model range) -> the standard-normal ``noise_images`` from which Euler with ``steps`` levels
    (``sample_objective(name, ..., "euler", steps=steps)``) draws them back: for flow x at t = 1, for EDM x at
    sigma_max divided by sigma_max. ``network(x, level)`` has the labels bound in."""
    if name == "flow":
        return invert_euler(lambda x, t: objective.velocity(network, x, _per_image(t, x)), images,
                            objective.sampling_times(steps), refine=refine, desc="flow inversion", progress=progress)
    sigmas = objective.sampling_sigmas(steps)
    drift = lambda x, sigma: (x - objective.denoise(network, x, _per_image(sigma, x))) / sigma  # noqa: E731
    return invert_euler(drift, images, sigmas, refine=refine, desc="edm inversion", progress=progress) / float(sigmas[0])


CONTINUOUS_SAMPLERS = {"edm": sample_edm, "flow": sample_flow}
SOLVER_SAMPLERS = {"edm": sample_edm_with_solver, "flow": sample_flow_with_solver}


# The options that move each objective's sampling levels: EDM's rho (eq. 5) and flow's shift (SD3 eq. 23).
LEVEL_OPTIONS = {"edm": "rho", "flow": "shift"}


def with_levels(name: str, objective: EDM | RectifiedFlow, **levels: float | None) -> EDM | RectifiedFlow:
    """The objective with its sampling levels moved: ``rho`` for edm, ``shift`` for flow (None: its own); both > 0."""
    for option, value in levels.items():
        if value is None:
            continue
        if option != LEVEL_OPTIONS[name]:
            raise ValueError(f"{option} does not apply to {name} models; they take {LEVEL_OPTIONS[name]}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{option} must be a finite number > 0, got {value}")
        objective = dataclasses.replace(objective, **{option: value})
    return objective


def sample_objective(name: str, objective: EDM | RectifiedFlow, sampler: str, network, noise_images: torch.Tensor,
                     steps: int | None = None, noise: ImageNoise | None = None, progress: bool = True,
                     rho: float | None = None, shift: float | None = None, **options) -> torch.Tensor:
    """Draw from a model of the continuous objective ``name`` (edm, flow) with ``sampler``: euler or heun (this
    file), or DPM-Solver++ / UniPC on the objective's path (objective_solvers.py); ``steps`` None: that sampler's
    default for the objective (config.OBJECTIVE_SAMPLERS). ``rho`` (edm) or ``shift`` (flow) moves the levels
    (``with_levels``)."""
    objective = with_levels(name, objective, rho=rho, shift=shift)
    if sampler not in OBJECTIVE_SAMPLERS[name]:
        raise ValueError(f"{sampler!r} is not a sampler of {name} models; choose one of "
                         f"{', '.join(OBJECTIVE_SAMPLERS[name])}")
    steps = steps or steps_for(name, sampler)
    if sampler in PATH_SOLVERS:
        return SOLVER_SAMPLERS[name](sampler, objective, network, noise_images, steps=steps, noise=noise,
                                     progress=progress, **options)
    return CONTINUOUS_SAMPLERS[name](objective, network, noise_images, steps=steps, heun=sampler == "heun",
                                     noise=noise, progress=progress, **options)
