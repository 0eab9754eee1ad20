"""Few-step students against their teacher: quality, speed and the cost of distilling (issue #26, docs/fewstep.md).

Run by hand (not a test), e.g. on the README's quick model:

    python benchmarks/fewstep_quality.py --teacher runs/quick --work runs/fewstep/quick \
        --json docs/fewstep/quick_cpu.json --steps 4,2,1 --guidance 1

It distils the teacher with ``ddpmkit.distill``: progressively to the largest of ``--steps``, then continuing that
student's chain to each smaller count (so the 1-step student's cost includes the 4-step one's), and once by
consistency distillation (one student samples every count); each call is timed, and a student already in the work
folder is reused. Then it scores, each through ``ddpmkit.evaluate`` on ``--samples`` images (100 per class,
image i from seed i): the teacher with its default sampler at ``--guidance`` (two evaluations per step when guided),
and with it at the largest student's evaluations (what distillation has to beat),
the teacher with the deterministic sampler the students were distilled from (DDIM for ddpm models, Euler for flow
and edm) at ``--teacher-steps``, DDPM's 1,000 steps for a ddpm teacher, and each student with its own sampler
(a student distilled with guidance as input takes w in one evaluation per step). Images per second are timed on their
own, ``--speed-images`` images after one warm-up batch. Each row goes to the JSON as soon as it is measured and rows
already there are skipped. ``--grid`` writes the first seeds of every class for each system, side by side.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

from ddpmkit.config import DISTILL_ROUND_STEPS, DISTILL_TEACHER_STEPS
from ddpmkit.distill.rounds import distill
from ddpmkit.evaluate import evaluate
from ddpmkit.files import write_json
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.viz import save_labelled_grid

DETERMINISTIC = {"ddpm": "ddim", "flow": "euler", "edm": "euler"}  # the teacher steps distillation starts from


def read_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def save_rows(path: Path, rows: list[dict], args: argparse.Namespace) -> None:
    write_json(path, {"rows": rows, "command": " ".join(["python", "benchmarks/fewstep_quality.py", *args.argv]),
                      "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "date": datetime.date.today().isoformat()})


def _distill_timed(run: Path, teacher: str, args: argparse.Namespace, **options) -> float:
    """Distil into ``run`` (reused when its timing is there); the seconds it took."""
    timing = run / "fewstep_timing.json"
    if not timing.is_file():
        start = time.perf_counter()
        distill(teacher, run, round_steps=args.round_steps, overrides=args.set, progress=False, **options)
        write_json(timing, {"seconds": round(time.perf_counter() - start, 1)})
    return json.loads(timing.read_text())["seconds"]


def progressive_students(args: argparse.Namespace) -> dict[int, dict]:
    """Distil (or reuse) the chain of progressive students, largest first, each continuing the last;
    {steps: {"checkpoint", "distill_seconds"}} with cumulative costs."""
    chain, teacher, spent = {}, args.teacher, 0.0
    for k in sorted(args.steps, reverse=True):
        run = Path(args.work) / f"progressive_{k}"
        first = teacher == args.teacher
        spent += _distill_timed(run, teacher, args, method="progressive", steps=k,
                                teacher_steps=args.teacher_steps if first else None,
                                max_guidance=args.max_guidance if first else None)
        chain[k] = {"checkpoint": str(run / "final.pt"), "distill_seconds": round(spent, 1)}
        teacher = str(run / "final.pt")
    return chain


def consistency_student(args: argparse.Namespace) -> dict:
    """Distil (or reuse) the one consistency student; every step count samples it."""
    run = Path(args.work) / "consistency"
    seconds = _distill_timed(run, args.teacher, args, method="consistency", steps=min(args.steps),
                             teacher_steps=args.teacher_steps, max_guidance=args.max_guidance)
    return {"checkpoint": str(run / "final.pt"), "distill_seconds": seconds}


def images_per_second(checkpoint: str, options: dict, count: int) -> float:
    model = DiffusionSampler(checkpoint, device="cpu")
    labels = [i % 10 for i in range(count)] if model.is_conditional else None
    warm = min(count, 20)
    model.sample(warm, labels=labels[:warm] if labels else None, progress=False, **options)  # warm-up
    start = time.perf_counter()
    model.sample(count, labels=labels, progress=False, batch_size=count, **options)
    return count / (time.perf_counter() - start)


def plan(args: argparse.Namespace, objective: str) -> list[dict]:
    guided = 2 if args.guidance else 1
    rows = [{"system": "teacher, default sampler", "checkpoint": args.teacher, "options": {"guidance": args.guidance},
             "nfe": 20 * guided},
            {"system": f"teacher, {DETERMINISTIC[objective]} {args.teacher_steps} steps (distilled from)", "checkpoint": args.teacher,
             "options": {"sampler": DETERMINISTIC[objective], "steps": args.teacher_steps, "guidance": args.guidance},
             "nfe": args.teacher_steps * guided}]
    # The teacher's own default sampler at the smallest student's largest budget (4 evaluations, guidance included):
    # what distillation has to beat.
    few = max(args.steps)
    if few % guided == 0 and few // guided >= 1:
        rows.append({"system": f"teacher, default sampler at {few} NFE", "checkpoint": args.teacher,
                     "options": {"guidance": args.guidance, "steps": few // guided}, "nfe": few})
    # A student distilled with guidance as input takes the teacher's w in one evaluation per step.
    student_options = {"guidance": args.guidance} if args.guidance else {}
    if "progressive" in args.methods:
        rows += [{"system": f"{k}-step student (progressive)", "checkpoint": s["checkpoint"],
                  "options": student_options, "nfe": k, "distill_seconds": s["distill_seconds"]}
                 for k, s in sorted(progressive_students(args).items(), reverse=True)]
    if "consistency" in args.methods:
        student = consistency_student(args)
        rows += [{"system": f"{k}-step student (consistency)", "checkpoint": student["checkpoint"],
                  "options": {**student_options, "steps": k}, "nfe": k, "distill_seconds": student["distill_seconds"]}
                 for k in sorted(args.steps, reverse=True)]
    if objective == "ddpm":  # last: it takes longer than all the rest
        rows.append({"system": "teacher, DDPM-1000", "checkpoint": args.teacher,
                     "options": {"sampler": "ddpm", "steps": 1000, "guidance": args.guidance}, "nfe": 1000 * guided})
    return rows


def measure(row: dict, args: argparse.Namespace) -> dict:
    start = time.perf_counter()
    report = evaluate(row["checkpoint"], num_samples=args.samples, progress=False, device="cpu", split=args.split,
                      **row["options"])
    metrics = {k: round(v, 4) for k, v in report["metrics"].items() if isinstance(v, float)}
    return {**row, **metrics, "evaluate_seconds": round(time.perf_counter() - start, 1),
            "images_per_s": round(images_per_second(row["checkpoint"], row["options"], speed_images(row, args)), 2)}


def speed_images(row: dict, args: argparse.Namespace) -> int:
    """Images timed for a row's images/s: ``--speed-images``, fewer for DDPM's 1,000 steps (20 of them take
    minutes, and the rate is per image either way)."""
    return min(args.speed_images, 20) if row["nfe"] >= 1000 else args.speed_images


def _fd(row: dict) -> float:
    return next(v for k, v in row.items() if k.startswith("fd_"))


def table(rows: list[dict]) -> str:
    teacher = next((r for r in rows if r["system"] == "teacher, default sampler"), None)
    lines = ["| system | NFE | FD | FD / teacher default | IS | accuracy | precision | recall | images/s | "
             "distillation s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{_fd(r) / _fd(teacher):.2f}" if teacher else "-"
        lines.append(f"| {r['system']} | {r['nfe']} | {_fd(r):.2f} | {ratio} | {r.get('classifier_is', 0):.2f} | "
                     f"{r.get('accuracy', float('nan')):.3f} | {r.get('precision', float('nan')):.3f} | "
                     f"{r.get('recall', float('nan')):.3f} | {r['images_per_s']:.1f} | "
                     f"{r.get('distill_seconds', '-')} |")
    return "\n".join(lines)


def grid(rows: list[dict], path: str, per_class: int = 2) -> None:
    images, labels = [], []
    for r in rows:
        model = DiffusionSampler(r["checkpoint"], device="cpu")
        drawn, _ = model.sample_classes("all", per_class, progress=False, **r["options"])
        images.append(drawn.reshape(10, per_class, *drawn.shape[1:]).transpose(0, 1).reshape(-1, *drawn.shape[1:]))
        labels += [f"{r['system']} ({r['nfe']} NFE)"] + [""] * (per_class - 1)
    print(f"wrote {save_labelled_grid(torch.cat(images), path, nrow=10, row_labels=labels)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", help="the teacher checkpoint or run directory")
    parser.add_argument("--work", help="where the students are trained (reused when there)")
    parser.add_argument("--json", required=True, action="append",
                        help="rows, written as they are measured (with --table: read, and may be given again)")
    parser.add_argument("--steps", default="4,2,1", help="the students' steps, powers of two (default 4,2,1)")
    parser.add_argument("--methods", default="progressive,consistency",
                        help="distillation methods (default progressive,consistency)")
    parser.add_argument("--guidance", type=float, default=1.0, help="the guidance every row samples at (default 1)")
    parser.add_argument("--max-guidance", type=float, help="the students' guidance range (default: distill's)")
    parser.add_argument("--teacher-steps", type=int, default=DISTILL_TEACHER_STEPS)
    parser.add_argument("--round-steps", type=int, default=DISTILL_ROUND_STEPS)
    parser.add_argument("--set", action="append", default=[], help="distill's --set, e.g. train.lr=5e-4")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--split", default="test", choices=["test", "train"],
                        help="real split to compare with (train for a data set without a test split, e.g. MNIST-10k)")
    parser.add_argument("--speed-images", type=int, default=200)
    parser.add_argument("--grid", help="a PNG of every system's first seeds of each class")
    parser.add_argument("--systems", help="with --table: the rows to show, by system name, ';'-separated, in order")
    parser.add_argument("--table", action="store_true",
                        help="print the table of the --json files' rows (and draw --grid of them) and stop")
    args = parser.parse_args()
    args.argv = sys.argv[1:]
    if args.table:
        rows = [r for p in args.json for r in read_rows(Path(p))]
        if args.systems:
            named = {r["system"]: r for r in rows}
            rows = [named[name] for name in args.systems.split(";")]
        print(table(rows))
        if args.grid:
            grid([r for r in rows if r["nfe"] < 1000], args.grid)
        return
    if len(args.json) != 1:
        parser.error("measuring writes one --json file")
    path = Path(args.json[0])
    args.steps = [int(k) for k in args.steps.split(",")]
    args.methods = args.methods.split(",")
    objective = DiffusionSampler(args.teacher, device="cpu").objective
    rows = read_rows(path)
    planned = plan(args, objective)
    for row in planned:
        if any(r["system"] == row["system"] for r in rows):
            continue
        rows.append(measure(row, args))
        save_rows(path, rows, args)
        print(table(rows).splitlines()[-1], flush=True)
    print(table(rows))
    if args.grid:
        grid([r for r in planned if r["nfe"] < 1000], args.grid)


if __name__ == "__main__":
    main()
