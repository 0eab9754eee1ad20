"""What a training run tells as it goes: ``log.jsonl``, TensorBoard, the progress bar and resource use.

Rank 0 alone writes and shows; on the other ranks every method does nothing but keep the interval's sums, so the
loop calls the same methods everywhere. The training loss is summed on the device and read back only once per
``log_every`` steps, so logging adds no host synchronisation to the other steps.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from .config import Config
from .resources import ResourceMonitor
from .run_log import RunLog
from .tensorboard_hparams import end_session, start_session
from .viz import plot_loss_curve


class _Silent:
    """What a rank other than 0 has in place of the log and the TensorBoard writer."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class TrainingReport:
    def __init__(self, cfg: Config, run_dir: Path, step: int, device: torch.device, main: bool, progress: bool):
        self.cfg, self.run_dir, self.main = cfg, run_dir, main
        self.log = RunLog(run_dir / "log.jsonl", resume_step=step) if main else _Silent()
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=step or None) if main else _Silent()
        if main:
            start_session(self.writer, cfg)  # the HParams tab: the config, and the last value of each scalar
        self.monitor = ResourceMonitor(device)
        self.bar = tqdm(total=cfg.train.steps, initial=step, desc="train", unit="step", disable=not (progress and main),
                        dynamic_ncols=True)
        self.loss_sum = torch.zeros((), device=device)  # the interval's finite losses, summed on the device
        self.interval_start, self.interval_steps = time.perf_counter(), 0

    def say(self, message: str) -> None:
        """A line on stderr that leaves the progress bar whole."""
        if self.main:
            tqdm.write(message, file=sys.stderr)

    def step_done(self, step: int, loss: torch.Tensor, skip: torch.Tensor, lr: float, grad_norm: torch.Tensor,
                  guard, last: bool) -> None:
        """Count a finished step; every ``log_every`` steps (and at ``last``) write the interval's record."""
        self.loss_sum += torch.where(skip.bool(), 0.0, loss)
        self.interval_steps += 1
        self.bar.update(1)
        if step % self.cfg.train.log_every and not last:
            return
        elapsed = time.perf_counter() - self.interval_start
        skipped = guard.read_interval(step)
        finite_steps = self.interval_steps - skipped
        record = {"step": step, "loss": self.loss_sum.item() / finite_steps if finite_steps else None, "lr": lr,
                  "grad_norm": float(grad_norm), "skipped_steps": skipped,
                  "images_per_s": self.interval_steps * self.cfg.train.batch_size / elapsed}
        resources = self.monitor.read()
        self.log.write({**record, **resources})
        for key in ("loss", "lr", "grad_norm", "images_per_s", "skipped_steps"):
            if record[key] is not None:
                self.writer.add_scalar(f"train/{key}", record[key], step)
        for key, value in resources.items():
            self.writer.add_scalar(f"resources/{key}", value, step)
        self.bar.set_postfix(loss=f"{record['loss'] or math.nan:.4f}", img_s=f"{record['images_per_s']:.0f}",
                             **({"skipped": skipped} if skipped else {}))
        self.loss_sum.zero_()
        self.interval_start, self.interval_steps = time.perf_counter(), 0

    @contextlib.contextmanager
    def not_timed(self):
        """Evaluation, grids and checkpoints don't count against images/s."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.interval_start += time.perf_counter() - start

    def evaluation(self, step: int, name: str, value: float, **details) -> None:
        """An evaluation's value: a log record (with ``details``) and the TensorBoard scalar ``eval/<name>_ema``."""
        self.log.write({"step": step, name: value, **details})
        self.writer.add_scalar(f"eval/{name}_ema", value, step)

    def close(self, finished: bool) -> None:
        self.bar.close()
        if finished:
            end_session(self.writer)  # the HParams tab: finished
        self.writer.close()
        self.log.close()
        if self.main:
            with contextlib.suppress(OSError):  # a full disk must not hide why the run stopped behind a plot error
                plot_loss_curve(self.run_dir / "log.jsonl", self.run_dir / "loss.png")
