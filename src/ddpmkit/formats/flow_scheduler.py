"""A rectified-flow model's schedule in diffusers' terms: FlowMatchEulerDiscreteScheduler, both ways.

| ddpmkit (``diffusion.objective = flow``)           | diffusers                                          |
|----------------------------------------------------|----------------------------------------------------|
| x_t = (1 - t) x_0 + t eps, the network predicts v  | sigma = t, the model output is the velocity        |
| the network's time input 1000 t (flow.TIME_SCALE)  | num_train_timesteps 1000: timesteps = 1000 sigma   |
| sampling shift (RectifiedFlow.shift)               | shift (a sampling setting: written, not read back) |

diffusers' DDPMPipeline runs such a folder as it is: it feeds the scheduler's timesteps to the UNet2DModel and calls
``scheduler.step(output, t, x)``, which is the Euler step of ``samplers.continuous.integrate``. EDM has no such
export: its preconditioning (c_in on the input, c_skip and c_out on the output) is not part of a UNet2DModel, and
DDPMPipeline never calls EDMEulerScheduler.scale_model_input, so the folder would sample wrongly there.
"""
from __future__ import annotations

from typing import Any

from ..config import DiffusionConfig
from ..objectives.flow import TIME_SCALE
from .diffusers_unet import DIFFUSERS_VERSION, Unsupported

FLOW_SCHEDULER = "FlowMatchEulerDiscreteScheduler"


def flow_scheduler_config(d: DiffusionConfig) -> dict[str, Any]:
    """The FlowMatchEulerDiscreteScheduler config of a flow model: 1000 training timesteps, no shift."""
    return {"_class_name": FLOW_SCHEDULER, "_diffusers_version": DIFFUSERS_VERSION,
            "num_train_timesteps": int(TIME_SCALE), "shift": 1.0, "use_dynamic_shifting": False,
            "invert_sigmas": False}


def diffusion_from_flow_scheduler(config: dict[str, Any], source: str, known: DiffusionConfig | None) -> dict:
    """The ``diffusion`` section of a flow-matching scheduler config; Unsupported where the network's time input
    would not be ddpmkit's 1000 t."""
    if int(config.get("num_train_timesteps", TIME_SCALE)) != TIME_SCALE:
        raise Unsupported(f"{source}: num_train_timesteps={config['num_train_timesteps']}; ddpmkit's flow models see "
                          f"the time as 1000 t")
    for key in ("invert_sigmas", "use_dynamic_shifting"):
        if config.get(key):
            raise Unsupported(f"{source}: {key}=true is a flow-matching variant ddpmkit does not have")
    return {**(vars(known) if known else {}), "objective": "flow"}
