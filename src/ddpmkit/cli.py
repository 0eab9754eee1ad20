"""The ``ddpmkit`` command line: thin wrappers around ``train``, ``DiffusionSampler`` and ``resolve_config``."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import PRESETS, resolve_config
from .errors import DdpmkitError

CONFIG_HELP = ("Resolution order: defaults < --preset < --config < --set. Keys: 'ddpmkit config --preset quick' "
               "prints them all.")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), help="named starting point (default: the built-in defaults)")
    p.add_argument("--config", metavar="FILE", help="a .toml or .json file of [section] key = value overrides")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one value, e.g. --set train.steps=2000 --set model.channel_mults=1,2,2 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpmkit", description="Train and sample denoising diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model", description="Train a model. Re-running the same command with "
                       "the same --run-dir resumes from its latest.pt. " + CONFIG_HELP)
    _add_config_args(p)
    p.add_argument("--run-dir", metavar="DIR", help="where checkpoints, logs and grids go (default: runs/PRESET)")
    p.add_argument("--resume", nargs="?", const=True, default=True, metavar="CHECKPOINT",
                   help="resume from this checkpoint (default: RUN_DIR/latest.pt when it exists)")
    p.add_argument("--fresh", action="store_true", help="start from scratch; refuses a run dir that has checkpoints")
    p.add_argument("--stop-at", type=int, metavar="STEP", help="stop after STEP (resumable), e.g. to time-box a job")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines still go to log.jsonl)")

    p = sub.add_parser("sample", help="draw images from a checkpoint",
                       description="Draw images from a trained checkpoint and write OUTPUT_DIR/grid.png, "
                       "OUTPUT_DIR/images/seed_NNNNN.png and OUTPUT_DIR/samples.npz (uint8, N x H x W x C).")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a .pt file, or a run directory (final.pt)")
    p.add_argument("--sampler", default="ddpm", choices=["ddpm", "deterministic", "ddim"],
                   help="ddpm: ancestral (DDPM Alg. 2); deterministic: DDIM eta=0 over all steps; ddim: DDIM")
    p.add_argument("--steps", type=int, metavar="S", help="timesteps visited (default: all T; ddim: 50)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise scale: 0 deterministic, 1 DDPM-like (ddim)")
    p.add_argument("--num-samples", type=int, default=64, metavar="N", help="number of images (default 64)")
    p.add_argument("--seed", type=int, default=0, metavar="K", help="image i uses seed K + i (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (results don't depend on it)")
    p.add_argument("--output-dir", default="samples", metavar="DIR", help="where to write (default: samples)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-ema", action="store_true", help="use the raw trained weights instead of the EMA")
    p.add_argument("--no-clip", action="store_true", help="don't clip predicted x_0 to the data range")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("config", help="print the resolved configuration as JSON",
                       description="Print the configuration a train command would use. " + CONFIG_HELP)
    _add_config_args(p)
    return parser


def _train(args: argparse.Namespace) -> None:
    from .train import train

    cfg = resolve_config(args.preset, args.config, args.overrides)
    run_dir = Path(args.run_dir or f"runs/{args.preset or 'default'}")
    resume = False if args.fresh else args.resume
    start = time.perf_counter()
    path = train(cfg, run_dir, resume=resume, stop_at=args.stop_at, progress=not args.no_progress)
    print(f"done in {time.perf_counter() - start:.0f} s: {path}")


def _sample(args: argparse.Namespace) -> None:
    from .sampling import DiffusionSampler
    from .viz import write_samples

    sampler = DiffusionSampler(args.checkpoint, device=args.device, use_ema=not args.no_ema)
    start = time.perf_counter()
    images = sampler.sample(args.num_samples, sampler=args.sampler, steps=args.steps, eta=args.eta, seed=args.seed,
                            batch_size=args.batch_size, clip=not args.no_clip, progress=not args.no_progress)
    written = write_samples(images, args.output_dir, seeds=list(range(args.seed, args.seed + args.num_samples)))
    print(f"{args.num_samples} samples ({args.sampler}) in {time.perf_counter() - start:.1f} s: {written['grid']}, "
          f"{written['npz']}, {written['images']}/")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "sample":
            _sample(args)
        elif args.command == "config":
            print(json.dumps(resolve_config(args.preset, args.config, args.overrides).to_dict(), indent=2))
    except DdpmkitError as err:
        print(f"ddpmkit: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only folder: say which file, without a traceback
        print(f"ddpmkit: error: {err.strerror or err} ({err.filename or 'no file name'})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddpmkit: interrupted", file=sys.stderr)
        return 130
    return 0
