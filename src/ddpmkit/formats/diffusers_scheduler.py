"""ddpmkit's noise schedule in diffusers' terms: a DDPMScheduler config, both ways.

| ddpmkit ``DiffusionConfig``                         | diffusers scheduler config                          |
|-----------------------------------------------------|-----------------------------------------------------|
| num_timesteps                                       | num_train_timesteps                                 |
| linear, beta_start/beta_end at T = 1000, x 1000 / T | beta_schedule linear, beta_start/beta_end as used   |
| cosine with s = 0.008 (IDDPM eq. 17, beta <= 0.999) | beta_schedule squaredcos_cap_v2                     |
| cosine with another s                               | trained_betas (the betas themselves)                |
| prediction eps / x0 / v                             | prediction_type epsilon / sample / v_prediction     |
| variance posterior / beta (ancestral sampling)      | variance_type fixed_small / fixed_large             |
| clip_x0 (to [-1, 1])                                | clip_sample, clip_sample_range 1; when missing, the |
|                                                     | default of the class named (CLIP_SAMPLE_DEFAULTS)   |
| variance posterior: ``--spacing trailing``          | timestep_spacing trailing (written, not read back)  |
| variance beta: ``--spacing linspace``               | timestep_spacing linspace (written, not read back)  |

A scheduler's sampling settings (timestep_spacing, thresholding, steps_offset) are not part of the model: ddpmkit's
samplers take their own (``--spacing``, ``--threshold``). The export names the spacing with which diffusers'
``DDPMPipeline(num_inference_steps=S)`` draws ddpmkit's ``--sampler ddpm --steps S --spacing ...`` samples:

- ddpmkit adds no noise at the last step (DDPM Algorithm 2, z = 0), whatever the steps. DDPMScheduler.step adds noise
  at every t > 0; the last visited timestep has no successor, so its variance there is tilde-beta = 0 under
  fixed_small (clamped to 1e-20: noise of std 1e-10) but beta = 1 - alpha-bar_t under fixed_large.
- trailing (ddpmkit's default) ends at t = T / S - 1 > 0: for a beta model diffusers would add noise of std 0.32 at
  the end (T = 1000, S = 10). No DDPMScheduler setting removes it: fixed_large_log takes the square root of a log
  (NaN), fixed_small(_log) is the posterior variance at every step, and of diffusers' three spacings only leading
  and linspace end at t = 0.
- So a beta model names linspace: it ends at t = 0, where diffusers adds no noise, and starts at T - 1 as trailing
  does (leading starts at T - T / S, short of pure noise). A posterior model keeps trailing.
"""
from __future__ import annotations

from typing import Any

import torch

from ..build import noise_schedule
from ..config import DiffusionConfig, linear_beta_scale
from .diffusers_unet import DIFFUSERS_VERSION, Unsupported

PREDICTION_TYPES = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
VARIANCE_TYPES = {"posterior": "fixed_small", "beta": "fixed_large"}
# The timestep spacing the export names, by variance (the module docstring says why beta needs linspace).
TIMESTEP_SPACINGS = {"posterior": "trailing", "beta": "linspace"}
# diffusers' clip_sample default of each scheduler class with a discrete-time beta schedule (diffusers 0.42); False
# where the class has no clip_sample and never clips x_0. A test checks it against the installed diffusers.
CLIP_SAMPLE_DEFAULTS = {
    **dict.fromkeys(["DDPMScheduler", "DDPMParallelScheduler", "DDIMScheduler", "DDIMParallelScheduler",
                     "DDIMInverseScheduler", "CogVideoXDDIMScheduler", "CogVideoXDPMScheduler", "RePaintScheduler",
                     "UnCLIPScheduler"], True),
    **dict.fromkeys(["HeunDiscreteScheduler", "LCMScheduler", "TCDScheduler", "PNDMScheduler", "IPNDMScheduler",
                     "DEISMultistepScheduler", "DPMSolverMultistepScheduler", "DPMSolverMultistepInverseScheduler",
                     "DPMSolverSinglestepScheduler", "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler",
                     "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "SASolverScheduler",
                     "UniPCMultistepScheduler", "LMSDiscreteScheduler"], False),
}
# The same variances in diffusers' log form.
VARIANCE_ALIASES = {"fixed_small": "posterior", "fixed_small_log": "posterior", "fixed_large": "beta",
                    "fixed_large_log": "beta"}
DIFFUSERS_COSINE_S = 0.008  # squaredcos_cap_v2's offset, fixed in diffusers' betas_for_alpha_bar
# Two float32 beta tables of the same schedule differ by rounding; these are far apart from any other schedule.
BETA_TOLERANCE = dict(rtol=1e-5, atol=1e-8)


def ddpm_scheduler_config(d: DiffusionConfig) -> dict[str, Any]:
    """The DDPMScheduler config of ddpmkit's diffusion settings: the same betas, prediction, variance and clipping.
    ``timestep_spacing`` is TIMESTEP_SPACINGS' for the variance, with which DDPMPipeline with fewer steps than T draws
    ddpmkit's ddpm samples of that spacing."""
    T = d.num_timesteps
    config: dict[str, Any] = {
        "_class_name": "DDPMScheduler", "_diffusers_version": DIFFUSERS_VERSION, "num_train_timesteps": T,
        "beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "trained_betas": None,
        "prediction_type": PREDICTION_TYPES[d.prediction], "variance_type": VARIANCE_TYPES[d.variance],
        "clip_sample": d.clip_x0, "clip_sample_range": 1.0, "thresholding": False,
        "timestep_spacing": TIMESTEP_SPACINGS[d.variance], "steps_offset": 0, "rescale_betas_zero_snr": False,
    }
    if d.beta_schedule == "linear":  # ddpmkit's betas are for T = 1000, scaled for T (IDDPM); diffusers' as used
        scale = linear_beta_scale(T)
        config.update(beta_start=d.beta_start * scale, beta_end=d.beta_end * scale)
    elif d.cosine_s == DIFFUSERS_COSINE_S:
        config["beta_schedule"] = "squaredcos_cap_v2"
    else:
        config["trained_betas"] = noise_schedule(d).betas_float64.tolist()
    return config


def ddim_student_scheduler_config(d: DiffusionConfig) -> dict[str, Any]:
    """The DDIMScheduler config that steps a progressive ddpm student over the timesteps it was distilled at: its
    schedule's betas, trailing spacing (with K steps, the student's grid: paths.py) and alpha-bar 1 after
    the last step, so that the last step lands on x_0 as the student's does."""
    config = ddpm_scheduler_config(d)
    del config["variance_type"]  # DDIM has no reverse variance
    return {**config, "_class_name": "DDIMScheduler", "timestep_spacing": "trailing", "set_alpha_to_one": True}


def diffusion_from_scheduler(config: dict[str, Any], source: str, known: DiffusionConfig | None = None) -> dict:
    """The ``diffusion`` config section of a diffusers scheduler config, as a dict; Unsupported when the schedule is
    not one ddpmkit has. ``known`` (a ddpmkit export's own settings) lets explicit betas be recognised as its
    cosine schedule. Keys ddpmkit's config has and the scheduler's does not (the loss) keep ``known``'s values."""
    def refuse(reason: str) -> Unsupported:
        return Unsupported(f"{source}: {reason}")

    if "num_train_timesteps" not in config or "beta_schedule" not in config and "trained_betas" not in config:
        raise refuse(f"a {config.get('_class_name', 'scheduler')} config without num_train_timesteps and "
                     f"beta_schedule; ddpmkit reads the discrete-time schedulers of DDPM (DDPMScheduler, "
                     f"DDIMScheduler, ...)")
    if config.get("rescale_betas_zero_snr"):
        raise refuse("rescale_betas_zero_snr=true (zero terminal SNR) is a schedule ddpmkit does not have")
    prediction = {v: k for k, v in PREDICTION_TYPES.items()}.get(config.get("prediction_type", "epsilon"))
    if prediction is None:
        raise refuse(f"prediction_type={config['prediction_type']!r} (supported: "
                     f"{', '.join(PREDICTION_TYPES.values())})")
    variance_type = config.get("variance_type", "fixed_small")
    if variance_type not in VARIANCE_ALIASES:
        raise refuse(f"variance_type={variance_type!r}: the network predicts its own variance (IDDPM); ddpmkit's "
                     f"networks predict the mean only (supported: {', '.join(VARIANCE_ALIASES)})")
    clip = _clip_sample(config, source)
    if clip and config.get("clip_sample_range", 1.0) != 1.0:
        raise refuse(f"clip_sample_range={config['clip_sample_range']}; ddpmkit clips x_0 to the data range "
                     f"[-1, 1]")
    T = int(config["num_train_timesteps"])
    d = {**(vars(known) if known else {}), "num_timesteps": T, "prediction": prediction,
         "variance": VARIANCE_ALIASES[variance_type], "clip_x0": clip}
    betas = config.get("trained_betas")
    schedule = config.get("beta_schedule", "linear")
    if betas is not None:
        d.update(_recognise_betas(torch.tensor(betas, dtype=torch.float64), T, known, source))
    elif schedule == "linear":
        d.update(_linear(config.get("beta_start", 1e-4), config.get("beta_end", 0.02), T))
    elif schedule == "squaredcos_cap_v2":
        d.update(beta_schedule="cosine", cosine_s=DIFFUSERS_COSINE_S)
    else:
        raise refuse(f"beta_schedule={schedule!r} (supported: linear, squaredcos_cap_v2, or trained_betas of either)")
    return d


def _clip_sample(config: dict[str, Any], source: str) -> bool:
    """Whether a scheduler clips x_0: its clip_sample, or when the config has none, its class's default."""
    if "clip_sample" in config:
        return bool(config["clip_sample"])
    name = config.get("_class_name")
    if name not in CLIP_SAMPLE_DEFAULTS:
        raise Unsupported(f"{source}: no clip_sample, and the default of {name or 'a scheduler without _class_name'} "
                          f"is unknown to ddpmkit; add \"clip_sample\": true or false to it")
    return CLIP_SAMPLE_DEFAULTS[name]


def _linear(first: float, last: float, T: int) -> dict:
    """ddpmkit's linear schedule whose betas over T steps run from ``first`` to ``last``: its config keeps them at
    T = 1000."""
    scale = linear_beta_scale(T)
    return {"beta_schedule": "linear", "beta_start": first / scale, "beta_end": last / scale}


def _recognise_betas(betas: torch.Tensor, T: int, known: DiffusionConfig | None, source: str) -> dict:
    """The ddpmkit schedule whose betas are ``betas``: ``known``'s, a linear one between the ends, or cosine."""
    if len(betas) != T:
        raise Unsupported(f"{source}: {len(betas)} trained_betas for num_train_timesteps={T}")
    candidates = []
    if known is not None:
        candidates.append({k: getattr(known, k) for k in ("beta_schedule", "beta_start", "beta_end", "cosine_s")})
    candidates += [_linear(float(betas[0]), float(betas[-1]), T),
                   {"beta_schedule": "cosine", "cosine_s": DIFFUSERS_COSINE_S}]
    for candidate in candidates:
        try:
            mine = noise_schedule(DiffusionConfig(num_timesteps=T, **candidate)).betas_float64
        except ValueError:
            continue
        if torch.allclose(mine, betas, **BETA_TOLERANCE):
            return candidate
    raise Unsupported(f"{source}: its trained_betas are neither a linear schedule nor the cosine one (IDDPM eq. 17); "
                      f"ddpmkit has no other")
