"""The editing sampler: DDPM/DDIM steps on any Gaussian path that keep known pixels, with RePaint's resampling.

One loop serves three uses:

    replacement   at each step the known pixels become the original noised to the new level (the baseline of
                  Lugmayr et al. 2022, §4.1; Song et al. 2021's "replacement"): ``jump_n_sample = 1``
    RePaint       the same, plus resampling (Lugmayr et al. 2022, Algorithm 1 and §4.2): every ``jump_length`` steps
                  the image is noised back ``jump_length`` steps and denoised again, ``jump_n_sample - 1`` times,
                  so that the generated part has time to agree with the known part
    SDEdit        no known pixels; the run starts part-way (Meng et al. 2022): the image noised to that level

A run of N steps visits the path's fractions u = k/N, k = 0..N (paths.py: 0 is pure noise, 1 the image); the
state at position k is x at u = k/N. A step from k to k + 1 is DDIM's (Song et al. 2020, eq. 12) with noise
eta: eta = 1 is DDPM's ancestral step (its posterior variance), eta = 0 deterministic. A jump from k to k - 1 draws
from the forward process q(x_{k-1} | x_k) (RePaint eq. 8 on the respaced levels). For a ddpm model with N = T this
is exactly diffusers' RePaintScheduler and RePaintPipeline (a test checks it).

Multistep solvers (DPM-Solver++, UniPC) and Heun are not offered: each step there reuses earlier network outputs
along one smooth trajectory, which replacing pixels, and jumping back, breaks.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..samplers import ImageNoise
from ..paths import GaussianPath, column, on_path


def repaint_positions(steps: int, jump_length: int = 1, jump_n_sample: int = 1, start: int = 0) -> list[int]:
    """The positions a run visits, from ``start`` to ``steps`` (the image), one step at a time: up is a denoising
    step, down is a jump back. RePaint's schedule (their code's ``get_schedule_jump``, as diffusers'
    RePaintScheduler.set_timesteps): on reaching a position k with ``steps - k`` a multiple of ``jump_length`` and
    k - jump_length > start, go back ``jump_length`` positions and come up again, ``jump_n_sample - 1`` times."""
    if not 0 <= start < steps:
        raise ValueError(f"start must be in [0, {steps}), got {start}")
    positions, k, jumps = [start], start, {}
    while k < steps:
        k += 1
        positions.append(k)
        if (steps - k) % jump_length == 0 and k - jump_length > start and jumps.get(k, 0) < jump_n_sample - 1:
            jumps[k] = jumps.get(k, 0) + 1
            for _ in range(jump_length):
                k -= 1
                positions.append(k)
    return positions


def count_evaluations(positions: list[int]) -> int:
    """Network evaluations of a run: one per step up."""
    return sum(b > a for a, b in zip(positions, positions[1:]))


def noise_back(x: torch.Tensor, here: tuple[torch.Tensor, torch.Tensor], there: tuple[torch.Tensor, torch.Tensor],
               z: torch.Tensor) -> torch.Tensor:
    """A draw of the forward process from a lower noise level to a higher one: x_there = (a_there / a_here) x +
    sqrt(s_there^2 - (a_there / a_here)^2 s_here^2) z (RePaint eq. 8 over several steps; any Gaussian path)."""
    (a, s), (a2, s2) = here, there
    ratio = a2 / a
    return column(ratio, x) * x + column((s2**2 - ratio**2 * s**2).clamp(min=0).sqrt(), x) * z


def denoise_step(x: torch.Tensor, x0: torch.Tensor, here: tuple[torch.Tensor, torch.Tensor],
                 there: tuple[torch.Tensor, torch.Tensor], eta: float, z: torch.Tensor) -> torch.Tensor:
    """DDIM's step with noise eta (Song et al. 2020, eq. 12 and 16) on any Gaussian path: c = eta sigma_there
    sqrt(1 - (a_here s_there / (a_there s_here))^2) is the posterior standard deviation of DDPM at eta = 1;
    x_there = a_there x0 + sqrt(s_there^2 - c^2) eps + c z, with eps the noise x implies."""
    (a, s), (a2, s2) = here, there
    c = eta * s2 * (1 - (a * s2 / (a2 * s)) ** 2).clamp(min=0).sqrt()
    eps = (x - column(a, x) * x0) / column(s, x)
    return column(a2, x) * x0 + column((s2**2 - c**2).clamp(min=0).sqrt(), x) * eps + column(c, x) * z


def edit_sample(path: GaussianPath, network, x: torch.Tensor, *, steps: int, noise: ImageNoise,
                known: torch.Tensor | None = None, mask: torch.Tensor | None = None, start: int = 0,
                jump_length: int = 1, jump_n_sample: int = 1, eta: float = 1.0,
                clip_range: tuple[float, float] | None = None, progress: bool = True) -> torch.Tensor:
    """Run the editing sampler from ``x`` (the state at position ``start`` of ``steps``) to the image.

    known, mask: the original images in the model's range and (N, 1, H, W) masks, 1 = generate; None for SDEdit.
    network(x, level) has labels and guidance bound in. Returns x_0 in the model's range; where mask is 0 it is
    ``known`` exactly."""
    positions = repaint_positions(steps, jump_length, jump_n_sample, start)
    level = lambda k: tuple(v.to(x.device) for v in path.alpha_sigma(k / steps))  # noqa: E731
    bar = tqdm(total=count_evaluations(positions), desc="editing", unit="step", disable=not progress, leave=False)
    for k, k_next in zip(positions, positions[1:]):
        here, there = level(k), level(k_next)
        z = noise.randn(x.shape, x.device)
        if k_next < k:  # RePaint's jump back: one draw of the forward process
            x = noise_back(x, here, there, z)
            continue
        u = torch.full((x.shape[0],), k / steps, dtype=torch.float64, device=x.device)
        x0 = path.predict_x0(network, x, u)
        if clip_range is not None:
            x0 = x0.clamp(*clip_range)
        x = denoise_step(x, x0, here, there, eta, z)
        if known is not None:  # Lugmayr et al. 2022, Algorithm 1 lines 5-6: the known part noised to the new level
            x = torch.where(mask > 0.5, x, on_path(known, z, there))
        bar.update()
    bar.close()
    return x
