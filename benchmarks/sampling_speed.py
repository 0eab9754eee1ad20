"""How long ddpmkit takes to draw N samples end to end, through DiffusionSampler as `ddpmkit sample` does.

Run by hand (not a test), e.g. the 10,000 DDIM-50 samples of issue #5 on a GPU, eager and compiled:

    python benchmarks/sampling_speed.py --preset ddpm-cifar10 --device cuda --num-samples 10000 \\
        --batch-size 1000 --compile none,reduce-overhead --json sampling_speed.json

With --checkpoint it samples that model; otherwise an untrained network of the preset's shape (the speed does not
depend on the weights). Each mode first draws one untimed batch with 2 steps (which compiles every shape the timed
run meets: N is rounded up to whole batches), then the timed run. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddpmkit.build import resolve_device
from ddpmkit.config import COMPILE_MODES, PRESETS, SAMPLER_NAMES, resolve_config
from ddpmkit.sampling import DiffusionSampler
from ddpmkit.seeded_sampling import class_blocks
from ddpmkit.unet import UNet
from throughput import machine_info, model_spec


def untrained_checkpoint(preset: str, overrides: list[str]) -> dict:
    """A checkpoint dict of an untrained network of the preset's shape (what DiffusionSampler reads)."""
    cfg = resolve_config(preset, overrides=overrides)
    spec = model_spec(cfg)
    weights = UNet(spec).state_dict()
    return {"config": cfg.to_dict(), "unet": vars(spec).copy(), "model": weights,
            "ema": {"model": weights, "num_updates": 0}, "step": 0,
            "class_names": [str(i) for i in range(spec.num_classes)]}


def measure(checkpoint, args: argparse.Namespace, compile_mode: str | None) -> dict:
    sampler = DiffusionSampler(checkpoint, device=args.device, precision=args.precision, compile=compile_mode)
    device = sampler.device
    batches = -(-args.num_samples // args.batch_size)
    labels = (class_blocks(batches * args.batch_size, sampler.model.spec.num_classes)
              if sampler.is_conditional else None)  # a conditional model draws every class
    options = {"sampler": args.sampler, "batch_size": args.batch_size, "guidance": args.guidance, "progress": False}
    evaluations = sampler.count_steps(args.sampler, args.steps)  # per image: steps, or 2 steps - 1 for heun

    def run(num: int, steps: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        sampler.sample(num, steps=steps, labels=labels[:num] if labels else None, **options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    warmup = run(args.batch_size, 2)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = run(batches * args.batch_size, args.steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"compile": compile_mode or "none", "precision": sampler.precision, "samples": batches * args.batch_size,
            "seconds": seconds, "samples_per_s": batches * args.batch_size / seconds,
            "network_evaluations_per_s": batches * args.batch_size * evaluations * (2 if options["guidance"] else 1)
            / seconds, "warmup_seconds": warmup, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick_ddpm", choices=list(PRESETS),
                        help="the network's shape (a DDPM model: the samplers below are DDPM's)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="preset overrides")
    parser.add_argument("--checkpoint", help="sample this model instead of an untrained one of the preset's shape")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--sampler", default="ddim", choices=SAMPLER_NAMES,
                        help="a DDPM sampler (default ddim; ddpmkit's own default is sde-dpm++2m, 20 steps)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--guidance", type=float, default=0.0,
                        help="conditional models: guidance weight (> 0 doubles the batch the network sees)")
    parser.add_argument("--compile", default="none",
                        help=f"comma-separated modes to measure: none, auto, {', '.join(COMPILE_MODES)}")
    parser.add_argument("--json", metavar="OUT.json")
    args = parser.parse_args()
    if min(args.num_samples, args.batch_size, args.steps) < 1:
        parser.error("--num-samples, --batch-size and --steps must be >= 1")

    checkpoint = args.checkpoint or untrained_checkpoint(args.preset, args.set)
    rows = []
    for mode in args.compile.split(","):
        rows.append(measure(checkpoint, args, None if mode == "none" else mode))
        print(rows[-1], flush=True)
    print(f"\n{args.sampler}-{args.steps}, batch {args.batch_size}:")
    print("| compile | precision | samples | seconds | samples/s | warm-up s | peak MiB |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        peak = f"{r['peak_mib']:,.0f}" if r["peak_mib"] is not None else "-"
        print(f"| {r['compile']} | {r['precision']} | {r['samples']:,} | {r['seconds']:.1f} | "
              f"{r['samples_per_s']:.1f} | {r['warmup_seconds']:.1f} | {peak} |")
    if args.json:
        device = resolve_device(args.device)
        report = {"preset": args.preset, "overrides": args.set, "checkpoint": args.checkpoint,
                  "sampler": args.sampler, "steps": args.steps, "batch_size": args.batch_size,
                  "guidance": args.guidance, "rows": rows, "machine": machine_info(device)}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
