"""Build the objects a Config describes: the U-Net's shape, the noise schedule, the optimizer, the device."""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch

from .config import (COMPILE_MODES, DEFAULT_STEPS, Config, DiffusionConfig, linear_beta_scale, sampler_family,
                     steps_for)
from .paths import path_of
from .distill.sampling import sample_consistency, sample_distilled
from .errors import DdpmkitError
from .objectives import objective_of
from .samplers import SAMPLERS, SPACINGS, ImageNoise
from .samplers.continuous import sample_objective
from .schedule import NoiseSchedule, cosine_beta_schedule, linear_beta_schedule
from .unet import UNet, UNetSpec


def unet_spec(cfg: Config, channels: int, num_classes: int) -> UNetSpec:
    """The U-Net for this config and dataset (channels and classes come from the data)."""
    m = cfg.model
    if m.class_conditional and num_classes == 0:
        raise DdpmkitError(f"model.class_conditional=true needs a labelled dataset, but {cfg.data.dataset} at "
                           f"{cfg.data.root or 'its default place'} has no classes; use an image folder with one "
                           f"subfolder per class, or --set model.class_conditional=false")
    return UNetSpec(
        image_channels=channels, image_size=cfg.data.image_size, base_channels=m.base_channels,
        channel_mults=tuple(m.channel_mults), num_res_blocks=m.num_res_blocks,
        attention_resolutions=tuple(m.attention_resolutions), attention_heads=m.attention_heads,
        middle_attention=m.middle_attention,
        dropout=m.dropout, norm_groups=m.norm_groups, norm_eps=m.norm_eps,
        num_classes=num_classes if m.class_conditional else 0,
        downsample=m.downsample, upsample=m.upsample, weight_standardization=m.weight_standardization,
        output_activation="sigmoid" if cfg.diffusion.loss == "bce" else "none",
        embedding_sin_first=m.embedding_sin_first, embedding_frequency_shift=m.embedding_frequency_shift,
        guidance_input=m.guidance_input)


def spec_from_dict(spec: dict) -> UNetSpec:
    """A checkpoint's ``unet`` entry -> UNetSpec; keys of other ddpmkit versions are left out, missing ones take
    their defaults (which are what earlier versions built)."""
    fields = {f.name for f in dataclasses.fields(UNetSpec)}
    return UNetSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k in fields})


def unet_from_dict(spec: dict, source: str = "the checkpoint") -> UNet:
    """The U-Net a checkpoint's ``unet`` entry describes; a description this version cannot build is a one-line
    error naming ``source``."""
    try:
        return UNet(spec_from_dict(spec))
    except (TypeError, ValueError, KeyError, RuntimeError, ZeroDivisionError) as err:
        raise DdpmkitError(f"{source}: its network description cannot be built ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:120] if str(err) else ''}); it was written by another "
                           f"program or edited") from None


def noise_schedule(d: DiffusionConfig) -> NoiseSchedule:
    """The noise schedule ``d`` names: the one constructor of a schedule from its name and settings."""
    if d.beta_schedule == "cosine":
        return NoiseSchedule(cosine_beta_schedule(d.num_timesteps, s=d.cosine_s))
    scale = linear_beta_scale(d.num_timesteps)  # the config's betas are for T = 1000
    return NoiseSchedule(linear_beta_schedule(d.num_timesteps, d.beta_start * scale, d.beta_end * scale))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DdpmkitError(f"train.device: {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DdpmkitError(f"device {name} asked for, but PyTorch sees no CUDA GPU here; use --set train.device=cpu")
    return device


def clip_range(cfg: Config) -> tuple[float, float] | None:
    """The data range that predicted x_0 is clipped to while sampling, or None when clipping is off."""
    if not cfg.diffusion.clip_x0:
        return None
    return (0.0, 1.0) if cfg.data.zero_one else (-1.0, 1.0)


def steps_taken(cfg: Config, sampler: str, steps: int | None) -> int:
    """How many timesteps ``sampler`` visits for ``steps`` (None: its default, DEFAULT_STEPS capped at T, or all T),
    for reports."""
    T = cfg.diffusion.num_timesteps
    if steps is not None:
        return steps
    if sampler_family(cfg) == "student":  # the steps it was distilled for
        return cfg.distill.student_steps
    default = steps_for(cfg.diffusion.objective, sampler)
    if cfg.diffusion.objective != "ddpm":  # continuous noise levels: no T to cap at
        return default
    return T if default is None else min(default, T)


def sampler_options(cfg: Config, sampler: str, steps: int | None, eta: float = 0.0, clip: bool = True,
                    spacing: str | None = None, threshold: float | None = None) -> dict:
    """Keyword arguments for ``SAMPLERS[sampler]`` that follow from a model's config: what it predicts, the reverse
    variance (ddpm), eta (ddim), the default number of steps, the clip range or dynamic thresholding within it, and
    the timestep spacing (None: the samplers' default, trailing)."""
    if threshold is not None and not (0 < threshold < 1):
        raise DdpmkitError(f"threshold is the quantile of |x_0| for dynamic thresholding, between 0 and 1 (e.g. "
                           f"0.995), got {threshold}")
    if threshold is not None and not clip:
        raise DdpmkitError("dynamic thresholding works within the data range: it cannot be combined with --no-clip")
    if steps is None and sampler in DEFAULT_STEPS:
        steps = steps_taken(cfg, sampler, None)
    options = {"steps": steps, "prediction": cfg.diffusion.prediction,
               "clip_range": clip_range(cfg) if clip else None, "threshold": threshold}
    if spacing is not None:
        if spacing not in SPACINGS:
            raise DdpmkitError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
        options["spacing"] = spacing
    if sampler == "ddpm":
        options["variance"] = cfg.diffusion.variance
    if sampler == "ddim":
        options["eta"] = eta
    return options


def autocast(device: torch.device, precision: str):
    """The mixed-precision context for fp32 (none), bf16 or fp16 on ``device``."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def inference_precision(device: torch.device, precision: str) -> str:
    """``auto`` -> bf16 where the device computes it natively (CUDA GPUs that support it), else fp32; bf16 or fp32
    as asked otherwise. On a CPU bf16 runs but is usually slower than fp32 without AMX/AVX-512-BF16."""
    if precision == "auto":
        native = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if native else "fp32"
    if precision not in ("fp32", "bf16"):
        raise DdpmkitError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TensorFloat-32 (products rounded to a 10-bit mantissa, sums in fp32) for the matmuls and cuDNN convolutions
    that run in fp32 on a CUDA device: what bf16 autocast leaves in fp32, or the whole network of an fp32 run.
    The switch is process-wide, as PyTorch's is; on other devices nothing changes."""
    if device.type == "cuda":
        precision = "tf32" if enabled else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision


def sampling_compile_mode(device: torch.device, compile: str | bool | None) -> str | None:
    """A sampler's ``compile`` argument -> a torch.compile mode, or None for eager. ``auto`` (or True) means
    reduce-overhead on CUDA, where it replays the whole network as one CUDA graph per step, and default elsewhere."""
    if compile in (None, False, "none"):
        return None
    if compile in (True, "auto"):
        return "reduce-overhead" if device.type == "cuda" else "default"
    if compile not in COMPILE_MODES:
        raise DdpmkitError(f"compile must be none, auto or one of {', '.join(COMPILE_MODES)}; got {compile!r}")
    return compile


class CompiledDenoiser:
    """A network compiled once for sampling loops, called like the network: ``(x_t, t, y=None) -> tensor``.

    Under mode reduce-overhead on a GPU each call replays a CUDA graph whose output buffer the next replay
    overwrites, so every call opens a new graph step and returns a copy the sampler may keep (a denoising strip
    keeps its x_0 predictions). Shapes are static: one compilation per batch shape (guidance doubles the batch).
    """

    def __init__(self, model: UNet, mode: str):
        self.mode = mode
        self.compiled = torch.compile(model, mode=mode, dynamic=False)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, **inputs) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(x, t, y, **inputs).clone()


def run_sampler(cfg: Config, sampler: str, network, schedule: NoiseSchedule, x_T: torch.Tensor, *,
                steps: int | None = None, noise: ImageNoise | None = None, progress: bool = True,
                ddpm_options: dict | None = None, **kwargs) -> torch.Tensor:
    """One batch from x_T through ``sampler`` for the model ``cfg`` describes: a DDPM sampler (SAMPLERS) with
    ``ddpm_options`` (default: ``sampler_options`` for ``steps``), or, for an edm or flow model, that objective's
    Euler or Heun (samplers.continuous), or a distilled student's own (distill.sampling). ``network(x, level)`` has
    the labels bound in."""
    if sampler_family(cfg) == "student":
        steps = steps or cfg.distill.student_steps
        if cfg.distill.method == "consistency":
            return sample_consistency(path_of(cfg, schedule), network, x_T, steps=steps, noise=noise,
                                      clip_range=clip_range(cfg), progress=progress, **kwargs)
        return sample_distilled(path_of(cfg, schedule), network, x_T, steps=steps, clip_range=clip_range(cfg),
                                progress=progress, **kwargs)
    objective = objective_of(cfg.diffusion)
    if objective is not None:
        return sample_objective(cfg.diffusion.objective, objective, sampler, network, x_T, steps, noise, progress,
                                **kwargs)
    options = ddpm_options if ddpm_options is not None else sampler_options(cfg, sampler, steps)
    return SAMPLERS[sampler](network, schedule, x_T, noise=noise, progress=progress, **options, **kwargs)
