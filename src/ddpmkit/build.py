"""Build the objects a Config describes: the U-Net's shape, the noise schedule, the optimizer, the device."""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch

from .config import Config, DiffusionConfig
from .errors import DdpmkitError
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
        dropout=m.dropout, norm_groups=m.norm_groups, num_classes=num_classes if m.class_conditional else 0,
        downsample=m.downsample, upsample=m.upsample, weight_standardization=m.weight_standardization,
        output_activation="sigmoid" if cfg.diffusion.loss == "bce" else "none")


def unet_from_dict(spec: dict) -> UNet:
    fields = {f.name for f in dataclasses.fields(UNetSpec)}
    clean = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k in fields}
    return UNet(UNetSpec(**clean))


def noise_schedule(d: DiffusionConfig) -> NoiseSchedule:
    if d.beta_schedule == "cosine":
        return NoiseSchedule(cosine_beta_schedule(d.num_timesteps, s=d.cosine_s))
    scale = 1000 / d.num_timesteps  # IDDPM: the DDPM betas are for T = 1000; scale them for other T
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


def sampler_options(cfg: Config, sampler: str, steps: int | None, eta: float = 0.0, clip: bool = True) -> dict:
    """Keyword arguments for ``SAMPLERS[sampler]`` that follow from a model's config: what it predicts, the reverse
    variance (ddpm), eta and the default of 50 steps (ddim), and the clip range."""
    options = {"steps": steps, "prediction": cfg.diffusion.prediction, "clip_range": clip_range(cfg) if clip else None}
    if sampler == "ddpm":
        options["variance"] = cfg.diffusion.variance
    if sampler == "ddim":
        options.update(eta=eta, steps=steps or 50)
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
