"""Does bf16 training reach the same loss as fp32? Trains one preset in each precision (and several seeds, to see
how far fp32 runs differ among themselves), then scores every run's EMA weights in fp32 on the whole test split.

Run by hand:  python benchmarks/precision_parity.py --preset quick_ddpm --precisions fp32,bf16 --seeds 0,1 \
                  --json docs/precision_parity_quick_cpu.json
Prints a table and writes JSON (the numbers in docs/performance.md). Each run trains the preset's full schedule;
on a CPU without bf16 arithmetic the bf16 runs are slower than fp32 (emulated), which does not change the losses.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ddpmkit.build import noise_schedule
from ddpmkit.config import resolve_config
from ddpmkit.data import load_images
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.train import heldout_loss, train


def final_training_loss(run_dir: Path, last_steps: int) -> float:
    """Mean logged training loss over the last ``last_steps`` steps (the log holds one mean per interval)."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    end = records[-1]["step"]
    return statistics.mean(r["loss"] for r in records if r["step"] > end - last_steps)


def fp32_test_loss(checkpoint: Path, cfg, test) -> float:
    """The EMA weights' loss on the whole test split, in fp32, at fixed timesteps and noise (train.heldout_loss),
    so every run is scored by the same arithmetic whatever precision it trained in."""
    model = DiffusionSampler(checkpoint, device="cpu", precision="fp32").model
    return heldout_loss(model, noise_schedule(cfg.diffusion), test.images, test.labels, cfg, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--device", default="auto", help="training device (scoring is always on the CPU)")
    parser.add_argument("--last-steps", type=int, default=200, help="training loss = mean over these last steps")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--json", default="precision_parity.json")
    args = parser.parse_args()

    scoring = resolve_config(args.preset, overrides=["train.precision=fp32", "train.device=cpu", *args.set])
    test = load_images(scoring.data, "test")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddpmkit_parity_") as tmp:
        for precision in args.precisions.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                cfg = resolve_config(args.preset, overrides=[f"train.precision={precision}", f"train.seed={seed}",
                                                             f"train.device={args.device}", *args.set])
                run_dir = Path(tmp) / f"{precision}_seed{seed}"
                start = time.perf_counter()
                checkpoint = train(cfg, run_dir, resume=False)
                seconds = time.perf_counter() - start
                rows.append({"precision": precision, "seed": seed, "train_seconds": round(seconds, 1),
                             "train_loss": final_training_loss(run_dir, args.last_steps),
                             "test_loss_fp32": fp32_test_loss(checkpoint, scoring, test)})
                print(rows[-1], flush=True)

    print(f"\n| precision | seed | training loss (last {args.last_steps} steps) | EMA test loss (fp32) | seconds |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['precision']} | {r['seed']} | {r['train_loss']:.5f} | {r['test_loss_fp32']:.5f} | "
              f"{r['train_seconds']:.0f} |")
    report = {"preset": args.preset, "overrides": args.set, "rows": rows, "command": " ".join(sys.argv),
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
              "torch": torch.__version__}
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
