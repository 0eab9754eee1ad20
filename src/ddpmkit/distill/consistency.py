"""Consistency distillation (Song et al. 2023, Algorithm 2), in the form of its later refinements: the student learns
to map every point of its teacher's deterministic trajectories to the trajectory's end, so one evaluation from pure
noise draws an image, and a few more, with fresh noise in between, refine it (multistep consistency sampling).

On an N-step grid of the fraction u of a run (paths.py), for data x and noise eps at u_n = n / N:

    z_n       = alpha_n x + sigma_n eps
    z^_{n+1}  = the teacher's DDIM step from z_n to u_{n+1} (guided with w: Luo et al. 2023's guided targets)
    target    = f_theta-(z^_{n+1}, u_{n+1}), or z^_N itself where u_{n+1} = 1 (the trajectory's end: the data side)
    loss      = d(f_theta(z_n, u_n), target)

The consistency function f is the student's x_0 prediction (each objective's own parametrisation), which meets the
boundary condition f(x, u = 1) = x by construction (sigma = 0 there). theta- is theta without gradients, not an EMA of
it (Song & Dhariwal 2023, "iCT", §3.2; Geng et al. 2024, "ECT", do the same), and d is iCT's pseudo-Huber distance
sqrt(||a - b||^2 + c^2) - c with c = 0.00054 sqrt(d) (iCT §3.3), weighted alike at every n (lambda = 1, as in Song et
al.'s distillation runs). The rounds of ``distill`` double N from 2 up to the teacher's steps, each starting from the
previous round's student: ECT's schedule of ever finer steps, starting where the student is the teacher's denoiser.
"""
from __future__ import annotations

import math

import torch

from ..paths import GaussianPath, column, ddim_step, grid_draw, on_path, with_guidance


def pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """iCT's distance per image: sqrt(||a - b||^2 + c^2) - c, c = 0.00054 sqrt(number of values per image)."""
    c = 0.00054 * math.sqrt(a[0].numel())
    return torch.sqrt((a - b).square().flatten(1).sum(1) + c**2) - c


class ConsistencyLoss:
    """The loss of one round on the teacher's ``teacher_steps``-step grid, with the signature of the training loop's
    losses: ``(network, schedule, x0, t, u, noise, y) -> loss``. ``u`` (one per image) picks each image's grid step
    n = floor(u N) (and a guidance-distilled student's w: paths.grid_draw); ``t`` is not used.

    ``teacher_x0(z, u, y, w)``: the teacher's x_0 prediction, guided with the per-image w (None: unguided).
    ``max_guidance`` > 0: the student takes w, drawn uniformly from [0, max_guidance], as input.
    """

    def __init__(self, path: GaussianPath, teacher_x0, teacher_steps: int, max_guidance: float = 0.0):
        if teacher_steps < 1:
            raise ValueError(f"teacher_steps must be at least 1, got {teacher_steps}")
        self.path, self.teacher_x0, self.teacher_steps = path, teacher_x0, teacher_steps
        self.max_guidance = max_guidance

    @torch.no_grad()
    def target(self, student, z_n: torch.Tensor, step: torch.Tensor, y: torch.Tensor | None,
               guidance: torch.Tensor | None = None) -> torch.Tensor:
        """The student's own x_0 prediction (without gradients) one teacher DDIM step further along, or at the
        grid's last step the teacher's step itself, which lands on x_0."""
        here, there = step / self.teacher_steps, (step + 1) / self.teacher_steps
        z_next = ddim_step(z_n, self.teacher_x0(z_n, here, y, guidance), self.path.alpha_sigma(here),
                           self.path.alpha_sigma(there))
        ahead = self.path.predict_x0(student, z_next, there.clamp(max=1), y).float()
        return torch.where(column(there >= 1, z_next).bool(), z_next, ahead)

    def __call__(self, network, schedule, x0: torch.Tensor, t: torch.Tensor, u: torch.Tensor, noise: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        step, guidance = grid_draw(u, self.teacher_steps, self.max_guidance, y)
        student = with_guidance(network, guidance)
        here = step / self.teacher_steps
        z_n = on_path(x0.float(), noise.float(), self.path.alpha_sigma(here))
        target = self.target(student, z_n, step, y, guidance)
        predicted = self.path.predict_x0(student, z_n, here, y).float()
        return pseudo_huber(predicted, target).mean()
