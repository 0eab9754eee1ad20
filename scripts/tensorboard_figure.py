"""A picture of a run's TensorBoard scalars, read from its event files with TensorBoard's own reader: loss, speed and
resource use against step (README's TensorBoard figure).

    python scripts/tensorboard_figure.py runs/quick --output docs/images/tensorboard_quick.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

PANELS = [  # (tag, y label) in reading order
    ("train/loss", "training loss"),
    ("eval/heldout_loss_ema", "held-out loss (EMA)"),
    ("train/images_per_s", "training images / s"),
    ("resources/cpu_percent", "process CPU % (100 = 1 core)"),
    ("resources/ram_gib", "process RAM (GiB)"),
    ("resources/gpu_allocated_gib", "GPU memory allocated (GiB)"),
    ("resources/gpu_util_percent", "GPU utilisation %"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory (its tensorboard/ folder is read)")
    parser.add_argument("--output", required=True, help="PNG to write")
    args = parser.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(Path(args.run_dir) / "tensorboard"), size_guidance={SCALARS: 0})
    events.Reload()
    present = [(tag, label) for tag, label in PANELS if tag in events.Tags()["scalars"]]
    if not present:
        raise SystemExit(f"{args.run_dir}/tensorboard holds none of the scalars {', '.join(t for t, _ in PANELS)}")
    cols = 2
    rows = (len(present) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(9, 2.4 * rows), dpi=110, squeeze=False)
    for ax, (tag, label) in zip(axes.flat, present):
        points = events.Scalars(tag)
        ax.plot([p.step for p in points], [p.value for p in points], marker="o" if len(points) < 20 else None)
        ax.set_title(f"{label}  [{tag}]", fontsize=9)
        ax.grid(True, alpha=0.3)
        if "loss" in tag:
            ax.set_yscale("log")
        else:  # speeds, loads and memory from zero, so that a small wobble does not look like a collapse
            ax.set_ylim(bottom=0, top=max(p.value for p in points) * 1.1)
    for ax in list(axes.flat)[len(present):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle(f"TensorBoard scalars of {args.run_dir}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
