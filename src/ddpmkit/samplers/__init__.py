"""Samplers: plain functions ``fn(model, schedule, x_T, *, steps, prediction, clip_range, threshold, spacing, noise,
on_step, progress)`` for DDPM models (SAMPLERS), and ``sample_edm`` / ``sample_flow(objective, network, noise, *,
steps, heun, ...)`` for the continuous-level objectives of ``ddpmkit.objectives``."""
from .common import SPACINGS, Denoiser, ImageNoise, StepCallback, dynamic_threshold, spaced_timesteps
from .continuous import integrate, sample_edm, sample_flow
from .ddim import sample_ddim, sample_deterministic
from .ddim_inversion import invert_ddim
from .ddpm import VARIANCES, sample_ddpm
from .dpm_solver import sample_dpm_solver, sample_dpm_solver_2m, sample_dpm_solver_3m, sample_sde_dpm_solver
from .heun import sample_heun
from .unipc import VARIANTS as UNIPC_VARIANTS
from .unipc import sample_unipc

SAMPLERS = {
    "ddpm": sample_ddpm,
    "deterministic": sample_deterministic,
    "ddim": sample_ddim,
    "dpm++2m": sample_dpm_solver_2m,
    "dpm++3m": sample_dpm_solver_3m,
    "sde-dpm++2m": sample_sde_dpm_solver,
    "heun": sample_heun,
    "unipc": sample_unipc,
}

__all__ = ["SAMPLERS", "SPACINGS", "UNIPC_VARIANTS", "VARIANCES", "Denoiser", "ImageNoise", "StepCallback",
           "dynamic_threshold", "integrate", "invert_ddim", "sample_ddim", "sample_edm", "sample_flow", "sample_ddpm", "sample_deterministic", "sample_dpm_solver",
           "sample_dpm_solver_2m", "sample_dpm_solver_3m", "sample_heun", "sample_sde_dpm_solver", "sample_unipc",
           "spaced_timesteps"]
