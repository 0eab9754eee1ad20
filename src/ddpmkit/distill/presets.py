"""Named settings of ``ddpmkit distill --preset``: what to distil into, and how long, for a budget.

Each preset gives ``distill``'s arguments (method, steps, teacher_steps, round_steps, max_guidance) and ``set``:
``--set`` overrides of every round's config. Arguments given on the command line win over the preset's.
"""
from __future__ import annotations

from typing import Any

DISTILL_PRESETS: dict[str, dict[str, Any]] = {
    # The quick model (2-core CPU, ~145 s of training) to 4 steps in about its training time: progressive, from 8
    # teacher steps, one round. docs/fewstep.md has its table against the other settings tried.
    "cpu_4step": {"method": "progressive", "steps": 4, "teacher_steps": 8, "round_steps": 400},
    # ... and to 1 step: the same start, three rounds (8 -> 4 -> 2 -> 1).
    "cpu_1step": {"method": "progressive", "steps": 1, "teacher_steps": 8, "round_steps": 400},
    # The CIFAR-10 model (presets ddpm-cifar10 and cifar10) on one GPU, to 4 steps: six rounds from 256 teacher
    # steps (Salimans & Ho 2022 start from up to 8192), 20k optimizer steps each at the teacher's batch of 128, in
    # bf16: 120k steps, under a sixth of the teacher's 800k. Not measured: this project's machine has no GPU
    # (docs/fewstep.md).
    "cifar10_gpu": {"method": "progressive", "steps": 4, "teacher_steps": 256, "round_steps": 20_000,
                    "set": ["train.batch_size=128", "train.precision=bf16"]},
}
