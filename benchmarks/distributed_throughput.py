"""Training throughput of one process against several (torchrun + DDP) on the same machine and config.

Run by hand (not a test), e.g. on a 2-core CPU:

    python benchmarks/distributed_throughput.py --preset quick --steps 150 --json distributed.json

It trains the preset for ``--steps`` steps three ways, one after the other, each in a fresh run directory:
  plain        ``python -m ddpmkit train`` as one process using every core (OMP_NUM_THREADS = cores)
  torchrun x1  the same under ``torchrun --nproc_per_node=1``: DDP with one rank (the cost of the DDP wrapper)
  torchrun xN  ``torchrun --nproc_per_node=N`` with cores / N threads each (gloo on the CPU, NCCL on GPUs)
and reads images/s from each run's log.jsonl (the global batch over wall time, evaluation and checkpoints excluded),
leaving out the first log interval (start-up). Prints a markdown table and, with --json, writes the numbers.
On a machine with N GPUs, --device cuda runs the same comparison with one GPU per process.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from ddpmkit.run_log import read_records


def run(label: str, launcher: list[str], threads: int, args: list[str], run_dir: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [*launcher, "-m", "ddpmkit", "train", *args, "--run-dir", str(run_dir), "--no-progress"]
    print(f"{label}: {' '.join(command)}", file=sys.stderr)
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    rates = [r["images_per_s"] for r in read_records(run_dir / "log.jsonl") if "images_per_s" in r][1:]
    return {"setup": label, "threads_per_process": threads, "images_per_s": statistics.mean(rates),
            "intervals": len(rates), "command": " ".join(command)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--processes", type=int, default=2, help="processes of the last setup (default 2)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()

    cores = os.cpu_count() or 1
    overrides = [f"train.steps={a.steps}", "train.eval_every=0", "train.sample_every=0",
                 f"train.checkpoint_every={a.steps}", "train.log_every=25", f"train.device={a.device}",
                 *a.overrides]
    args = ["--preset", a.preset, *sum((["--set", o] for o in overrides), [])]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    per_process = max(1, cores // a.processes) if a.device == "cpu" else cores
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            run("plain", [sys.executable], cores, args, Path(tmp, "plain")),
            run("torchrun x1", [*torchrun, "--nproc_per_node=1"], cores, args, Path(tmp, "one")),
            run(f"torchrun x{a.processes}", [*torchrun, f"--nproc_per_node={a.processes}"], per_process, args,
                Path(tmp, "several")),
        ]
    base = results[0]["images_per_s"]
    print(f"\n{a.preset}, {a.steps} steps, {a.device}, {cores} cores\n")
    print("| setup | threads per process | images/s | vs plain |\n|---|---|---|---|")
    for r in results:
        r["vs_plain"] = r["images_per_s"] / base
        print(f"| {r['setup']} | {r['threads_per_process']} | {r['images_per_s']:.1f} | {r['vs_plain']:.2f}x |")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "preset": a.preset, "steps": a.steps, "device": a.device, "overrides": overrides, "results": results,
            "machine": {"platform": platform.platform(), "processor": platform.processor(), "cores": cores,
                        "torch": torch.__version__, "python": platform.python_version()},
            "date": datetime.date.today().isoformat()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
