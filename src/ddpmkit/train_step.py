"""One optimizer step over the global batch (DDPM Algorithm 1, lines 2-5, for a batch): its micro-batches' losses and
gradients, the non-finite guard, the optimizer and the EMA, without the host waiting for the device."""
from __future__ import annotations

import math

import torch

from . import distributed
from .build import autocast
from .config import Config
from .data import to_model_range
from .global_batch import BatchSplit, StepRandomness, step_seed
from .guidance import drop_labels
from .losses import training_loss
from .nonfinite import NonFiniteGuard, optimizer_step
from .train_state import TrainingState


class OptimizerStep:
    def __init__(self, cfg: Config, state: TrainingState, replicated, network, schedule, split: BatchSplit,
                 device: torch.device, loss=None):
        """``replicated``: the model under DDP (or the model itself); ``network``: what runs it (compiled or not);
        ``loss``: ``(network, schedule, x0, t, u, noise, y) -> loss``, default the config's objective's
        (``losses.training_loss``; a distillation run passes its teacher's)."""
        self.cfg, self.state, self.schedule, self.split = cfg, state, schedule, split
        self.replicated, self.network = replicated, network
        self.rank = distributed.rank()
        spec = state.model.spec
        self.image_shape = (spec.image_channels, spec.image_size, spec.image_size)
        self.label_dropout = cfg.diffusion.label_dropout if spec.num_classes else None
        self.null_label = spec.num_classes
        self.loss = loss or training_loss(cfg.diffusion)
        self.noise_gen = torch.Generator(device=device)  # reseeded from (seed, step, block): see global_batch.py
        self.guard = NonFiniteGuard(device, cfg.train.max_nonfinite_steps)
        self.device = device

    def __call__(self, batches) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """Step ``state.step`` on the next micro-batches of ``batches``; returns the global batch's loss, the
        gradient norm, whether the step was skipped as non-finite (all on the device) and the learning rate."""
        t, state = self.cfg.train, self.state
        lr = state.lr(state.step)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        if self.cfg.model.dropout:  # dropout masks: this process's own, seeded by (seed, step, rank)
            torch.manual_seed(step_seed(t.seed, state.step, f"dropout/{self.rank}"))
        step_loss = torch.zeros((), device=self.device)
        for micro in range(t.grad_accum):
            images, labels = next(batches)
            mine = StepRandomness.draw(self.noise_gen, t.seed, state.step, self.split.part(self.rank, micro),
                                       self.image_shape, self.schedule.num_timesteps, self.cfg.data.hflip,
                                       self.label_dropout)  # this micro-batch's numbers only
            step_loss += self._micro_batch(images, labels, mine, last=micro == t.grad_accum - 1)
        distributed.mean_over_ranks_(step_loss)  # the global batch's loss, the same on every process
        state.scaler.unscale_(state.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), t.grad_clip or math.inf)
        skip = self.guard.check(step_loss, grad_norm)  # a NaN or inf step changes neither weights nor EMA
        optimizer_step(state.optimizer, state.scaler, skip)
        state.optimizer.zero_grad(set_to_none=True)
        state.ema.update(state.model, skip)
        state.step += 1
        return step_loss, grad_norm, skip, lr

    def _micro_batch(self, images, labels, mine: StepRandomness, last: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch; its share of the step's loss, detached."""
        accum = self.cfg.train.grad_accum
        x0 = to_model_range(images, self.cfg.data.zero_one)
        if self.cfg.train.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        if mine.flips is not None:
            x0 = torch.where(mine.flips[:, None, None, None], x0.flip(3), x0)
        y = drop_labels(labels, mine.drops, self.null_label) if self.null_label else None
        with distributed.no_sync(self.replicated, last=last):  # the last micro-batch's backward all-reduces
            with autocast(self.device, self.cfg.train.precision):
                loss = self.loss(self.network, self.schedule, x0, mine.t, mine.u, mine.noise, y)
            self.state.scaler.scale(loss / accum).backward()
        return loss.detach() / accum
