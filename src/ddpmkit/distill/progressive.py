"""Progressive distillation (Salimans & Ho 2022, Algorithm 2): a student learns to take in one step what its teacher
takes in two DDIM steps, so each round halves the steps a model needs.

For data x and noise eps at the fraction u = i / N of an N-step run (paths.py), with z_t = alpha_t x + sigma_t eps,
the teacher takes two deterministic steps, to u' = (i + 1/2) / N and u'' = (i + 1) / N. The single DDIM step of the
student from z_t lands on the teacher's z_t'' exactly when its x_0 prediction is (the paper's eq. 8)

    x~ = (z_t'' - (sigma_t'' / sigma_t) z_t) / (alpha_t'' - (sigma_t'' / sigma_t) alpha_t),

and the student is trained on ||x~ - x_0(z_t)||^2 with the truncated-SNR weight max(alpha_t^2 / sigma_t^2, 1) (§4:
the x_0 error where the signal dominates, the eps error where the noise does), whatever its parametrisation
predicts: eps, x0 or v for ddpm models, the velocity for flow models, EDM's preconditioned D.
"""
from __future__ import annotations

import torch

from ..paths import GaussianPath, column, ddim_step, grid_draw, on_path, with_guidance


def two_step_target(z_t: torch.Tensor, z_end: torch.Tensor, here: tuple[torch.Tensor, torch.Tensor],
                    end: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Eq. 8: the x_0 with which one DDIM step from z_t (at ``here`` = (alpha, sigma)) lands on z_end (at ``end``)."""
    (a, s), (a2, s2) = [(column(p, z_t), column(q, z_t)) for p, q in (here, end)]
    ratio = s2 / s
    return (z_end - ratio * z_t) / (a2 - ratio * a)


def truncated_snr_weight(alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """max(SNR, 1) = max(alpha^2 / sigma^2, 1) per image (Salimans & Ho 2022, §4, "truncated SNR weighting")."""
    return torch.clamp(alpha**2 / sigma**2, min=1.0)


class ProgressiveLoss:
    """The loss of one round, with the signature of the training loop's losses
    (``losses.training_loss``): ``(network, schedule, x0, t, u, noise, y) -> loss``. ``u`` (uniform in (0, 1), one
    per image) picks each image's step i = floor(u N) of the student's N (and, for a guidance-distilled student, its
    w: paths.grid_draw); ``t`` is not used.

    ``teacher_x0(z, u, y, w)``: the teacher's x_0 prediction, guided with the per-image w (None: unguided), called
    without gradients. ``max_guidance`` > 0: the student takes w, drawn uniformly from [0, max_guidance], as input.
    """

    def __init__(self, path: GaussianPath, teacher_x0, student_steps: int, max_guidance: float = 0.0):
        if student_steps < 1:
            raise ValueError(f"student_steps must be at least 1, got {student_steps}")
        self.path, self.teacher_x0, self.student_steps = path, teacher_x0, student_steps
        self.max_guidance = max_guidance

    @torch.no_grad()
    def target(self, z_t: torch.Tensor, step: torch.Tensor, y: torch.Tensor | None,
               guidance: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's two DDIM steps from z_t at the student's steps ``step`` (B,), as eq. 8's x_0."""
        n = self.student_steps
        fractions = [(step + k / 2) / n for k in (0, 1, 2)]  # u, u', u''
        points = [self.path.alpha_sigma(f) for f in fractions]
        z_mid = ddim_step(z_t, self.teacher_x0(z_t, fractions[0], y, guidance), points[0], points[1])
        z_end = ddim_step(z_mid, self.teacher_x0(z_mid, fractions[1], y, guidance), points[1], points[2])
        return two_step_target(z_t, z_end, points[0], points[2])

    def __call__(self, network, schedule, x0: torch.Tensor, t: torch.Tensor, u: torch.Tensor, noise: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        step, guidance = grid_draw(u, self.student_steps, self.max_guidance, y)
        here = step / self.student_steps
        alpha, sigma = self.path.alpha_sigma(here)
        z_t = on_path(x0.float(), noise.float(), (alpha, sigma))
        target = self.target(z_t, step, y, guidance)
        predicted = self.path.predict_x0(with_guidance(network, guidance), z_t, here, y).float()
        per_image = (predicted - target).square().flatten(1).mean(1)
        return (truncated_snr_weight(alpha, sigma).to(per_image) * per_image).mean()
