"""The teacher of a distillation run: a trained model, frozen on the training device, and the loss it teaches with."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..build import noise_schedule, unet_from_dict
from ..checkpoint import load_weights
from ..config import Config, config_from_dict
from ..formats import read_model
from ..guidance import guided_denoiser
from ..unet import UNet
from .consistency import ConsistencyLoss
from ..paths import path_of
from .progressive import ProgressiveLoss


@dataclass
class Teacher:
    config: Config       # the config inside the teacher's checkpoint
    model: UNet          # its EMA weights, frozen, on the device
    class_names: list[str]
    source: str


def load_teacher(checkpoint: str, device: torch.device) -> Teacher:
    """The model ``checkpoint`` names (anything --checkpoint reads: a checkpoint or run directory, a .safetensors
    export, a diffusers folder or Hub id) with its EMA weights, on ``device``, without gradients."""
    loaded = read_model(checkpoint)
    source = f"teacher {loaded.name}"
    config = config_from_dict(loaded.state["config"], source=f"the config inside {source}")
    model = unet_from_dict(loaded.state["unet"], source)
    load_weights(model, loaded.state["ema"]["model"], source)
    model.to(device).eval().requires_grad_(False)
    return Teacher(config, model, list(loaded.state.get("class_names", [])), source)


def distillation_loss(cfg: Config, teacher: Teacher, device: torch.device) -> ProgressiveLoss | ConsistencyLoss:
    """The loss of a student run of ``cfg`` (distill.method progressive or consistency), with the teacher's DDIM
    steps guided, for a conditional teacher, with each image's w in [0, distill.max_guidance]."""
    path = path_of(teacher.config, noise_schedule(teacher.config.diffusion).to(device))
    null = teacher.model.spec.num_classes

    def teacher_x0(z: torch.Tensor, u: torch.Tensor, y: torch.Tensor | None,
                   guidance: torch.Tensor | None) -> torch.Tensor:
        network = teacher.model
        if y is not None:
            network = guided_denoiser(teacher.model, y, 0.0 if guidance is None else guidance, null)
        return path.predict_x0(network, z, u).float()

    d = cfg.distill
    if d.method == "consistency":
        return ConsistencyLoss(path, teacher_x0, d.teacher_steps, d.max_guidance)
    return ProgressiveLoss(path, teacher_x0, d.student_steps, d.max_guidance)
