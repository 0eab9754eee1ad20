"""Typed configuration: one dataclass per part, named presets, a config file and ``--set section.key=value``.

Resolution order: dataclass defaults < preset < config file (TOML or JSON) < ``--set`` overrides. The resolved
config is validated once, saved in the run directory and inside every checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DATASETS = ("mnist", "fashion_mnist", "cifar10", "celeba", "folder")
RESIZE_MODES = ("pad", "resize")
BETA_SCHEDULE_NAMES = ("linear", "cosine")
PREDICTIONS = ("eps", "x0", "v")
LOSSES = ("mse", "l1", "bce")
LOSS_WEIGHTINGS = ("none", "min_snr")  # = losses.LOSS_WEIGHTINGS
VARIANCES = ("posterior", "beta")
PRECISIONS = ("fp32", "bf16", "fp16")
# torch.compile modes; reduce-overhead also replays the network as CUDA graphs on a GPU (no effect on a CPU).
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
IN_MEMORY = ("auto", "yes", "no")
BAD_IMAGES = ("skip", "fail")
BEST_BY = ("heldout_loss", "fd")
SAMPLER_NAMES = ("ddpm", "deterministic", "ddim", "dpm++2m", "dpm++3m", "sde-dpm++2m", "heun", "unipc")  # = samplers.SAMPLERS
# The sampler of `sample`, `evaluate`, `animate`, `classifier judge` and DiffusionSampler.sample when none is named:
# the best, or level with the best, FD for 10-50 network evaluations on both measured models (docs/samplers.md)
# at its DEFAULT_STEPS.
DEFAULT_SAMPLER = "sde-dpm++2m"
# Steps a sampler takes when none are asked for, the one place these counts live: the sampler functions' defaults,
# and DiffusionSampler's and the command line's, which cap them at T (build.steps_taken). ddpm, deterministic: all T.
DEFAULT_STEPS = {"ddim": 50, "dpm++2m": 20, "dpm++3m": 20, "sde-dpm++2m": 20, "heun": 10, "unipc": 20}
# What a model is trained to do (ddpmkit.objectives): DDPM's discrete forward process (schedule, prediction, variance
# below), EDM's preconditioned denoiser, or rectified flow. The samplers of the continuous objectives, default first,
# with their default steps: Euler and Heun over their own levels (EDM's 18 levels = 35 evaluations with Heun, its
# CIFAR-10 setting; flow's 20 Euler steps), and DPM-Solver++ and UniPC on both objectives' paths by a change of
# variables (samplers/objective_solvers.py) at DDPM's step counts. The default is SDE-DPM-Solver++(2M), 20 steps, as
# for ddpm: in the objectives' race (docs/race.md, 2 seeds, 10 minutes) it gave both the lowest FD at 20 and at 50
# evaluations (flow 4.32 against euler's 5.40 at 20; edm 8.16 against heun's 10.16).
OBJECTIVES = ("ddpm", "edm", "flow")
# A student distilled from a teacher (ddpmkit.distill, `ddpmkit distill`) samples with its own sampler only,
# "distilled": a progressive student in exactly the steps it was distilled for, a consistency student in any number
# (multistep consistency sampling), its distilled steps by default.
STUDENT_SAMPLER = "distilled"
DISTILL_METHODS = ("progressive", "consistency")
# The teacher's DDIM steps (progressive's first round halves them, consistency's last round's targets take steps of
# 1/N) and the optimizer steps per round. On the quick model, 8 and 400 gave both methods a lower FD at every step
# count than 16 or 32 with rounds of 200, in less time (docs/fewstep.md); a larger model whose 8-step DDIM is poor
# wants more (the cifar10_gpu preset starts from 256).
DISTILL_TEACHER_STEPS = 8
DISTILL_ROUND_STEPS = 400
ALL_SAMPLER_NAMES = (*SAMPLER_NAMES, "euler", STUDENT_SAMPLER)  # what --sampler accepts; which fit a model:
                                                               # samplers_of(sampler_family(cfg))
_PATH_SOLVER_STEPS = {name: DEFAULT_STEPS[name] for name in ("sde-dpm++2m", "dpm++2m", "dpm++3m", "unipc")}
OBJECTIVE_SAMPLERS = {"edm": {**_PATH_SOLVER_STEPS, "heun": 18, "euler": 35},
                      "flow": {**_PATH_SOLVER_STEPS, "euler": 20, "heun": 10}}
# Which timesteps a sampler with fewer steps than T visits (samplers/common.py); trailing starts at t = T - 1.
SPACINGS = ("trailing", "leading", "linspace", "logsnr", "karras")


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"   # mnist, fashion_mnist, cifar10, celeba or folder
    root: str = ""                   # folder to read from (or download to); "" = the default places, see data.py
    image_size: int = 32             # side of the square images the model sees
    resize_mode: str = "pad"         # 28 -> 32 by zero-padding ("pad", keeps pixels exact) or by "resize"
    hflip: bool = False              # random horizontal flips (on for natural images, off for digits)
    channels: int = 0                # 0 = the dataset's own (1 for (Fashion-)MNIST, 3 otherwise); 1 or 3 converts
    zero_one: bool = False           # scale pixels to [0, 1] instead of [-1, 1]; required by the bce loss
    max_images: int = 0              # use only N training images, a seeded choice keeping each class's share; 0 = all
    in_memory: str = "auto"          # hold the whole set as one tensor on the device: auto (if < 2 GB), yes, no
    num_workers: int = 2             # DataLoader workers when not in memory
    download: bool = True            # let torchvision download the dataset when it is not found locally
    bad_images: str = "skip"         # unreadable files in an image folder: skip (leave out, say so) or fail


@dataclass
class ModelConfig:
    base_channels: int = 64                     # channels at the first level
    channel_mults: tuple[int, ...] = (1, 2, 2)  # channels per level = base_channels * mult; len = number of levels
    num_res_blocks: int = 2                     # residual blocks per level
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sides with self-attention
    middle_attention: bool = True               # self-attention in the middle block (DDPM); false with
                                                # attention_resolutions=() = UNet-mini, attention-free throughout
    attention_heads: int = 1                    # heads of each self-attention layer
    dropout: float = 0.0                        # dropout in residual blocks (DDPM CIFAR-10: 0.1)
    norm_groups: int = 32                       # GroupNorm groups; must divide every channel count
    norm_eps: float = 1e-5                      # GroupNorm epsilon (the DDPM authors' code: 1e-6)
    downsample: str = "conv"                    # conv (strided 3x3), conv_asymmetric (padded after, as TensorFlow's
                                                # SAME in the DDPM authors' code) or space_to_depth
    upsample: str = "nearest"                   # nearest (+ 3x3 conv) or transposed (4x4 transposed conv)
    weight_standardization: bool = False        # weight-standardised 3x3 convolutions
    embedding_sin_first: bool = False           # timestep embedding [sin, cos] (the DDPM authors' code), not [cos, sin]
    embedding_frequency_shift: float = 0.0      # its frequencies 10000^(-k / (half - shift)); the authors' code: 1
    class_conditional: bool = False             # feed labels through a label embedding (needs a labelled dataset)
    guidance_input: bool = False                # take the guidance weight w as an input (a guidance-distilled
                                                # student, Meng et al. 2023); needs class_conditional


@dataclass
class DiffusionConfig:
    objective: str = "ddpm"          # ddpm, edm or flow (OBJECTIVES); the keys up to label_dropout are ddpm's
    num_timesteps: int = 1000        # T
    beta_schedule: str = "linear"    # linear (DDPM) or cosine (IDDPM)
    beta_start: float = 1e-4         # linear schedule's first beta at T = 1000 (scaled by 1000 / T, as in IDDPM)
    beta_end: float = 0.02           # linear schedule's last beta at T = 1000 (scaled by 1000 / T)
    cosine_s: float = 0.008          # cosine schedule's offset s (IDDPM eq. 17)
    prediction: str = "eps"          # what the network predicts: eps, x0 or v
    loss: str = "mse"                # mse, l1, or bce (only with prediction = x0 and data.zero_one = true)
    loss_weighting: str = "none"     # none (each prediction's own), or min_snr: min(SNR, gamma) on the x_0 error
                                     # whatever the prediction (Hang et al. 2023); mse and l1 losses only
    min_snr_gamma: float = 5.0       # its gamma (the paper's 5)
    variance: str = "posterior"      # ancestral sampling's sigma_t^2: posterior (tilde-beta_t) or beta (beta_t)
    clip_x0: bool = True             # clip predicted x_0 to the data range while sampling
    label_dropout: float = 0.1       # conditional models: probability of training on the null label instead


def sampler_family(cfg: "Config") -> str:
    """Which samplers draw a model: those of its objective (ddpm, edm, flow), or "student" for a distilled student
    (distill.method set), which has only its own."""
    return "student" if cfg.distill.method else cfg.diffusion.objective


def samplers_of(family: str) -> tuple[str, ...]:
    """The samplers a model of ``family`` (an objective, or "student": ``sampler_family``) can be drawn with."""
    if family == "student":
        return (STUDENT_SAMPLER,)
    return SAMPLER_NAMES if family == "ddpm" else tuple(OBJECTIVE_SAMPLERS[family])


def default_sampler(family: str) -> str:
    """The sampler used when none is named: DEFAULT_SAMPLER for ddpm, the first of OBJECTIVE_SAMPLERS for edm and
    flow, a student's own."""
    if family == "student":
        return STUDENT_SAMPLER
    return DEFAULT_SAMPLER if family == "ddpm" else next(iter(OBJECTIVE_SAMPLERS[family]))


def resolve_sampler(family: str, name: str | None) -> str:
    """``name``, or the family's default sampler when it is None or "" (the config's "its default")."""
    return name or default_sampler(family)


def steps_for(family: str, sampler: str) -> int | None:
    """The steps ``sampler`` takes by default for a model of ``family`` (None: all T; for a student, the steps it
    was distilled for, which its config holds: build.steps_taken)."""
    if family == "student":
        return None
    return DEFAULT_STEPS.get(sampler) if family == "ddpm" else OBJECTIVE_SAMPLERS[family][sampler]


def linear_beta_scale(num_timesteps: int) -> float:
    """The factor by which the linear schedule over T steps multiplies diffusion.beta_start and beta_end, which are
    DDPM's betas for T = 1000: 1000 / T (IDDPM's get_named_beta_schedule), so that alpha-bar_T stays near DDPM's
    whatever T. The one place of this rule: building, validating, exporting and describing a schedule all call it."""
    return 1000 / num_timesteps


@dataclass
class TrainConfig:
    steps: int = 50_000              # optimizer steps
    batch_size: int = 128            # the global batch: images per optimizer step, over all processes and micro-batches
    grad_accum: int = 1              # micro-batches per process and step, of batch_size / (processes x grad_accum) each
    lr: float = 2e-4                 # peak learning rate (DDPM: 2e-4)
    weight_decay: float = 0.0        # AdamW decoupled weight decay
    adam_betas: tuple[float, ...] = (0.9, 0.999)
    warmup_steps: int = 1000         # linear warm-up from 0 to lr
    min_lr_ratio: float = 0.1        # cosine decay ends at lr * min_lr_ratio; 1.0 = constant after warm-up
    grad_clip: float = 1.0           # clip the global gradient norm; 0 = off
    ema_decay: float = 0.9999        # EMA decay per step of the weights used for sampling
    ema_halflife_images: int = 0     # or the EMA's half-life in training images (EDM), whatever the batch; 0 = decay
    ema_warmup: bool = True          # decay = min(ema_decay, (1 + step) / (10 + step)) so early EMA tracks the model
    precision: str = "fp32"          # fp32, bf16 (autocast) or fp16 (autocast + gradient scaler)
    compile: bool = False            # torch.compile the network
    compile_mode: str = "default"    # its torch.compile mode: default, reduce-overhead (CUDA graphs), max-autotune, ...
    tf32: bool = True                # CUDA: TensorFloat-32 for the matmuls and convolutions left in fp32
    channels_last: bool = True       # NHWC memory layout: faster convolutions on CPU (oneDNN) and tensor cores
    seed: int = 0                    # seeds weights, data order and noise: same seed, same run
    device: str = "auto"             # auto (cuda if present, else cpu), cpu, cuda, cuda:1, mps
    log_every: int = 50              # steps between log lines, TensorBoard scalars and loss reads
    sample_every: int = 5000         # steps between sample grids; 0 = only at the end
    checkpoint_every: int = 5000     # steps between checkpoints (checkpoints/step_N.pt, latest.pt links the newest)
    keep_checkpoints: int = 3        # periodic checkpoints kept; older ones are deleted (best.pt, final.pt stay)
    max_nonfinite_steps: int = 50    # stop after this many steps in a row with a NaN/inf loss or gradient; 0 = never
    eval_every: int = 5000           # steps between held-out loss evaluations (for 'best'); 0 = off
    eval_images: int = 512           # held-out images for the evaluation loss
    best_by: str = "heldout_loss"    # what 'best' means: lowest EMA held-out loss, or lowest in-training fd
    fd_every: int = 0                # steps between FD-<dataset>-classifier of the EMA model (MNIST-like data); 0 = off
    fd_samples: int = 500            # samples for the in-training FD (seeds 0..N-1, classes in blocks)
    fd_sampler: str = ""             # their sampler; "" = the objective's default (default_sampler); deterministic
                                     # ones stall on young models
    fd_steps: int = DEFAULT_STEPS[DEFAULT_SAMPLER]  # and its steps
    fd_classifier: str = ""          # judge weights for the FD; "" = the ones shipped for the dataset
    grid_images: int = 64            # images in each training sample grid
    grid_sampler: str = ""           # sampler for training grids; "" = the objective's default (default_sampler)
    grid_steps: int = DEFAULT_STEPS[DEFAULT_SAMPLER]  # its number of steps


@dataclass
class DistillConfig:
    """A student distilled from a teacher (``ddpmkit distill``); method "" (the default) is a model trained on data.
    Each round of distillation is one run. A progressive round's student learns in ``student_steps`` what its
    teacher does in ``teacher_steps`` = 2 ``student_steps`` DDIM steps; a consistency round's student learns to map
    every point of the teacher's ``teacher_steps``-step DDIM trajectories to their end."""
    method: str = ""                 # "" (not a student), progressive or consistency (DISTILL_METHODS)
    teacher: str = ""                # the teacher's checkpoint (what --checkpoint reads)
    start: str = ""                  # the checkpoint whose weights the student starts from ("" = the teacher's)
    student_steps: int = 0           # K: the steps the student samples in by default, with the "distilled" sampler
    teacher_steps: int = 0           # the DDIM steps of the teacher's trajectories in this round's targets
    max_guidance: float = 0.0        # conditional teachers: the student takes the guidance w as input and learns
                                     # the teacher guided with every w in [0, max_guidance] (0: the plain
                                     # conditional model)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The U-Net of the CPU presets: UNet-mini, attention-free throughout (the middle block too: on 2 CPU cores its
# attention at 8x8 costs little, 147-156 against 148 training images/s, and the race saw no loss without it),
# small enough for ~110-190 training images/s on 2 cores.
CPU_UNET = {"base_channels": 16, "channel_mults": (1, 2, 4), "num_res_blocks": 1, "attention_resolutions": (),
            "middle_attention": False, "norm_groups": 8, "class_conditional": True}

# The objective of the CPU presets, measured in the timed race against diffusers (docs/race.md): v-prediction
# (Salimans & Ho 2022) with Min-SNR-5 weighting (Hang et al. 2023) gave a 3-minute model's DDIM-20 samples FD 16.0
# against 24.4 for plain eps (L_simple), and v keeps deterministic samplers clear of the speckle that eps models
# get from a noise prediction of fixed norm (docs/samplers.md).
CPU_OBJECTIVE = {"prediction": "v", "loss_weighting": "min_snr", "min_snr_gamma": 5.0}

# The quick recipe's optimisation: ~5 minutes of batch 32 at a high learning rate on 2 CPU cores.
QUICK_TRAIN = {"steps": 1000, "batch_size": 32, "lr": 2e-3, "warmup_steps": 100, "min_lr_ratio": 0.05,
               "ema_decay": 0.995, "log_every": 25, "sample_every": 0, "checkpoint_every": 250, "eval_every": 250,
               "eval_images": 256}

# The CIFAR-10 U-Net of DDPM (Ho et al. 2020, appendix B): 35.7M parameters, unconditional. The defaults above
# already give the rest of it: 1 attention head, GroupNorm(32), strided-conv downsampling, nearest + conv upsampling.
DDPM_CIFAR10_UNET = {"base_channels": 128, "channel_mults": (1, 2, 2, 2), "num_res_blocks": 2,
                     "attention_resolutions": (16,), "dropout": 0.1}

# Named presets: only what differs from the defaults above.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # A small attention-free, class-conditional U-Net that draws recognisable clothes after ~5 minutes on 2 CPU cores,
    # trained with rectified flow: in the objectives' race (docs/race.md, 2 seeds, 10 minutes of one core) its FD at
    # 20 evaluations was 0.72x the ddpm recipe's (quick_ddpm) with a higher class accuracy, and edm's was worse.
    "quick": {
        "data": {"dataset": "fashion_mnist"},
        "model": CPU_UNET,
        "diffusion": {"objective": "flow"},
        "train": QUICK_TRAIN,
    },
    # The quick recipe with the DDPM process (v-prediction, Min-SNR-5), the preset `quick` was before the race of
    # issue #25; the DDPM samplers' measurements in docs/samplers.md were made on it.
    "quick_ddpm": {
        "data": {"dataset": "fashion_mnist"},
        "model": CPU_UNET,
        "diffusion": CPU_OBJECTIVE,
        "train": {**QUICK_TRAIN, "grid_sampler": "ddpm", "grid_steps": 100},
    },
    # The quick recipe with EDM's preconditioning, and with rectified flow (the same as quick; the race's name for it).
    "quick_edm": {
        "data": {"dataset": "fashion_mnist"},
        "model": CPU_UNET,
        "diffusion": {"objective": "edm"},
        "train": QUICK_TRAIN,
    },
    "quick_flow": {
        "data": {"dataset": "fashion_mnist"},
        "model": CPU_UNET,
        "diffusion": {"objective": "flow"},
        "train": QUICK_TRAIN,
    },
    # The quick recipe unconditional (no labels, every step trains the one model), ~10 minutes on 2 CPU cores, with
    # rectified flow: in the objectives' race (docs/race.md, 2 seeds) its FD at 20 evaluations was 0.75x the ddpm
    # recipe's (v + Min-SNR-5) on the same network and time.
    "quick_uncond": {
        "data": {"dataset": "fashion_mnist"},
        "model": {**CPU_UNET, "class_conditional": False},
        "diffusion": {"objective": "flow"},
        "train": {**QUICK_TRAIN, "steps": 3000, "checkpoint_every": 500, "eval_every": 500},
    },
    # The quick U-Net trained ~30 minutes on MNIST (e.g. the 10,000 images of shared/data/mnist-10k) on 2 CPU cores.
    "mnist_cpu": {
        "data": {"dataset": "mnist"},
        "model": CPU_UNET,
        "diffusion": CPU_OBJECTIVE,
        "train": {"steps": 5000, "batch_size": 32, "lr": 2e-3, "warmup_steps": 200, "min_lr_ratio": 0.05,
                  "ema_decay": 0.999, "log_every": 50, "sample_every": 1000, "checkpoint_every": 500,
                  "eval_every": 500, "eval_images": 512, "grid_sampler": "ddpm", "grid_steps": 100},
    },
    "mnist": {
        "data": {"dataset": "mnist"},
        "model": {"base_channels": 64, "channel_mults": (1, 2, 2), "num_res_blocks": 2,
                  "attention_resolutions": (16,), "class_conditional": True},
        "train": {"steps": 30_000, "batch_size": 128, "lr": 2e-4, "warmup_steps": 1000, "ema_decay": 0.9995},
    },
    "fashion": {
        "data": {"dataset": "fashion_mnist"},
        "model": {"base_channels": 64, "channel_mults": (1, 2, 2), "num_res_blocks": 2,
                  "attention_resolutions": (16,)},
        "train": {"steps": 50_000, "batch_size": 128, "lr": 2e-4, "warmup_steps": 1000, "ema_decay": 0.9995},
    },
    # DDPM paper, CIFAR-10 (Ho et al. 2020, §4 and appendix B): its unconditional 35.7M-parameter U-Net, T = 1000
    # linear betas (the defaults), 800k steps at batch 128, lr 2e-4 after 5000 warm-up steps, float32.
    "ddpm-cifar10": {
        "data": {"dataset": "cifar10", "hflip": True},
        "model": DDPM_CIFAR10_UNET,
        "train": {"steps": 800_000, "batch_size": 128, "lr": 2e-4, "warmup_steps": 5000, "min_lr_ratio": 1.0,
                  "ema_decay": 0.9999, "sample_every": 20_000, "checkpoint_every": 10_000, "eval_every": 10_000},
    },
    # The DDPM CIFAR-10 recipe with a class embedding (for classifier-free guidance) and bf16 autocast.
    "cifar10": {
        "data": {"dataset": "cifar10", "hflip": True},
        "model": {**DDPM_CIFAR10_UNET, "class_conditional": True},
        "train": {"steps": 800_000, "batch_size": 128, "lr": 2e-4, "warmup_steps": 5000, "min_lr_ratio": 1.0,
                  "ema_decay": 0.9999, "precision": "bf16", "sample_every": 20_000, "checkpoint_every": 10_000,
                  "eval_every": 10_000},
    },
    # CelebA center-cropped to 64x64, the DDPM CIFAR-10 recipe with one more level for the larger images.
    "celeba64": {
        "data": {"dataset": "celeba", "image_size": 64, "hflip": True, "in_memory": "no"},
        "model": {"base_channels": 128, "channel_mults": (1, 2, 2, 2, 4), "num_res_blocks": 2,
                  "attention_resolutions": (16,), "dropout": 0.1},
        "train": {"steps": 500_000, "batch_size": 64, "lr": 2e-4, "warmup_steps": 5000, "min_lr_ratio": 1.0,
                  "ema_decay": 0.9999, "precision": "bf16", "sample_every": 20_000, "checkpoint_every": 10_000,
                  "eval_every": 10_000},
    },
}


# -- building a Config from dicts, files and strings --------------------------------------------------------------

INT64 = 2**63  # whole numbers must fit an int64, as torch (tensor sizes, seeds) and numpy need


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so that an error message stays one short line."""
    try:
        text = repr(value)
    except ValueError:  # an int with more digits than Python converts to text (sys.get_int_max_str_digits)
        text = "<an integer too long to print>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Convert ``value`` (from TOML, JSON or a --set string) to the field type ``typ``, or raise ConfigError."""
    origin = typing.get_origin(typ)
    try:
        if origin is tuple:
            item_type = typing.get_args(typ)[0]
            if isinstance(value, str):
                text = value.strip().strip("[]()")
                value = [] if text.lower() in ("", "none") else [v for v in text.split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            return tuple(_coerce(key, v, item_type) for v in value)
        if typ is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.strip().lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(str(value).replace("_", "")) if isinstance(value, str) else int(value)
            if not -INT64 <= number < INT64:
                raise ConfigError(f"{key}: whole numbers must lie between -2**63 and 2**63 - 1, got {_show(number)}")
            return number
        if typ is float:
            if isinstance(value, bool):
                raise ValueError
            try:
                number = float(value)
            except OverflowError:  # an int beyond the float range
                number = math.inf
            if not math.isfinite(number):  # NaN or infinite: JSON (NaN, Infinity), TOML (nan, inf) and --set
                raise ConfigError(f"{key}: must be a finite number, got {_show(value)}")
            return number
        if typ is str:
            if not isinstance(value, str):
                raise ValueError
            return value.strip()
    except (TypeError, ValueError):
        pass
    else:
        raise ConfigError(f"{key}: unsupported field type {typ}")
    raise ConfigError(f"{key}: {_show(value)} is not a valid {getattr(typ, '__name__', str(typ))}")


def merge_into(cfg: Config, overrides: dict[str, Any], source: str) -> Config:
    """Apply a nested ``{section: {key: value}}`` dict onto ``cfg`` in place; unknown keys are errors."""
    sections = typing.get_type_hints(Config)  # section name -> dataclass
    for section, values in overrides.items():
        if section not in sections:
            raise ConfigError(f"{source}: unknown section {_show(section)}; allowed: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {_show(section)} must be a table of key = value")
        types = typing.get_type_hints(sections[section])
        target = getattr(cfg, section)
        for key, value in values.items():
            if key not in types:
                name = f"{section}.{key}"  # quoted when it holds a line break or the like
                name = name if name.isprintable() and len(name) <= 60 else _show(name)
                raise ConfigError(f"{source}: unknown key {name}; allowed: {', '.join(types)}")
            setattr(target, key, _coerce(f"{section}.{key}", value, types[key]))
    return cfg


def parse_set(assignments: list[str]) -> dict[str, dict[str, str]]:
    """``["train.lr=1e-4", "model.channel_mults=1,2,2"]`` -> ``{"train": {"lr": "1e-4"}, ...}``."""
    nested: dict[str, dict[str, str]] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.lr=1e-4")
        nested.setdefault(section, {})[name] = value
    return nested


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    if path.suffix not in (".json", ".toml"):
        raise ConfigError(f"config file {path}: use a .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
        d = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    # ValueError: the parsers' own errors, bad UTF-8 and integers of more than 4300 digits
    except (ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else " ".join(str(err).splitlines())
        raise ConfigError(f"config file {path} could not be parsed: {reason}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"config file {path}: expected a table of sections, e.g. {{\"train\": {{\"lr\": 1e-4}}}}")
    return d


def config_from_dict(d: dict[str, Any], source: str = "config") -> Config:
    return validate(merge_into(Config(), d, source))


def resolve_config(preset: str | None = None, config_file: str | Path | None = None,
                   overrides: list[str] | None = None) -> Config:
    """Defaults < preset < config file < --set overrides, validated."""
    cfg = Config()
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        merge_into(cfg, PRESETS[preset], f"preset {preset}")
    if config_file is not None:
        merge_into(cfg, load_config_file(config_file), str(config_file))
    if overrides:
        merge_into(cfg, parse_set(overrides), "--set")
    return check_trainable(validate(cfg))


def check_trainable(cfg: Config) -> Config:
    """Refuse settings that ``validate`` lets through for models already trained (a checkpoint of an earlier
    version still samples, evaluates and exports) but that no new training may use."""
    f = cfg.diffusion
    if f.loss_weighting == "min_snr" and f.loss != "mse":
        raise ConfigError(f"diffusion.loss_weighting: min_snr converts squared errors between predictions (an eps "
                          f"error is sqrt(SNR) times the x_0 error, squared: SNR), so it needs diffusion.loss=mse; "
                          f"use loss=mse, or loss_weighting=none with loss={f.loss}")
    return cfg


# -- validation ------------------------------------------------------------------------------------------------------

def _check_distill(cfg: Config) -> None:
    s = cfg.distill
    if not s.method:
        if s.teacher or s.student_steps or s.start or s.teacher_steps or s.max_guidance:
            raise ConfigError("distill.teacher, start, student_steps, teacher_steps and max_guidance describe a "
                              "student: set distill.method too (`ddpmkit distill` does), or leave them empty")
        if cfg.model.guidance_input:
            raise ConfigError("model.guidance_input: only a guidance-distilled student takes w as input (`ddpmkit "
                              "distill --max-guidance`); set it to false")
        return
    _choice("distill.method", s.method, DISTILL_METHODS)
    if s.student_steps < 1:
        raise ConfigError(f"distill.student_steps: a student takes at least 1 step, got {s.student_steps}")
    if not s.teacher:
        raise ConfigError("distill.teacher: a student needs its teacher's checkpoint")
    if s.teacher_steps < 1:
        raise ConfigError(f"distill.teacher_steps: the teacher's trajectories take at least 1 step, got "
                          f"{s.teacher_steps}")
    if not (math.isfinite(s.max_guidance) and s.max_guidance >= 0):
        raise ConfigError(f"distill.max_guidance: must be a finite number >= 0, got {s.max_guidance}")
    if cfg.model.guidance_input != (s.max_guidance > 0):
        raise ConfigError("model.guidance_input and distill.max_guidance go together: a student takes w as input "
                          "exactly when it learns guidance (max_guidance > 0)")
    if s.max_guidance and not cfg.model.class_conditional:
        raise ConfigError("distill.max_guidance: guidance needs a conditional teacher; set it to 0")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: {_show(value)} is not allowed; choose one of {', '.join(allowed)}")


def _positive(key: str, value: float, allow_zero: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def validate(cfg: Config) -> Config:
    d, m, f, t = cfg.data, cfg.model, cfg.diffusion, cfg.train
    _choice("data.dataset", d.dataset, DATASETS)
    _choice("data.resize_mode", d.resize_mode, RESIZE_MODES)
    _choice("data.in_memory", d.in_memory, IN_MEMORY)
    _choice("data.bad_images", d.bad_images, BAD_IMAGES)
    _choice("model.downsample", m.downsample, ("conv", "conv_asymmetric", "space_to_depth"))
    _choice("model.upsample", m.upsample, ("nearest", "transposed"))
    _choice("diffusion.beta_schedule", f.beta_schedule, BETA_SCHEDULE_NAMES)
    _choice("diffusion.prediction", f.prediction, PREDICTIONS)
    _choice("diffusion.loss", f.loss, LOSSES)
    _choice("diffusion.loss_weighting", f.loss_weighting, LOSS_WEIGHTINGS)
    _choice("diffusion.variance", f.variance, VARIANCES)
    _choice("train.precision", t.precision, PRECISIONS)
    _choice("train.best_by", t.best_by, BEST_BY)
    _choice("train.compile_mode", t.compile_mode, COMPILE_MODES)
    _choice("diffusion.objective", f.objective, OBJECTIVES)
    _check_distill(cfg)
    family = sampler_family(cfg)
    for key, name in (("train.grid_sampler", t.grid_sampler), ("train.fd_sampler", t.fd_sampler)):
        if name and name not in samplers_of(family):
            what = "a distilled student" if family == "student" else f"{f.objective} models"
            raise ConfigError(f"{key}: {_show(name)} is not a sampler of {what}; choose one of "
                              f"{', '.join(samplers_of(family))}, or \"\" for its default")
    if t.fd_every and d.dataset not in ("mnist", "fashion_mnist"):
        raise ConfigError(f"train.fd_every: the in-training FD uses the judge classifiers shipped for mnist and "
                          f"fashion_mnist, not {d.dataset}; set train.fd_every=0")
    if t.fd_every and not 2 <= t.fd_samples:
        raise ConfigError(f"train.fd_samples: need at least 2 samples, got {t.fd_samples}")
    if t.fd_every and f.objective == "ddpm" and t.fd_steps > f.num_timesteps:
        raise ConfigError(f"train.fd_steps: {t.fd_steps} is more than diffusion.num_timesteps={f.num_timesteps}")
    if t.best_by == "fd" and not t.fd_every:
        raise ConfigError("train.best_by=fd needs the in-training FD: set train.fd_every to a number of steps")
    for key, value in [("data.image_size", d.image_size), ("model.base_channels", m.base_channels),
                       ("model.num_res_blocks", m.num_res_blocks), ("model.attention_heads", m.attention_heads),
                       ("model.norm_groups", m.norm_groups), ("diffusion.num_timesteps", f.num_timesteps),
                       ("train.steps", t.steps), ("train.batch_size", t.batch_size), ("train.grad_accum", t.grad_accum),
                       ("train.lr", t.lr), ("train.log_every", t.log_every), ("train.checkpoint_every", t.checkpoint_every),
                       ("train.keep_checkpoints", t.keep_checkpoints),
                       ("train.grid_images", t.grid_images), ("train.grid_steps", t.grid_steps)]:
        _positive(key, value)
    for key, value in [("data.max_images", d.max_images), ("data.num_workers", d.num_workers),
                       ("model.dropout", m.dropout), ("train.weight_decay", t.weight_decay),
                       ("train.warmup_steps", t.warmup_steps), ("train.grad_clip", t.grad_clip),
                       ("train.sample_every", t.sample_every), ("train.eval_every", t.eval_every),
                       ("train.fd_every", t.fd_every), ("train.max_nonfinite_steps", t.max_nonfinite_steps),
                       ("train.eval_images", t.eval_images), ("train.ema_halflife_images", t.ema_halflife_images)]:
        _positive(key, value, allow_zero=True)
    if d.channels not in (0, 1, 3):
        raise ConfigError(f"data.channels: must be 0 (the dataset's own), 1 or 3, got {d.channels}")
    if not m.channel_mults or any(c <= 0 for c in m.channel_mults):
        raise ConfigError(f"model.channel_mults: need one or more positive integers, got {m.channel_mults}")
    levels = len(m.channel_mults)
    if d.image_size % 2 ** (levels - 1):
        raise ConfigError(f"data.image_size: {d.image_size} cannot be halved {levels - 1} times "
                          f"(model.channel_mults has {levels} levels); use a multiple of {2 ** (levels - 1)}")
    for c in {m.base_channels * k for k in m.channel_mults} | {m.base_channels}:
        if c % m.norm_groups:
            raise ConfigError(f"model.norm_groups: {m.norm_groups} does not divide {c} channels; "
                              f"use a divisor of every base_channels * channel_mults value")
        if (m.attention_resolutions or m.middle_attention) and c % m.attention_heads:
            raise ConfigError(f"model.attention_heads: {m.attention_heads} does not divide {c} channels")
    if not (math.isfinite(m.norm_eps) and 0 < m.norm_eps < 1):
        raise ConfigError(f"model.norm_eps: must be in (0, 1), e.g. 1e-5, got {m.norm_eps}")
    if not 0 <= m.embedding_frequency_shift < m.base_channels // 2:
        raise ConfigError(f"model.embedding_frequency_shift: must be >= 0 and below half the embedding width "
                          f"({m.base_channels // 2}), got {m.embedding_frequency_shift}")
    if not 0 <= m.dropout < 1:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {m.dropout}")
    if not 0 <= f.label_dropout < 1:
        raise ConfigError(f"diffusion.label_dropout: must be in [0, 1), got {f.label_dropout}")
    if not 0 < f.beta_start < f.beta_end < 1:
        raise ConfigError(f"diffusion.beta_start/beta_end: need 0 < beta_start < beta_end < 1, "
                          f"got {f.beta_start}, {f.beta_end}")
    if f.beta_schedule == "linear" and f.beta_end * linear_beta_scale(f.num_timesteps) >= 1:
        raise ConfigError(f"diffusion.num_timesteps: the linear schedule scales beta_end={f.beta_end} by "
                          f"1000/T to {f.beta_end * linear_beta_scale(f.num_timesteps):.3g} >= 1 at "
                          f"T={f.num_timesteps}; use a larger T, a smaller beta_end, or diffusion.beta_schedule=cosine")
    if not 0 < f.cosine_s < 1:
        raise ConfigError(f"diffusion.cosine_s: must be in (0, 1), got {f.cosine_s}")
    if f.objective == "ddpm" and family != "student" and t.grid_steps > f.num_timesteps:
        raise ConfigError(f"train.grid_steps: {t.grid_steps} is more than diffusion.num_timesteps={f.num_timesteps}")
    if t.eval_every and not t.eval_images:
        raise ConfigError("train.eval_images: must be >= 1 while train.eval_every > 0 (set eval_every=0 to skip)")
    if f.objective != "ddpm" and (f.loss, f.loss_weighting) != ("mse", "none"):
        raise ConfigError(f"diffusion.objective={f.objective} has its own loss and weighting (EDM: eq. 2 with "
                          f"Table 1's lambda; flow: the velocity's squared error), not loss={f.loss} with "
                          f"loss_weighting={f.loss_weighting}; --set diffusion.loss=mse --set "
                          f"diffusion.loss_weighting=none")
    if f.loss == "bce" and not (f.prediction == "x0" and d.zero_one):
        raise ConfigError("diffusion.loss: bce compares probabilities, so it needs diffusion.prediction=x0 and "
                          "data.zero_one=true (images in [0, 1]); use mse or l1 otherwise")
    if f.loss_weighting == "min_snr" and not (math.isfinite(f.min_snr_gamma) and f.min_snr_gamma > 0):
        raise ConfigError(f"diffusion.min_snr_gamma: must be > 0 (the paper's 5), got {f.min_snr_gamma}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay: must be in [0, 1), got {t.ema_decay}")
    if not 0 <= t.min_lr_ratio <= 1:
        raise ConfigError(f"train.min_lr_ratio: must be in [0, 1], got {t.min_lr_ratio}")
    if len(t.adam_betas) != 2 or not all(0 <= b < 1 for b in t.adam_betas):
        raise ConfigError(f"train.adam_betas: need two values in [0, 1), got {t.adam_betas}")
    return cfg
