"""Numerical faults in training: a step whose loss or gradients are NaN or infinite changes nothing.

The check runs on the device, so it adds no host synchronisation to a step: the fused AdamW kernels take a
``found_inf`` flag and leave the weights, their moments and their step counters as they were when it is set (the
mechanism PyTorch's GradScaler uses), and the EMA update is weighted by the same flag. The counts are read back
only where the training loop reads anyway: at log steps and before writing a checkpoint.
"""
from __future__ import annotations

import torch

LIKELY_CAUSES = ("a learning rate too high (lower train.lr), fp16 overflow (use train.precision=bf16 or fp32), "
                 "or images with extreme values")


class NonFiniteLoss(Exception):
    """Raised by ``NonFiniteGuard.read`` when too many steps in a row were not finite; the loop turns it into a stop."""


class NonFiniteGuard:
    """Counts skipped steps on the device: skipped since the last read, the current run of skips in a row, and the
    longest run since the last read."""

    def __init__(self, device: torch.device, limit: int):
        self.limit = limit  # stop after this many non-finite steps in a row; 0 = never stop
        self.counts = torch.zeros(3, dtype=torch.int64, device=device)  # exact, and no float64 (MPS has none)

    def check(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """1.0 when this step's loss or gradient norm is NaN or infinite (the step must change nothing), else 0.0."""
        bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        skipped, in_a_row, longest = self.counts.unbind()
        in_a_row = (in_a_row + 1) * bad
        self.counts = torch.stack([skipped + bad, in_a_row, torch.maximum(longest, in_a_row)])
        return bad.float()  # the float32 flag fused AdamW takes as found_inf

    def read_interval(self, step: int) -> int:
        """The number of steps skipped since the last call (for the log); raises NonFiniteLoss once ``limit`` steps
        in a row were skipped."""
        skipped, in_a_row, longest = (int(v) for v in self.counts.tolist())
        self.counts = torch.stack([torch.zeros_like(self.counts[0]), self.counts[1], self.counts[1]])
        self._check(longest, step)
        return skipped

    def read_limit(self, step: int) -> None:
        """Raise NonFiniteLoss if ``limit`` steps in a row were skipped since the last ``read_interval``."""
        self._check(int(self.counts[2]), step)

    def _check(self, longest: int, step: int) -> None:
        if self.limit and longest >= self.limit:
            raise NonFiniteLoss(f"the loss or gradients were NaN or infinite in {longest} steps in a row (up to step "
                                f"{step}); those steps changed nothing. Likely causes: {LIKELY_CAUSES}")


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, skip: torch.Tensor) -> None:
    """One optimizer step that changes nothing where ``skip`` is 1.

    With fp16 the gradient scaler already skips steps with NaN or infinite gradients (exactly the steps ``skip``
    marks: the gradient norm is not finite precisely when a gradient is not). A fused AdamW takes the flag on the
    device; any other optimizer needs it read back first.
    """
    if scaler.is_enabled():
        scaler.step(optimizer)
        scaler.update()
    elif optimizer.defaults.get("fused"):
        optimizer.found_inf = skip
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not skip.item():
        optimizer.step()
