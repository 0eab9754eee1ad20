"""``distill``: the rounds of progressive or consistency distillation, each an ordinary training run of
``train.train``.

Progressive distillation halves the steps each round: round r trains a student of N_r = teacher_steps / 2^r steps
whose teacher is the previous round's student (round 1: the given model), starting from its teacher's weights
(Salimans & Ho 2022, Algorithm 2). Consistency distillation keeps the given model as the teacher of every round and
refines the grid of its targets instead: round r's targets take teacher steps of 1 / 2^r of a run, up to
teacher_steps, each round starting from the previous round's student (consistency.py). Either way each round runs in
its own directory ``round<r>_<N_r>steps`` and the last round's checkpoint is linked as ``final.pt``. Because every
round is a training run, it has the loop's checkpoints, resumption, fault tolerance, TensorBoard and torchrun
support; running the same call again skips the finished rounds and resumes the unfinished one.
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
# default) at a fraction of the teacher's peak learning rate, decaying to 0 as the paper's rounds do, no held-out
# loss or FD (their measure is the teacher's), a checkpoint every quarter of the round, and sample grids drawn with
# the student's own sampler. The fraction: a half for progressive distillation, whose targets are the teacher's; a
# twentieth for consistency distillation, whose targets are the student's own and move with every step. At a half,
# the mnist_cpu model's third consistency round (grid 8) took its 1-step FD from 1.54 to 9.53; at a twentieth
# (1e-4) to 1.23 (docs/fewstep.md).
LR_FRACTION = {"progressive": 1 / 2, "consistency": 1 / 20}

# A conditional teacher's guidance range that its student learns by default: w in [0, 2] holds the guidance of
# most uses (the judge's w = 1 among them) without spreading the student over weights nobody samples with.
DEFAULT_MAX_GUIDANCE = 2.0


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def plan_rounds(teacher_steps: int, steps: int) -> list[int]:
    """Progressive distillation's student steps of each round: teacher_steps / 2, / 4, ..., down to ``steps``."""
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


def plan_consistency_rounds(teacher_steps: int) -> list[int]:
    """Consistency distillation's grid of each round: 2, 4, ..., teacher_steps teacher steps per run."""
    if teacher_steps < 2 or not _is_power_of_two(teacher_steps):
        raise DdpmkitError(f"--teacher-steps {teacher_steps}: consistency distillation doubles its grid each round "
                           f"from 2, so it must be a power of two of at least 2 (e.g. {DISTILL_TEACHER_STEPS})")
    return [2**r for r in range(1, teacher_steps.bit_length())]


def teacher_config(teacher: str | Path) -> Config:
    """The config inside the teacher's checkpoint, after refusing in one line a teacher that cannot teach."""
    loaded = read_model(teacher)
    return config_from_dict(loaded.state["config"], source=f"the config inside teacher {loaded.name}")


def round_config(base: Config, distill_settings: dict, round_steps: int, overrides: list[str]) -> Config:
    """The config of one round's run: the teacher's, with the round's ``distill`` section (method, teacher, start,
    student_steps, teacher_steps, max_guidance), its train settings and the user's ``--set`` overrides on top."""
    cfg = config_from_dict(base.to_dict())
    t = cfg.train
    changes = {
        "distill": {"start": "", "max_guidance": 0.0, **distill_settings},
        "model": {"guidance_input": distill_settings.get("max_guidance", 0.0) > 0},
        "train": {"steps": round_steps, "lr": t.lr * LR_FRACTION[distill_settings["method"]],
                  "warmup_steps": max(1, round_steps // 20),
                  "min_lr_ratio": 0.0, "eval_every": 0, "fd_every": 0, "best_by": "heldout_loss",
                  "sample_every": 0, "checkpoint_every": max(1, round_steps // 4), "grid_sampler": "",
                  "grid_steps": distill_settings["student_steps"],
                  "log_every": max(1, min(t.log_every, round_steps // 10))},
    }
    merge_into(cfg, changes, "distill")
    merge_into(cfg, parse_set(overrides), "--set")
    return config_from_dict(cfg.to_dict())


def _rounds(method: str, teacher: str, base: Config, steps: int, teacher_steps: int | None,
            max_guidance: float) -> list[dict]:
    """Each round's distill settings, but for its teacher (progressive) or start (consistency): the previous
    round's student, which ``distill`` fills in as it goes."""
    if method == "consistency":
        if steps < 1:
            raise DdpmkitError(f"--steps {steps}: a student takes at least 1 step")
        return [{"method": method, "student_steps": steps, "teacher_steps": n, "max_guidance": max_guidance}
                for n in plan_consistency_rounds(teacher_steps or DISTILL_TEACHER_STEPS)]
    if base.distill.method:  # continue a progressive chain from the student's own steps
        if teacher_steps not in (None, base.distill.student_steps):
            raise DdpmkitError(f"--teacher-steps {teacher_steps}: {teacher} is a {base.distill.student_steps}-step "
                               f"student, so its rounds start from {base.distill.student_steps}")
        teacher_steps = base.distill.student_steps
        if max_guidance != base.distill.max_guidance:
            raise DdpmkitError(f"--max-guidance {max_guidance:g}: {teacher} learned guidance up to "
                               f"{base.distill.max_guidance:g}; its chain continues with --max-guidance "
                               f"{base.distill.max_guidance:g}")
    return [{"method": method, "student_steps": n, "teacher_steps": 2 * n, "max_guidance": max_guidance}
            for n in plan_rounds(teacher_steps or DISTILL_TEACHER_STEPS, steps)]


def distill(teacher: str | Path, run_dir: str | Path, *, method: str = "progressive", steps: int = 4,
            teacher_steps: int | None = None, round_steps: int = DISTILL_ROUND_STEPS,
            max_guidance: float | None = None, overrides: list[str] | None = None, progress: bool = True) -> Path:
    """Distil ``teacher`` (anything --checkpoint reads) into a student that samples in ``steps`` steps, writing the
    rounds into ``run_dir``; returns the final student's checkpoint (``run_dir/final.pt``).

    method:        progressive (K a power of two; a progressive student continues its chain) or consistency (any K:
                   its sampling default, since a consistency student samples in any number of steps)
    teacher_steps: the teacher's DDIM steps that progressive's round 1 halves, or that consistency's last round's
                   targets take (default DISTILL_TEACHER_STEPS; a progressive student continues from its own steps)
    round_steps:   optimizer steps per round
    max_guidance:  a conditional teacher's guidance range [0, max_guidance], learnt by a student that takes w as
                   input (None: DEFAULT_MAX_GUIDANCE for a conditional teacher, 0 otherwise; 0: the plain
                   conditional model, guided afterwards as any model is, with two evaluations per step)
    overrides:     ``section.key=value`` changes of each round's config, e.g. ``train.lr=1e-4``
    """
    from ..train import train  # train imports this package's teacher loss

    if method not in DISTILL_METHODS:
        raise DdpmkitError(f"--method {method!r}: choose one of {', '.join(DISTILL_METHODS)}")
    if round_steps < 1:
        raise DdpmkitError(f"--round-steps must be at least 1, got {round_steps}")
    if max_guidance is not None and not max_guidance >= 0:
        raise DdpmkitError(f"--max-guidance must be >= 0, got {max_guidance}")
    base = teacher_config(teacher)
    if base.distill.method and (base.distill.method != method or method == "consistency"):
        raise DdpmkitError(f"{teacher} is a {base.distill.method} student; it cannot be the teacher of {method} "
                           f"distillation: pass its teacher ({base.distill.teacher}) instead")
    conditional = base.model.class_conditional
    if max_guidance and not conditional:
        raise DdpmkitError(f"--max-guidance {max_guidance:g}: {teacher} is unconditional; guidance needs a "
                           f"conditional teacher")
    if max_guidance is None:
        max_guidance = base.distill.max_guidance if base.distill.method else DEFAULT_MAX_GUIDANCE * conditional
    rounds = _rounds(method, teacher, base, steps, teacher_steps, max_guidance)
    run_dir = Path(run_dir)
    given = str(Path(teacher).resolve()) if Path(teacher).exists() else str(teacher)
    current, log = given, []
    for number, settings in enumerate(rounds, 1):
        if method == "progressive":  # each round's teacher: the previous round's student
            settings, name = {**settings, "teacher": current}, f"round{number}_{settings['student_steps']}steps"
        else:  # the given teacher throughout; each round starts from the previous round's student
            settings = {**settings, "teacher": given, "start": "" if current == given else current}
            name = f"round{number}_grid{settings['teacher_steps']}"
        cfg = round_config(base, settings, round_steps, overrides or [])
        start = time.perf_counter()
        final = train(cfg, run_dir / name, progress=progress)
        log.append({"round": number, **settings, "seconds": round(time.perf_counter() - start, 1),
                    "checkpoint": str(final)})
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
