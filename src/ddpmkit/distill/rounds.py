"""``distill``: the rounds of progressive distillation, each an ordinary training run of ``train.train``.

Round r trains a student of N_r = teacher_steps / 2^r steps from the previous round's student (round 1: from the
given model), initialised with its teacher's weights (Salimans & Ho 2022, Algorithm 2), in its own run directory
``round<r>_<N_r>steps``; the last round's checkpoint is linked as ``final.pt``. Because every round is a training run,
it has the loop's checkpoints, resumption, fault tolerance, TensorBoard and torchrun support; running the same call
again skips the finished rounds and resumes the unfinished one.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from .. import distributed
from ..checkpoint import link_checkpoint
from ..config import (DISTILL_METHODS, DISTILL_ROUND_STEPS, DISTILL_TEACHER_STEPS, Config, config_from_dict,
                      merge_into, parse_set)
from ..errors import DdpmkitError
from ..files import write_json
from ..formats import read_model

# What a round changes in the teacher's training settings (round_config): a short run (DISTILL_ROUND_STEPS by
# default) at half the teacher's peak learning rate, decaying to 0 as the paper's rounds do, no held-out loss or FD
# (their measure is the teacher's), a checkpoint every quarter of the round, and sample grids drawn with the
# student's own sampler.


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def plan_rounds(teacher_steps: int, steps: int) -> list[int]:
    """The student steps of each round: teacher_steps / 2, / 4, ..., down to ``steps``."""
    if not _is_power_of_two(steps):
        raise DdpmkitError(f"--steps {steps}: progressive distillation halves the steps each round, so the student's "
                           f"steps must be a power of two (1, 2, 4, 8, ...)")
    if teacher_steps <= steps or teacher_steps % steps or not _is_power_of_two(teacher_steps // steps):
        raise DdpmkitError(f"--teacher-steps {teacher_steps}: must be {steps} times a power of two above 1 (e.g. "
                           f"{steps * 8}), so that halving it reaches --steps {steps}")
    rounds, n = [], teacher_steps
    while n > steps:
        n //= 2
        rounds.append(n)
    return rounds


def teacher_config(teacher: str | Path) -> Config:
    """The config inside the teacher's checkpoint, after refusing in one line a teacher that cannot teach."""
    loaded = read_model(teacher)
    return config_from_dict(loaded.state["config"], source=f"the config inside teacher {loaded.name}")


def round_config(base: Config, teacher: str, student_steps: int, round_steps: int, guidance: float,
                 overrides: list[str]) -> Config:
    """The config of one round's run: the teacher's, with the round's distill and train settings and the user's
    ``--set`` overrides on top."""
    cfg = config_from_dict(base.to_dict())
    t = cfg.train
    changes = {
        "distill": {"method": "progressive", "teacher": teacher, "student_steps": student_steps,
                    "teacher_guidance": guidance},
        "train": {"steps": round_steps, "lr": t.lr / 2, "warmup_steps": max(1, round_steps // 20),
                  "min_lr_ratio": 0.0, "eval_every": 0, "fd_every": 0, "best_by": "heldout_loss",
                  "sample_every": 0, "checkpoint_every": max(1, round_steps // 4), "grid_sampler": "",
                  "grid_steps": student_steps, "log_every": max(1, min(t.log_every, round_steps // 10))},
    }
    merge_into(cfg, changes, "distill")
    merge_into(cfg, parse_set(overrides), "--set")
    return config_from_dict(cfg.to_dict())


def distill(teacher: str | Path, run_dir: str | Path, *, method: str = "progressive", steps: int = 4,
            teacher_steps: int | None = None, round_steps: int = DISTILL_ROUND_STEPS, guidance: float = 0.0,
            overrides: list[str] | None = None, progress: bool = True) -> Path:
    """Distil ``teacher`` (anything --checkpoint reads) into a student that samples in ``steps`` steps, writing the
    rounds into ``run_dir``; returns the final student's checkpoint (``run_dir/final.pt``).

    teacher_steps: the teacher's DDIM steps that round 1 halves (default DISTILL_TEACHER_STEPS, or a progressive
                   student's own steps, whose distillation this continues)
    round_steps:   optimizer steps per round
    guidance:      a conditional teacher's guidance w in its targets (0: the plain conditional model)
    overrides:     ``section.key=value`` changes of each round's config, e.g. ``train.lr=1e-4``
    """
    from ..train import train  # train imports this package's teacher loss

    if method not in DISTILL_METHODS:
        raise DdpmkitError(f"--method {method!r}: choose one of {', '.join(DISTILL_METHODS)}")
    if round_steps < 1:
        raise DdpmkitError(f"--round-steps must be at least 1, got {round_steps}")
    if guidance < 0:
        raise DdpmkitError(f"--guidance must be >= 0, got {guidance}")
    base = teacher_config(teacher)
    if base.distill.method and base.distill.method != method:
        raise DdpmkitError(f"{teacher} is a {base.distill.method} student; it cannot be the teacher of {method} "
                           f"distillation: pass its teacher ({base.distill.teacher}) instead")
    if base.distill.method:  # continue a progressive chain from the student's own steps
        if teacher_steps not in (None, base.distill.student_steps):
            raise DdpmkitError(f"--teacher-steps {teacher_steps}: {teacher} is a {base.distill.student_steps}-step "
                               f"student, so its rounds start from {base.distill.student_steps}")
        teacher_steps = base.distill.student_steps
    rounds = plan_rounds(teacher_steps or DISTILL_TEACHER_STEPS, steps)
    if guidance and not base.model.class_conditional:
        raise DdpmkitError(f"--guidance {guidance}: {teacher} is unconditional; guidance needs a conditional teacher")
    run_dir = Path(run_dir)
    current, log = str(Path(teacher).resolve()) if Path(teacher).exists() else str(teacher), []
    for number, student_steps in enumerate(rounds, 1):
        cfg = round_config(base, current, student_steps, round_steps, guidance, overrides or [])
        start = time.perf_counter()
        final = train(cfg, run_dir / f"round{number}_{student_steps}steps", progress=progress)
        log.append({"round": number, "student_steps": student_steps, "teacher": current,
                    "seconds": round(time.perf_counter() - start, 1), "checkpoint": str(final)})
        if final.name != "final.pt":  # stopped before the round's end (an interrupted run returns latest.pt)
            return final
        current = str(final.resolve())
    if distributed.is_main():
        link_checkpoint(Path(current), run_dir / "final.pt")
        _record(run_dir / "distill.json", log)
    distributed.barrier()
    return run_dir / "final.pt"


def _record(path: Path, rounds: list[dict]) -> None:
    """Append this call's rounds to ``distill.json`` (a resumed call adds the rounds it ran)."""
    previous = json.loads(path.read_text())["calls"] if path.is_file() else []
    write_json(path, {"calls": [*previous, rounds]})
