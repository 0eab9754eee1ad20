"""Samplers: plain functions ``fn(model, schedule, x_T, *, steps, prediction, clip_range, noise, ...)``."""
from .common import Denoiser, ImageNoise, StepCallback, spaced_timesteps
from .ddim import sample_ddim, sample_deterministic
from .ddim_inversion import invert_ddim
from .ddpm import VARIANCES, sample_ddpm

SAMPLERS = {
    "ddpm": sample_ddpm,
    "deterministic": sample_deterministic,
    "ddim": sample_ddim,
}

__all__ = ["SAMPLERS", "VARIANCES", "Denoiser", "ImageNoise", "StepCallback", "invert_ddim", "sample_ddim",
           "sample_ddpm", "sample_deterministic", "spaced_timesteps"]
