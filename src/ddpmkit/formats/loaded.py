"""A model read from any of the formats ddpmkit knows, as the checkpoint dict the rest of ddpmkit uses."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..unet import UNetSpec


@dataclass
class LoadedModel:
    state: dict        # a ddpmkit checkpoint dict: model, ema, config, unet, step, class_names
    file: Path | None  # the file its weights were read from (evaluate reports its SHA-256)
    name: str          # how messages and reports name it: the path or Hub id given


def checkpoint_state(weights: dict[str, torch.Tensor], spec: UNetSpec, cfg: Config, step: int,
                     class_names: list[str]) -> dict:
    """The checkpoint dict of a model known only by one set of weights (an export or another library's model):
    they are both the trained and the EMA weights, since sampling reads the EMA ones."""
    return {"model": weights, "ema": {"model": weights, "num_updates": 0}, "config": cfg.to_dict(),
            "unet": dataclasses.asdict(spec), "step": step, "class_names": list(class_names)}
