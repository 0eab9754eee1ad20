"""ddpmkit: denoising diffusion probabilistic models on images."""
from .config import PRESETS, Config, resolve_config
from .errors import DdpmkitError
from .sampling import DiffusionSampler
from .schedule import NoiseSchedule, cosine_beta_schedule, linear_beta_schedule
from .train import train
from .unet import UNet, UNetSpec
from .version import __version__

__all__ = ["PRESETS", "Config", "DdpmkitError", "DiffusionSampler", "NoiseSchedule", "UNet", "UNetSpec",
           "__version__", "cosine_beta_schedule", "linear_beta_schedule", "resolve_config", "train"]
