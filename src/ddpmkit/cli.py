"""The ``ddpmkit`` command line: thin wrappers around ``train``, ``DiffusionSampler`` and ``resolve_config``."""
from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import distributed
from .build import steps_taken
from .config import (ALL_SAMPLER_NAMES, COMPILE_MODES, DATASETS, DEFAULT_SAMPLER, DEFAULT_STEPS, DISTILL_METHODS,
                     DISTILL_ROUND_STEPS, DISTILL_TEACHER_STEPS, OBJECTIVE_SAMPLERS, PRESETS, SPACINGS,
                     DiffusionConfig, default_sampler, linear_beta_scale, resolve_config, resolve_sampler)
from .distill.presets import DISTILL_PRESETS
from .editing.edits import EDIT_SAMPLERS, INPAINT_METHODS, SDEDIT_STEPS, SDEDIT_STRENGTH
from .editing.masks import MASK_SHAPES
from .errors import DdpmkitError
from .files import atomic_write, write_json
from .version import __version__

# What --checkpoint accepts, everywhere (formats.read_model).
CHECKPOINT_HELP = ("a .pt file or run directory of 'ddpmkit train', a .safetensors file of 'ddpmkit export', a "
                   "diffusers folder, or a Hugging Face Hub id (owner/name)")
CONFIG_HELP = ("Resolution order: defaults < --preset < --config < --set. Keys: 'ddpmkit config --preset quick' "
               "prints them all.")
# Whole numbers fit an int64, as in the config. For seeds this is narrower than torch.Generator.manual_seed's
# 2**64 - 1, because numpy turns a list of seeds on both sides of 2**63 into float64 (samples.npz keeps them).
MAX_WHOLE = 2**63 - 1
# plot-schedule's smallest T: the linear schedule's last beta, beta_end * linear_beta_scale(T), stays below 1 from it.
MIN_PLOT_T = int(DiffusionConfig().beta_end * linear_beta_scale(1)) + 1


class UsageError(DdpmkitError):
    """A command line that argparse or the checks below refuse; the message ends with where to read the options."""


class HelpShown(Exception):
    """--help or --version has printed its text; main() returns 0 instead of argparse's sys.exit(0)."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing a usage block and exiting, so that main() prints one line."""

    def error(self, message: str):
        raise UsageError(f"{message}; see '{self.prog} --help'")

    def exit(self, status: int = 0, message: str | None = None):  # only --help and --version get here
        raise HelpShown


# -- argparse types: each refuses what its option cannot use, with a message that says what it takes ---------------

def _checked(parse: Callable) -> Callable:
    parse.checked = True  # marks the numeric types (tests check that every numeric option has one)
    return parse


def whole(low: int, high: int = MAX_WHOLE) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high``."""
    @_checked
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not low <= value <= high:
            limit = f">= {low}" if value < low else f"<= {high}"
            raise argparse.ArgumentTypeError(f"must be a whole number {limit}, got {text!r}")
        return value
    return parse


def finite(low: float | None = None, above: bool = False) -> Callable[[str], float]:
    """A finite number (NaN and infinities refused), >= ``low`` (> ``low`` when ``above``)."""
    @_checked
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and (value <= low if above else value < low)):
            limits = "" if low is None else f" {'>' if above else '>='} {low:g}"
            raise argparse.ArgumentTypeError(f"must be a finite number{limits}, got {text!r}")
        return value
    return parse


def comma_list(item: Callable[[str], float]) -> Callable[[str], tuple]:
    """Comma-separated values, each checked by ``item``; at least one."""
    @_checked
    def parse(text: str) -> tuple:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected comma-separated values such as 0,1,3; got {text!r}")
        return tuple(item(part) for part in parts)
    return parse


SEED = whole(0)
COUNT = whole(1)  # images, steps, epochs, batch sizes
PORT = whole(1, 65535)
NUMBER = finite()


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), help="named starting point (default: the built-in defaults)")
    p.add_argument("--config", metavar="FILE", help="a .toml or .json file of [section] key = value overrides")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one value, e.g. --set train.steps=2000 --set model.channel_mults=1,2,2 (repeatable)")


def _add_class_args(p: argparse.ArgumentParser, meaning: str) -> None:
    p.add_argument("--class", dest="classes", metavar="CLASS",
                   help=f"class-conditional models: a class index or name, a comma-separated list, or 'all' "
                   f"({meaning})")
    p.add_argument("--guidance", type=NUMBER, default=0.0, metavar="W",
                   help="classifier-free guidance weight w: eps = (1 + w) eps(x, class) - w eps(x, null); 0 = plain "
                   "conditional (default). diffusers' guidance_scale s is 1 + w")


SAMPLER_HELP = ("ddpm: ancestral (DDPM Alg. 2); deterministic: DDIM eta=0 over all steps; ddim: DDIM; dpm++2m, "
                "dpm++3m: DPM-Solver++ (multistep); sde-dpm++2m: its stochastic variant; heun: EDM's Heun (S levels = "
                "2S - 1 network evaluations); unipc: UniPC (multistep predictor-corrector). Default: " + DEFAULT_SAMPLER
                + ", the best or level with the best for 10-50 network evaluations (docs/samplers.md). Models of "
                "diffusion.objective=edm or flow: euler, heun, dpm++2m, dpm++3m, sde-dpm++2m or unipc over their own "
                "noise levels (default " + ", ".join(f"{o} {default_sampler(o)}" for o in OBJECTIVE_SAMPLERS) + ")")
STEPS_HELP = ("timesteps visited (default, at most T: ddpm and deterministic all T; "
              + ", ".join(f"{name} {n}{' levels' if name == 'heun' else ''}" for name, n in DEFAULT_STEPS.items())
              + ")")


def _add_solver_args(p: argparse.ArgumentParser) -> None:
    """Options that every sampler takes: the timestep spacing, dynamic thresholding and guidance rescale."""
    p.add_argument("--spacing", choices=SPACINGS, help="which timesteps fewer than T steps visit (default trailing: "
                   "from t = T-1; leading is DDIM's original; logsnr suits dpm++)")
    p.add_argument("--threshold", type=finite(0, above=True), metavar="Q",
                   help="dynamic thresholding of predicted x_0 at quantile Q (e.g. 0.995; Saharia et al. 2022) "
                   "instead of clipping: keeps strong guidance from saturating images")
    p.add_argument("--guidance-rescale", type=finite(0), default=0.0, metavar="PHI",
                   help="rescale the guided prediction to the conditional one's std, mixed in with weight PHI in "
                   "[0, 1] (Lin et al. 2024; 0 = off, 0.7 is their choice)")
    p.add_argument("--shift", type=finite(0, above=True), metavar="S",
                   help="flow models: shifted times t -> S t / (1 + (S - 1) t) (SD3 eq. 23; default 1, uniform); "
                   "S > 1 spends more steps near noise")
    p.add_argument("--rho", type=finite(0, above=True), metavar="R",
                   help="edm models: levels uniform in sigma^(1/R) (EDM eq. 5; default 7)")


def _solver_options(args: argparse.Namespace) -> dict:
    levels = {name: getattr(args, name) for name in ("shift", "rho") if getattr(args, name) is not None}
    return {"spacing": args.spacing, "threshold": args.threshold, "guidance_rescale": args.guidance_rescale, **levels}


def _add_precision_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="network precision: auto = bf16 on GPUs that support it, fp32 elsewhere")
    p.add_argument("--compile", nargs="?", const="auto", default=None, choices=["auto", *COMPILE_MODES],
                   metavar="MODE", help="torch.compile the network first; MODE auto (the default) = reduce-overhead "
                   "(CUDA graphs) on a GPU, default elsewhere. Pays off for long jobs: each batch shape compiles once")


def _add_picture_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=CHECKPOINT_HELP)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _add_precision_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_class_args(p, "the class to draw")


COMPLETIONS = 4  # results per picture of 'inpaint' and 'edit'


def _add_edit_input_args(p: argparse.ArgumentParser, output: str) -> None:
    """What every editing command reads and writes, and how it runs the model."""
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=CHECKPOINT_HELP)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH", help="pictures, or folders of them, of the model's "
                        "size and channel count (greyscale or colour)")
    source.add_argument("--dataset-images", type=COUNT, metavar="N", help="the first N pictures of the model's own "
                        "dataset (its test split, else its training split), with their classes")
    p.add_argument("--sampler", choices=list(EDIT_SAMPLERS), default="ddpm", help="ddpm: ancestral steps (eta 1, "
                   "default); ddim: deterministic steps (eta 0). Multistep solvers and heun don't keep known pixels")
    p.add_argument("--eta", type=finite(0), metavar="ETA", help="noise of each step, 0 (ddim) to 1 (ddpm)")
    p.add_argument("--completions", type=COUNT, metavar="K", help=f"results per picture (default {COMPLETIONS}; "
                   "invert: 1)")
    p.add_argument("--seed", type=SEED, default=0, metavar="S", help="result j of picture i uses seed "
                   "S + i * K + j (default 0)")
    p.add_argument("--batch-size", type=COUNT, default=64, help="results per forward pass (results don't depend on "
                   "it)")
    p.add_argument("--output-dir", default=output, metavar="DIR", help=f"where to write grid.png (before, mask, "
                   f"after), images/ and results.npz (default: {output})")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _add_precision_arg(p)
    p.add_argument("--no-ema", action="store_true", help="use the raw trained weights instead of the EMA")
    p.add_argument("--no-clip", action="store_true", help="don't clip predicted x_0 to the data range")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _inpaint_parser(sub) -> None:
    """The 'inpaint' command's arguments."""
    p = sub.add_parser("inpaint", help="fill in masked parts of pictures (RePaint or replacement)",
                       description="Generate where the mask is white so that it fits the rest of each picture, "
                       "which is kept exactly. Writes OUTPUT_DIR/grid.png (before, mask, after), "
                       "OUTPUT_DIR/images/ and OUTPUT_DIR/results.npz.")
    _add_edit_input_args(p, "inpainted")
    p.add_argument("--mask", required=True, metavar="MASK", help=f"a PNG of the model's size (white = generate) "
                   f"or one of {', '.join(MASK_SHAPES)}")
    p.add_argument("--method", choices=list(INPAINT_METHODS), default="repaint", help="repaint: resampling with "
                   "jumps (Lugmayr et al. 2022; default); replace: the known part replaced by the noised original "
                   "at each step")
    p.add_argument("--steps", type=COUNT, metavar="S", help="steps of one pass from noise to picture (default " +
                   ", ".join(f"{name} {m.steps}" for name, m in INPAINT_METHODS.items()) + ")")
    p.add_argument("--jump-length", type=COUNT, metavar="J", help="repaint: steps noised back at each jump "
                   f"(default {INPAINT_METHODS['repaint'].jump_length})")
    p.add_argument("--jump-n-sample", type=COUNT, metavar="R", help="repaint: passes over each stretch of J steps "
                   f"(default {INPAINT_METHODS['repaint'].jump_n_sample})")
    _add_class_args(p, "the pictures' class, which the completions follow; with --dataset-images their own")


def _edit_parser(sub) -> None:
    """The 'edit' command's arguments."""
    p = sub.add_parser("edit", help="image-to-image: change pictures, e.g. into another class (SDEdit)",
                       description="SDEdit (Meng et al. 2022): noise each picture to --strength and denoise it, "
                       "towards --class with --guidance for a class swap; or --method invert, DDIM inversion and "
                       "back, the faithful route. Writes OUTPUT_DIR/grid.png, OUTPUT_DIR/images/ and "
                       "OUTPUT_DIR/results.npz.")
    _add_edit_input_args(p, "edited")
    p.add_argument("--method", choices=["sdedit", "invert"], default="sdedit",
                   help="sdedit (default) or invert (deterministic: one result per picture)")
    p.add_argument("--strength", type=finite(0), default=SDEDIT_STRENGTH, metavar="S",
                   help=f"sdedit: how far towards noise, 0 (keep) to 1 (a new picture); default {SDEDIT_STRENGTH}")
    p.add_argument("--steps", type=COUNT, metavar="S", help=f"steps of a whole trajectory (default {SDEDIT_STEPS}); "
                   "sdedit runs about strength x S of them")
    p.add_argument("--source-class", metavar="CLASS", help="invert: the pictures' own class (default: with "
                   "--dataset-images their own, else the null label)")
    p.add_argument("--refine", type=whole(0), default=0, metavar="N", help="invert: fixed-point iterations per "
                   "inversion step (0 = plain DDIM inversion)")
    _add_class_args(p, "the class to turn the pictures into")


def _train_parser(sub) -> None:
    """The 'train' command's arguments."""
    p = sub.add_parser("train", help="train a model", description="Train a model. Re-running the same command with "
                       "the same --run-dir resumes from its latest.pt. " + CONFIG_HELP)
    _add_config_args(p)
    p.add_argument("--run-dir", metavar="DIR", help="where checkpoints, logs and grids go (default: runs/PRESET)")
    p.add_argument("--resume", nargs="?", const=True, default=True, metavar="CHECKPOINT",
                   help="resume from this checkpoint (default: RUN_DIR/latest.pt when it exists)")
    p.add_argument("--fresh", action="store_true", help="start from scratch; refuses a run dir that has checkpoints")
    p.add_argument("--stop-at", type=COUNT, metavar="STEP", help="stop after STEP (resumable), e.g. to time-box a job")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines still go to log.jsonl)")


def _distill_parser(sub) -> None:
    """The 'distill' command's arguments."""
    p = sub.add_parser("distill", help="distil a trained model into a few-step student",
                       description="Train a student that samples in a few network evaluations from a trained "
                       "teacher: by progressive distillation (Salimans & Ho 2022), rounds that halve the teacher's "
                       "DDIM steps down to --steps, or by consistency distillation (Song et al. 2023), rounds whose "
                       "targets take ever finer teacher steps. Each round is a training run in RUN_DIR/roundR_..., "
                       "the last linked as RUN_DIR/final.pt; re-running the same command resumes. A conditional "
                       "teacher's guidance is learnt as an input (w in [0, --max-guidance]): one evaluation per "
                       "step. The student samples with its own sampler, --sampler distilled.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="the teacher: " + CHECKPOINT_HELP)
    p.add_argument("--preset", choices=sorted(DISTILL_PRESETS),
                   help="named settings for a budget (the options below override them): cpu_4step and cpu_1step "
                   "for the quick model on a CPU, cifar10_gpu for the CIFAR-10 model on a GPU")
    p.add_argument("--method", choices=DISTILL_METHODS, help="(default progressive)")
    p.add_argument("--steps", type=COUNT, metavar="K",
                   help="the student's steps (default 4): progressive, a power of two, the only steps it takes; "
                   "consistency, its default (it samples in any number)")
    p.add_argument("--teacher-steps", type=COUNT, metavar="N",
                   help=f"the teacher's DDIM steps: progressive's round 1 halves them, consistency's last round "
                   f"steps at 1/N (default {DISTILL_TEACHER_STEPS})")
    p.add_argument("--round-steps", type=COUNT, metavar="S",
                   help=f"optimizer steps per round (default {DISTILL_ROUND_STEPS})")
    p.add_argument("--max-guidance", type=finite(0), metavar="W",
                   help="a conditional teacher: the student learns its guidance for every w in [0, W] and takes w "
                   "as input (default 2; 0: learn the plain conditional model, guided later with two evaluations "
                   "per step)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="change each round's config, e.g. --set train.lr=1e-4 --set train.batch_size=64")
    p.add_argument("--run-dir", required=True, metavar="DIR", help="where the rounds go")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _distill(args: argparse.Namespace) -> None:
    from .distill.rounds import distill

    preset = DISTILL_PRESETS.get(args.preset, {})
    given = {"method": args.method, "steps": args.steps, "teacher_steps": args.teacher_steps,
             "round_steps": args.round_steps, "max_guidance": args.max_guidance}
    options = {**{k: v for k, v in preset.items() if k != "set"},  # the rest: distill's defaults
               **{k: v for k, v in given.items() if v is not None}}
    start = time.perf_counter()
    path = distill(args.checkpoint, args.run_dir, overrides=[*preset.get("set", []), *args.overrides],
                   progress=not args.no_progress, **options)
    if distributed.is_main():
        print(f"done in {time.perf_counter() - start:.0f} s: {path}")


def _sample_parser(sub) -> None:
    """The 'sample' command's arguments."""
    p = sub.add_parser("sample", help="draw images from a checkpoint",
                       description="Draw images from a trained checkpoint and write OUTPUT_DIR/grid.png, "
                       "OUTPUT_DIR/images/seed_NNNNN.png (class_C_seed_NNNNN.png with --class) and "
                       "OUTPUT_DIR/samples.npz (arr_0: uint8, N x H x W x C; seeds; labels with --class).")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=CHECKPOINT_HELP)
    p.add_argument("--sampler", choices=ALL_SAMPLER_NAMES, help=SAMPLER_HELP)
    _add_solver_args(p)
    p.add_argument("--steps", type=COUNT, metavar="S", help=STEPS_HELP)
    p.add_argument("--eta", type=finite(0), default=0.0, help="DDIM noise scale: 0 deterministic, 1 DDPM-like (ddim)")
    p.add_argument("--num-samples", type=COUNT, default=64, metavar="N", help="number of images (default 64)")
    p.add_argument("--seed", type=SEED, default=0, metavar="K",
                   help="image i uses seed K + i; with --class, image j of every class uses seed K + j (default 0)")
    p.add_argument("--batch-size", type=COUNT, default=256, help="images per forward pass (results don't depend on it)")
    p.add_argument("--output-dir", default="samples", metavar="DIR", help="where to write (default: samples)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _add_precision_arg(p)
    p.add_argument("--no-ema", action="store_true", help="use the raw trained weights instead of the EMA")
    p.add_argument("--no-clip", action="store_true", help="don't clip predicted x_0 to the data range")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_class_args(p, "--num-samples images of each class, one grid row per class")


def _interpolate_parser(sub) -> None:
    """The 'interpolate' command's arguments."""
    p = sub.add_parser("interpolate", help="interpolate between two noises, or between two classes",
                       description="Decode points between two starting noises (spherical interpolation) or between "
                       "two classes at one fixed noise (the label embedding moved linearly) with the model's "
                       "deterministic sampler (DDIM for DDPM models, DPM-Solver++(2M) for edm and flow), and save "
                       "them as one row.")
    _add_picture_args(p)
    p.add_argument("--between", choices=["noise", "classes"], default="noise", help="what to interpolate")
    p.add_argument("--seed", type=SEED, default=0, help="the starting noise (the first end, for --between noise)")
    p.add_argument("--to-seed", type=SEED, default=1, help="the other end's noise (--between noise)")
    p.add_argument("--to-class", metavar="CLASS", help="the other end's class (--between classes)")
    p.add_argument("--points", type=whole(2), default=10, help="images in the row, both ends included (default 10)")
    p.add_argument("--steps", type=COUNT, help=f"sampler steps (default {DEFAULT_STEPS['ddim']}; a distilled "
                   f"student: its own)")
    p.add_argument("--output", default="interpolation.png", help="PNG to write")


def _strip_parser(sub) -> None:
    """The 'strip' command's arguments."""
    p = sub.add_parser("strip", help="denoising strips: x_t and predicted x_0 from noise to sample, stochastic "
                       "and deterministic", description="For one starting noise, show x_t and the predicted x_0 at "
                       "evenly spaced steps from noise to sample, for the model's stochastic and deterministic "
                       "samplers side by side (DDPM and DDIM with eta = 0; sde-dpm++2m and dpm++2m for edm and flow "
                       "models), as one PNG.")
    _add_picture_args(p)
    p.add_argument("--seed", type=SEED, default=0, help="the starting noise")
    p.add_argument("--frames", type=whole(2), default=10, help="columns, the final sample included (default 10)")
    p.add_argument("--stochastic-steps", "--ddpm-steps", type=COUNT, dest="stochastic_steps",
                   help="steps of the stochastic row (default: DDPM all T; sde-dpm++2m 20 for edm and flow)")
    p.add_argument("--deterministic-steps", "--ddim-steps", type=COUNT, dest="deterministic_steps",
                   help=f"steps of the deterministic row (default {DEFAULT_STEPS['ddim']}; a distilled student: "
                   f"its own)")
    p.add_argument("--output", default="strip.png", help="PNG to write")


def _animate_parser(sub) -> None:
    """The 'animate' command's arguments."""
    p = sub.add_parser("animate", help="GIFs of the denoising process, one per class",
                       description="Animated GIFs of images being denoised from pure noise: one per requested "
                       "class (or one for an unconditional model), plus all.gif with one row per class.")
    _add_picture_args(p)
    p.add_argument("--per-class", type=COUNT, default=8, help="images in each GIF (default 8)")
    p.add_argument("--seed", type=SEED, default=0, help="first seed; image j uses seed + j")
    p.add_argument("--sampler", choices=ALL_SAMPLER_NAMES, help=SAMPLER_HELP)
    _add_solver_args(p)
    p.add_argument("--steps", type=COUNT, help=STEPS_HELP)
    p.add_argument("--frames", type=whole(2), default=40,
                   help="frames per GIF, evenly spaced over the run (default 40; more frames than steps repeat "
                   "states, which the GIF merges)")
    p.add_argument("--duration", type=finite(0, above=True), default=4.0,
                   help="seconds for the whole denoising (default 4)")
    p.add_argument("--hold", type=finite(0), default=1.5, help="seconds the final frame is held (default 1.5)")
    p.add_argument("--show", choices=["x_t", "x0"], default="x_t", help="show x_t or the predicted x_0")
    p.add_argument("--output-dir", default="animations", help="folder for the GIFs")


def _plot_schedule_parser(sub) -> None:
    """The 'plot-schedule' command's arguments."""
    p = sub.add_parser("plot-schedule", help="plot alpha-bar and SNR against t for the linear and cosine schedules")
    p.add_argument("--num-timesteps", type=whole(MIN_PLOT_T), default=1000,
                   help=f"T (default 1000; at least {MIN_PLOT_T}, where the linear schedule's betas stay below 1)")
    p.add_argument("--output", default="schedules.png", help="PNG to write")


def _classifier_parser(sub) -> None:
    """The 'classifier' command's arguments."""
    p = sub.add_parser("classifier", help="train the small judge classifier, or judge guided samples with it",
                       description="The small CNN that judges conditional samples (and gives the domain metrics "
                       "their features). 'train' fits it on a dataset's training images and reports its test "
                       "accuracy; 'judge' samples every class of a conditional model at several guidance weights "
                       "and reports the fraction the classifier assigns to the requested class.")
    csub = p.add_subparsers(dest="classifier_command", required=True, metavar="ACTION")
    _classifier_train_parser(csub)
    _classifier_judge_parser(csub)


def _classifier_train_parser(csub) -> None:
    """'classifier train': fit a judge on a dataset's training images."""
    c = csub.add_parser("train", help="train a classifier on a dataset's training set")
    c.add_argument("--dataset", required=True, choices=["mnist", "fashion_mnist"], help="which dataset")
    c.add_argument("--root", default="", help="data folder (see data.root); default: the usual places")
    c.add_argument("--image-size", type=whole(4), default=32, metavar="N",
                   help="side of the images it judges (default 32, the models' own; see data.image_size)")
    c.add_argument("--resize-mode", choices=["pad", "resize"], default="pad",
                   help="how the 28x28 images reach that size (default pad; see data.resize_mode)")
    c.add_argument("--channels", type=whole(0, 3), choices=[0, 1, 3], default=0,
                   help="1 or 3 to judge images converted to that many channels (default 0: the dataset's own)")
    c.add_argument("--epochs", type=COUNT, default=2, help="passes over the training set (default 2)")
    c.add_argument("--holdout", type=COUNT, default=2000,
                   help="without a test split, hold out this many training images to measure accuracy")
    c.add_argument("--output", metavar="PATH", help="where to save (default: ./DATASET_classifier.pt; the shipped "
                   "weights are src/ddpmkit/metrics/weights/DATASET_classifier.pt)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")


def _classifier_judge_parser(csub) -> None:
    """'classifier judge': how often guided samples are classified as the class asked for."""
    c = csub.add_parser("judge", help="fraction of guided samples classified as the requested class")
    c.add_argument("--checkpoint", required=True, metavar="PATH", help="a class-conditional model: " + CHECKPOINT_HELP)
    c.add_argument("--classifier", metavar="PATH_OR_DATASET",
                   help="classifier weights, or a dataset name for the shipped ones (default: the model's dataset)")
    c.add_argument("--guidance", type=comma_list(NUMBER), default="0,1,3",
                   help="comma-separated guidance weights w (default 0,1,3)")
    c.add_argument("--per-class", type=COUNT, default=30, help="samples per class and guidance weight (default 30)")
    c.add_argument("--sampler", choices=ALL_SAMPLER_NAMES, help=SAMPLER_HELP)
    _add_solver_args(c)
    c.add_argument("--steps", type=COUNT, help=STEPS_HELP)
    c.add_argument("--seed", type=SEED, default=0, help="first seed")
    c.add_argument("--output", metavar="JSON", help="also write the results here")
    c.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")


def _evaluate_parser(sub) -> None:
    """The 'evaluate' command's arguments."""
    p = sub.add_parser("evaluate", help="measure samples (FD, IS, accuracy, FID/KID) and DDIM inversion (PSNR, SSIM)",
                       description="Generate samples from a checkpoint (or read them from an .npz or a folder) and "
                       "measure them against the dataset's real images: FD-<dataset>-classifier (Frechet distance on "
                       "the judge classifier's features), the classifier Inception Score and, for conditional "
                       "models, the fraction classified as the requested class; on request FID/KID/IS on "
                       "Inception features, DDIM-inversion reconstruction (PSNR, SSIM, LPIPS) of real images, and "
                       "the LPIPS diversity of samples. Prints a table and writes OUTPUT_DIR/metrics.json with "
                       "everything needed to reproduce the numbers.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="PATH", help="generate samples from this model: " + CHECKPOINT_HELP)
    source.add_argument("--samples", metavar="PATH", help="an .npz (arr_0: uint8 N x H x W x C), a folder of PNGs, "
                        "or the folder 'ddpmkit sample' wrote")
    p.add_argument("--dataset", choices=DATASETS, help="the real data (default: the model's); fd, is, accuracy and "
                   "prc judge mnist and fashion_mnist (or give --classifier), fid/kid/inception_is any")
    p.add_argument("--data-root", default="", help="where the real data is (see data.root; default: the model's)")
    p.add_argument("--resize-mode", choices=["pad", "resize"],
                   help="with --samples: how the real images reach the samples' size, zero-padding or resizing "
                   "(default: the resize_mode recorded in samples.npz, else pad; another than the recorded one is "
                   "refused); with --checkpoint the model's own data.resize_mode is used")
    p.add_argument("--split", default="test", choices=["test", "train"], help="real split to compare with")
    p.add_argument("--num-samples", type=COUNT, default=1000, help="samples to generate (default 1000)")
    p.add_argument("--sampler", choices=ALL_SAMPLER_NAMES, help=SAMPLER_HELP)
    _add_solver_args(p)
    p.add_argument("--steps", type=COUNT, help=STEPS_HELP)
    p.add_argument("--eta", type=finite(0), default=0.0, help="DDIM noise scale")
    p.add_argument("--guidance", type=NUMBER, default=0.0, help="guidance weight w (conditional models)")
    _add_metric_args(p)
    p.add_argument("--seed", type=SEED, default=0, help="first seed")
    p.add_argument("--batch-size", type=COUNT, default=500, help="images per forward pass (results don't change)")
    p.add_argument("--output-dir", default="evaluation", help="where metrics.json goes")
    p.add_argument("--save-samples", action="store_true",
                   help="also write the generated samples to OUTPUT_DIR/samples.npz (evaluate --samples reads it)")
    p.add_argument("--no-cache", action="store_true", help="recompute the real statistics instead of the cache")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    _add_precision_arg(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_metric_args(p: argparse.ArgumentParser) -> None:
    """evaluate's choice of metrics and what each needs (weights, inversion settings)."""
    p.add_argument("--metrics", default="fd,is,accuracy,prc",
                   help="comma-separated: fd, is, accuracy, prc (offline); fid, kid, inception_is (need Inception "
                   "weights); reconstruction (DDIM inversion PSNR/SSIM, + LPIPS with its weights); diversity (LPIPS)")
    p.add_argument("--inversion-steps", type=comma_list(COUNT), default="10,20,50", metavar="S,S,...",
                   help="reconstruction: DDIM step counts to invert and decode with (default 10,20,50)")
    p.add_argument("--inversion-images", type=COUNT, default=200, metavar="N",
                   help="reconstruction: the first N real images of the split (default 200)")
    p.add_argument("--inversion-refine", type=whole(0), default=0, metavar="K",
                   help="reconstruction: fixed-point iterations per inversion step (exact inverse; K+1 x the cost)")
    p.add_argument("--lpips-net", default="alex", choices=["alex", "vgg", "squeeze"], help="LPIPS backbone")
    p.add_argument("--lpips-weights", metavar="PATH",
                   help="the backbone's torchvision ImageNet weights (default: torch hub's cache; alex: "
                   "checkpoints/alexnet-owt-7be5be79.pth)")
    p.add_argument("--diversity-pairs", type=COUNT, default=1000, metavar="P",
                   help="diversity: at most P image pairs per class (default 1000)")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="the TF-FID InceptionV3 weights file (default: torch hub's cache, checkpoints/"
                   "weights-inception-2015-12-05-6726825d.pth)")
    p.add_argument("--classifier", metavar="PATH_OR_DATASET", help="judge weights (default: the shipped ones)")


def _export_parser(sub) -> None:
    """The 'export' command's arguments."""
    p = sub.add_parser("export", help="write a model in diffusers' format or as one .safetensors file",
                       description="Write a model for other programs: --format diffusers makes a folder that "
                                   "diffusers' DDPMPipeline.from_pretrained loads (unet/, scheduler/, a model card), "
                                   "--format safetensors one file of weights with ddpmkit's config as metadata.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=CHECKPOINT_HELP)
    p.add_argument("--format", default="diffusers", choices=["diffusers", "safetensors"],
                   help="diffusers (a folder, default) or safetensors (one file)")
    p.add_argument("--output", required=True, metavar="PATH", help="the folder (diffusers) or file (safetensors)")
    p.add_argument("--no-ema", action="store_true", help="the raw trained weights instead of the EMA")
    p.add_argument("--metrics", action="append", default=[], metavar="JSON",
                   help="a metrics.json of 'ddpmkit evaluate' on this checkpoint, for the model card (repeatable; "
                        "default: those found beside the checkpoint that measured it)")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")


def _demo_parser(sub) -> None:
    """The 'demo' command's arguments."""
    p = sub.add_parser("demo", help="serve a web page to draw samples from a model (needs ddpmkit[demo])",
                       description="Serve a page (Gradio) to draw samples: classes, guidance, sampler, steps, seed and "
                                   "number of images; the grid, the denoising animation and the PNGs.")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help=CHECKPOINT_HELP)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every network)")
    p.add_argument("--port", type=PORT, default=7860, help="port (default 7860)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--no-progress", action="store_true", help="no start-up progress bar")


def _config_parser(sub) -> None:
    """The 'config' command's arguments."""
    p = sub.add_parser("config", help="print the resolved configuration as JSON",
                       description="Print the configuration a train command would use. " + CONFIG_HELP)
    _add_config_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ddpmkit", description="Train and sample denoising diffusion models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in (_train_parser, _distill_parser, _sample_parser, _interpolate_parser, _strip_parser,
                        _animate_parser, _inpaint_parser, _edit_parser, _plot_schedule_parser, _classifier_parser,
                        _evaluate_parser, _export_parser, _demo_parser, _config_parser):
        add_command(sub)
    return parser


def _train(args: argparse.Namespace) -> None:
    from .train import train

    cfg = resolve_config(args.preset, args.config, args.overrides)
    run_dir = Path(args.run_dir or f"runs/{args.preset or 'default'}")
    resume = False if args.fresh else args.resume
    start = time.perf_counter()
    path = train(cfg, run_dir, resume=resume, stop_at=args.stop_at, progress=not args.no_progress)
    if distributed.is_main():
        print(f"done in {time.perf_counter() - start:.0f} s: {path}")


def _sample(args: argparse.Namespace) -> None:
    from .sampling import DiffusionSampler
    from .viz import write_samples

    sampler = DiffusionSampler(args.checkpoint, device=args.device, use_ema=not args.no_ema,
                               precision=args.precision, compile=args.compile)
    args.sampler = resolve_sampler(sampler.family, args.sampler)
    options = {"sampler": args.sampler, "steps": args.steps, "eta": args.eta, "batch_size": args.batch_size,
               "clip": not args.no_clip, "guidance": args.guidance, "progress": not args.no_progress,
               **_solver_options(args)}
    start = time.perf_counter()
    if args.classes is not None:
        images, labels = sampler.sample_classes(args.classes, args.num_samples, seed=args.seed, **options)
        seeds, labels = [args.seed + i % args.num_samples for i in range(len(images))], labels.tolist()
        row_classes = labels[:: args.num_samples]  # one row per requested class, repeats included
        layout = {"nrow": args.num_samples, "row_labels": [sampler.class_names[c] for c in row_classes]}
    else:
        images = sampler.sample(args.num_samples, seed=args.seed, **options)
        seeds, labels, layout = list(range(args.seed, args.seed + args.num_samples)), None, {}
    if distributed.is_main():  # every process holds all the images; one writes them
        written = write_samples(images, args.output_dir, seeds=seeds, labels=labels, **layout,
                                **sampler.recorded_with_samples)
        print(f"{len(images)} samples ({args.sampler}) in {time.perf_counter() - start:.1f} s: {written['grid']}, "
              f"{written['npz']}, {written['images']}/")


def _editing_inputs(args: argparse.Namespace):
    """(the sampler, pictures, their names and dataset labels or None) for 'inpaint' and 'edit'."""
    from .editing.files import dataset_pictures, read_pictures
    from .sampling import DiffusionSampler

    sampler = DiffusionSampler(args.checkpoint, device=args.device, use_ema=not args.no_ema,
                               precision=args.precision, compile=args.compile)
    if args.input:
        return sampler, *read_pictures(args.input, sampler.image_shape), None
    images, names, labels = dataset_pictures(sampler, args.dataset_images)
    return sampler, images, names, labels if sampler.is_conditional else None


def _write_edits(args, sampler, images, names, results, labels, what: str, start: float, masks=None) -> None:
    from .editing.files import write_edits

    per_image = len(results) // len(images)
    seeds = [args.seed + k for k in range(len(results))]
    rows = labels.repeat_interleave(per_image).tolist() if labels is not None else None
    out = write_edits(args.output_dir, images, results, names, seeds, rows, masks, **sampler.recorded_with_samples)
    print(f"{len(results)} results ({what}) in {time.perf_counter() - start:.1f} s: {out / 'grid.png'}, "
          f"{out / 'results.npz'}, {out / 'images'}/")


def _inpaint(args: argparse.Namespace) -> None:
    from .editing.edits import inpaint_masks, labels_for

    sampler, images, names, labels = _editing_inputs(args)
    args.completions = args.completions or COMPLETIONS
    if args.classes is not None:
        labels = labels_for(sampler, args.classes, len(images))
    masks = inpaint_masks(sampler, args.mask, len(images), args.seed, args.completions)  # read once, drawn in grid.png
    start = time.perf_counter()
    results = sampler.inpaint(images, masks, method=args.method, completions=args.completions, seed=args.seed,
                              labels=labels, guidance=args.guidance, steps=args.steps, jump_length=args.jump_length,
                              jump_n_sample=args.jump_n_sample, sampler_name=args.sampler, eta=args.eta,
                              clip=not args.no_clip, batch_size=args.batch_size, progress=not args.no_progress)
    _write_edits(args, sampler, images, names, results, labels, f"{args.method}, mask {args.mask}", start, masks)


def _edit(args: argparse.Namespace) -> None:
    from .editing.edits import labels_for

    sampler, images, names, source = _editing_inputs(args)
    target = labels_for(sampler, args.classes, len(images)) if args.classes is not None else source
    start = time.perf_counter()
    options = {"labels": target, "guidance": args.guidance, "steps": args.steps, "progress": not args.no_progress}
    if args.method == "invert":
        if (args.completions or 1) != 1:
            raise DdpmkitError("--method invert is deterministic: one result per picture; leave --completions out")
        if args.source_class is not None:
            source = labels_for(sampler, args.source_class, len(images))
        results = sampler.edit(images, method="invert", source_labels=source, refine=args.refine, **options)
        what = "DDIM inversion and back"
    else:
        args.completions = args.completions or COMPLETIONS
        results = sampler.edit(images, args.strength, completions=args.completions, seed=args.seed,
                               sampler_name=args.sampler, eta=args.eta, clip=not args.no_clip,
                               batch_size=args.batch_size, **options)
        what = f"SDEdit at strength {args.strength:g}"
    _write_edits(args, sampler, images, names, results, target, what, start)


def _pictures(args: argparse.Namespace) -> None:
    from . import pictures
    from .sampling import DiffusionSampler
    from tqdm.auto import tqdm

    from .viz import plot_noise_schedules, save_gif, save_labelled_grid, save_pil, stack_rows

    if args.command == "plot-schedule":
        print(f"wrote {plot_noise_schedules(args.output, args.num_timesteps)}")
        return
    sampler = DiffusionSampler(args.checkpoint, device=args.device, precision=args.precision, compile=args.compile)
    if hasattr(args, "sampler"):  # animate: the model's own default when none is named
        args.sampler = resolve_sampler(sampler.family, args.sampler)
    common = {"guidance": args.guidance, "progress": not args.no_progress}
    if args.command == "interpolate":
        if args.between == "noise":
            images = pictures.interpolate_noise(sampler, args.seed, args.to_seed, args.points, args.classes,
                                                steps=args.steps, **common)
            title = f"seed {args.seed} -> seed {args.to_seed}"
        else:
            if args.classes is None or args.to_class is None:
                raise DdpmkitError("--between classes needs --class A and --to-class B")
            images = pictures.interpolate_classes(sampler, args.classes, args.to_class, args.points, args.seed,
                                                  steps=args.steps, **common)
            names = [sampler.class_names[sampler.class_indices(c)[0]] for c in (args.classes, args.to_class)]
            title = f"{names[0]} -> {names[1]}"
        print(f"wrote {save_labelled_grid(images, args.output, nrow=args.points, row_labels=[title])}")
    elif args.command == "strip":
        image = pictures.denoising_strip(sampler, args.frames, args.classes, args.seed,
                                         stochastic_steps=args.stochastic_steps,
                                         deterministic_steps=args.deterministic_steps, **common)
        print(f"wrote {save_pil(image, args.output)}")
    elif args.command == "animate":
        out = Path(args.output_dir)
        seeds = list(range(args.seed, args.seed + args.per_class))
        classes = sampler.class_indices(args.classes) if args.classes is not None else [None]
        all_rows, written = [], []
        for c in tqdm(classes, desc="classes", unit="gif", disable=args.no_progress or len(classes) < 2):
            frames = pictures.denoising_frames(sampler, seeds, c, args.frames, args.sampler, args.steps,
                                               show=args.show, **common, **_solver_options(args))
            name = "unconditional" if c is None else f"class_{c}_{sampler.class_names[c]}"
            name = "".join(ch if ch.isalnum() or ch in "_-" else "_" for ch in name)
            written.append(save_gif(frames, out / f"{name}.gif", args.duration, args.hold))
            all_rows.append(frames)
        if len(classes) > 1:
            combined = [stack_rows([rows[i] for rows in all_rows]) for i in range(len(all_rows[0]))]
            written.append(save_gif(combined, out / "all.gif", args.duration, args.hold))
        names = ", ".join(p.name for p in written) if len(written) <= 3 else \
            f"{written[0].name}, ..., {written[-1].name}"
        print(f"wrote {len(written)} GIF{'s' if len(written) > 1 else ''} to {out}/: {names}")


def _classifier(args: argparse.Namespace) -> None:
    import torch

    from .config import DataConfig
    from .metrics.classifier import check_compatible, guided_accuracy, load_classifier, train_classifier
    from .sampling import DiffusionSampler

    if args.classifier_command == "train":
        start = time.perf_counter()
        data = DataConfig(dataset=args.dataset, root=args.root, image_size=args.image_size,
                          resize_mode=args.resize_mode, channels=args.channels)
        state = train_classifier(data, epochs=args.epochs, holdout=args.holdout, progress=not args.no_progress)
        path = Path(args.output or f"{args.dataset}_classifier.pt")
        with atomic_write(path) as f:
            torch.save(state, f)
        print(f"{args.dataset} classifier: test accuracy {state['test_accuracy']:.4f} on {state['test_images']} "
              f"images ({state['test_source']}), {state['train_images']} training images, "
              f"{time.perf_counter() - start:.0f} s; saved {path}")
        return
    sampler = DiffusionSampler(args.checkpoint, device=args.device)
    args.sampler = resolve_sampler(sampler.family, args.sampler)
    if not sampler.is_conditional:
        raise DdpmkitError("classifier judge needs a class-conditional model; this one was trained without labels")
    classifier, info = load_classifier(args.classifier or sampler.config.data.dataset)
    channels, size, _ = sampler.image_shape
    check_compatible(info, sampler.class_names, size, channels, sampler.config.data.resize_mode)
    classifier.to(sampler.device)
    results = []
    for w in args.guidance:
        r = guided_accuracy(sampler, classifier, w, args.per_class, args.sampler, args.steps, args.seed,
                            progress=not args.no_progress, **_solver_options(args))
        results.append(r)
        if distributed.is_main():
            print(f"guidance w={w:g}: {r['accuracy']:.3f} of {r['samples']} samples classified as the requested "
                  f"class")
    report = {"checkpoint": str(args.checkpoint), "step": sampler.step, "sampler": args.sampler,
              "steps": steps_taken(sampler.config, args.sampler, args.steps),
              **_solver_options(args),
              "per_class": args.per_class, "seed": args.seed, "classifier_sha256": info["sha256"],
              "classifier_test_accuracy": info["test_accuracy"], "results": results}
    if distributed.is_main():
        print(f"wrote {write_json(args.output, report)}" if args.output else
              "the results are the lines above; nothing written (add --output FILE.json to keep them)")


def _evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate, format_report, write_report
    from .metrics.domain import DEFAULT_CACHE

    report = evaluate(args.checkpoint, args.samples, num_samples=args.num_samples, sampler=args.sampler,
                      steps=args.steps, eta=args.eta, guidance=args.guidance, **_solver_options(args),
                      metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()), dataset=args.dataset,
                      data_root=args.data_root, resize_mode=args.resize_mode, split=args.split,
                      classifier=args.classifier, seed=args.seed, batch_size=args.batch_size, device=args.device,
                      precision=args.precision, compile=args.compile,
                      cache_dir=None if args.no_cache else DEFAULT_CACHE,
                      inception_weights=args.inception_weights,
                      inversion_steps=args.inversion_steps,
                      inversion_images=args.inversion_images, inversion_refine=args.inversion_refine,
                      lpips_net=args.lpips_net, lpips_weights=args.lpips_weights,
                      diversity_pairs=args.diversity_pairs, progress=not args.no_progress,
                      save_samples=Path(args.output_dir) / "samples.npz" if args.save_samples else None)
    if report is None:  # a process other than rank 0 under torchrun: its share of the samples is with rank 0
        return
    for note in report.get("notes", []):
        print(f"note: {note}")
    print(format_report(report))
    print(f"wrote {write_report(report, Path(args.output_dir) / 'metrics.json')}")


def _export(args: argparse.Namespace) -> None:
    from .export import export

    written = export(args.checkpoint, args.output, args.format, use_ema=not args.no_ema, metrics=args.metrics,
                     overwrite=args.overwrite)
    kind = "a diffusers folder (unet/, scheduler/, README.md)" if args.format == "diffusers" else "a safetensors file"
    print(f"wrote {written}: {kind}, {'raw' if args.no_ema else 'EMA'} weights")


# How many consecutive seeds from --seed on each command uses: the option that says.
SEED_COUNTS = {"sample": "num_samples", "animate": "per_class", "classifier judge": "per_class",
               "evaluate": "num_samples"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line -> its options, every value checked; UsageError (one line) otherwise."""
    args, extra = build_parser().parse_known_args(argv)
    command = " ".join(filter(None, [args.command, getattr(args, "classifier_command", None)]))
    if extra:
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}; see 'ddpmkit {command} --help'")
    count = SEED_COUNTS.get(command)
    if count and args.seed + getattr(args, count) - 1 > MAX_WHOLE:
        last = args.seed + getattr(args, count) - 1
        raise UsageError(f"--seed: seeds {args.seed} .. {last} go past {MAX_WHOLE}; use a smaller --seed; "
                         f"see 'ddpmkit {command} --help'")
    return args


# What str.splitlines() breaks at: escaped, so that an error is one line whatever a path or a value holds.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


def _error(message: str) -> int:
    where = f"[rank {distributed.rank()}] " if distributed.world_size() > 1 else ""
    print(f"ddpmkit: error: {where}{message.translate(_LINE_BREAKS)}", file=sys.stderr)
    return 2


# What each command does under torchrun; the rest run as one process.
DISTRIBUTED_COMMANDS = ("train", "distill", "sample", "evaluate", "classifier judge")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns 0, 2 after a one-line error on stderr, or 128 + the signal (130 for Ctrl-C, 143 for
    SIGTERM) when a stop was asked for."""
    import torch.distributed

    try:
        args = parse_args(argv)
        command = " ".join(filter(None, [args.command, getattr(args, "classifier_command", None)]))
        if distributed.launched() and command not in DISTRIBUTED_COMMANDS:
            raise UsageError(f"'ddpmkit {command}' runs as one process; start it without torchrun (torchrun runs "
                             f"{', '.join(DISTRIBUTED_COMMANDS)})")
        if args.command == "train":
            _train(args)
        elif args.command == "sample":
            _sample(args)
        elif args.command == "distill":
            _distill(args)
        elif args.command == "inpaint":
            _inpaint(args)
        elif args.command == "edit":
            _edit(args)
        elif args.command in ("interpolate", "strip", "animate", "plot-schedule"):
            _pictures(args)
        elif args.command == "evaluate":
            _evaluate(args)
        elif args.command == "classifier":
            _classifier(args)
        elif args.command == "export":
            _export(args)
        elif args.command == "demo":
            from .demo import serve

            serve(args.checkpoint, args.host, args.port, args.device, progress=not args.no_progress)
        elif args.command == "config":
            print(json.dumps(resolve_config(args.preset, args.config, args.overrides).to_dict(), indent=2))
    except HelpShown:
        return 0
    except DdpmkitError as err:
        return _error(str(err))
    except OSError as err:  # a full disk, a read-only folder: say which file, without a traceback
        return _error(f"{err.strerror or err} ({err.filename or 'no file name'})")
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: exit as a shell expects of that signal
        print("ddpmkit: interrupted", file=sys.stderr)
        return 128 + getattr(stop, "signum", signal.SIGINT)
    except RuntimeError as err:  # torch.distributed.DistError is one; gloo's lost connections are plain ones
        lost = isinstance(err, torch.distributed.DistError) or any(word in str(err).lower() for word in
                                                                   ("gloo", "nccl", "connection"))
        if not (distributed.active() and lost):  # a bug, not a lost process: show the traceback
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return _error(f"lost contact with another process ({first}); torchrun's report names the process that "
                      f"failed first and why. Run the same command again to resume from the last checkpoint")
    finally:
        distributed.shutdown()
    return 0
