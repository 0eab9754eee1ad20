"""The learning rate: ``train.lr`` times a factor that is a pure function of the step, re-based when a resumed run
changes ``train.steps``.

A new run warms up linearly to the full rate over ``warmup_steps``, then follows a cosine down to ``min_lr_ratio``
at ``train.steps``. The cosine's length is ``train.steps``, so resuming with another ``train.steps`` would make the
rate jump (a finished 50k-step run extended to 100k would go from 0.1 to about 0.55 of ``lr``). Instead the cosine
is re-based at the resume step: it starts from the factor the run had reached and ends at ``min_lr_ratio`` at the
new ``train.steps``. So an extended run continues smoothly: a finished run goes on at its final rate (the cosine from
``min_lr_ratio`` to ``min_lr_ratio`` is constant), a run stopped half-way decays over the new remainder. The
re-basing is kept in the checkpoint, so every later resume follows the same curve.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .config import TrainConfig


@dataclass(frozen=True)
class LearningRate:
    peak: float            # train.lr
    warmup_steps: int      # linear warm-up from 0 to peak
    min_ratio: float       # train.min_lr_ratio: the factor at the end
    end: int               # the step where the cosine reaches min_ratio (train.steps)
    decay_start: int       # the step where the cosine starts: warmup_steps, or the step a re-basing happened at
    start_factor: float = 1.0  # the factor at decay_start

    @classmethod
    def fresh(cls, t: TrainConfig) -> "LearningRate":
        return cls(t.lr, t.warmup_steps, t.min_lr_ratio, t.steps, t.warmup_steps)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.decay_start) / max(1, self.end - self.decay_start))
        return self.min_ratio + (self.start_factor - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def __call__(self, step: int) -> float:
        return self.peak * self.factor(step)

    def resumed(self, step: int, t: TrainConfig) -> "LearningRate":
        """This schedule for a run resuming at ``step`` with ``t``: its peak is ``t.lr`` (a run may lower it to get
        past a numerical fault), and a changed ``t.steps`` re-bases the cosine at ``step``."""
        same_end = replace(self, peak=t.lr)
        if t.steps == self.end:
            return same_end
        if step < self.warmup_steps:  # the cosine has not begun: it simply ends elsewhere
            return replace(same_end, end=t.steps)
        return replace(same_end, end=t.steps, decay_start=step, start_factor=self.factor(step))

    def state_dict(self) -> dict:
        return {"end": self.end, "decay_start": self.decay_start, "start_factor": self.start_factor}

    @classmethod
    def from_state(cls, state: dict, t: TrainConfig) -> "LearningRate":
        return cls(t.lr, t.warmup_steps, t.min_lr_ratio, int(state["end"]), int(state["decay_start"]),
                   float(state["start_factor"]))
