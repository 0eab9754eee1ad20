"""A model read from any of the formats ddpmkit knows, as the checkpoint dict the rest of ddpmkit uses."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..errors import DdpmkitError
from ..unet import UNetSpec

WEIGHT_KINDS = ("both", "ema", "raw", "unknown")


@dataclass
class LoadedModel:
    state: dict        # a ddpmkit checkpoint dict: model, ema, config, unet, step, class_names
    file: Path | None  # the file its weights were read from (evaluate reports its SHA-256)
    name: str          # how messages and reports name it: the path or Hub id given
    weights: str = "both"         # a checkpoint's trained and EMA weights; or the one set an export holds (ema,
                                  # raw), or another program's (unknown)
    training_known: bool = True   # whether the config records how ddpmkit trained it (not for other programs')


def checkpoint_state(weights: dict[str, torch.Tensor], spec: UNetSpec, cfg: Config, step: int,
                     class_names: list[str]) -> dict:
    """The checkpoint dict of a model known only by one set of weights (an export or another library's model):
    they are both the trained and the EMA weights, since sampling reads the EMA ones."""
    return {"model": weights, "ema": {"model": weights, "num_updates": 0}, "config": cfg.to_dict(),
            "unet": dataclasses.asdict(spec), "step": step, "class_names": list(class_names)}


def weights_to_export(model: LoadedModel, use_ema: bool) -> tuple[dict[str, torch.Tensor], str]:
    """The weights an export writes and what they are (ema, raw or unknown). A model that holds one set only (an
    export, another program's) has no choice to make, and --no-ema on it is refused rather than ignored."""
    if model.weights == "both":
        state = model.state
        return (state["ema"]["model"], "ema") if use_ema else (state["model"], "raw")
    if not use_ema:
        raise DdpmkitError(f"{model.name} holds one set of weights ({model.weights}), not a training run's raw and "
                           f"EMA ones; leave out --no-ema")
    return model.state["model"], model.weights
