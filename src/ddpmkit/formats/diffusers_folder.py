"""diffusers' folder format: what ``DDPMPipeline.from_pretrained`` loads and ``save_pretrained`` writes.

    model_index.json                          the pipeline: DDPMPipeline = unet + scheduler (a progressive ddpm
                                              student's: DDIMPipeline, with a DDIMScheduler at its grid)
    unet/config.json                          UNet2DModel's constructor arguments (diffusers_unet.py)
    unet/diffusion_pytorch_model.safetensors  its weights (or .bin, a pickled state dict, in older folders)
    scheduler/scheduler_config.json           the noise schedule (diffusers_scheduler.py)

Older Hub repositories (the DDPM authors' google/ddpm-*) may also hold config.json, scheduler_config.json and the
weights at the top; both layouts are read. A folder ddpmkit writes adds ``ddpmkit.json`` (class names, training
step, which weights), ``training_config.json`` (the resolved config: ``ddpmkit train --config`` retrains the model)
and a model card, ``README.md``; reading it back restores the class names and the training config.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..build import spec_from_dict
from ..checkpoint import DamagedCheckpoint
from ..config import Config, ModelConfig, config_from_dict, merge_into, validate
from ..errors import DdpmkitError
from ..files import atomic_write, recover_folder, write_folder_atomically, write_json, write_text
from ..unet import UNetSpec
from ..version import __version__
from .diffusers_scheduler import ddim_student_scheduler_config, ddpm_scheduler_config, diffusion_from_scheduler
from .flow_scheduler import FLOW_SCHEDULER, diffusion_from_flow_scheduler, flow_scheduler_config

SCHEDULER_CONFIGS = {"ddpm": ddpm_scheduler_config, "flow": flow_scheduler_config}  # by diffusion.objective
from .diffusers_unet import (DIFFUSERS_VERSION, Unsupported, from_diffusers_weights, spec_from_unet2d_config,
                             to_diffusers_weights, unet2d_config)
from .loaded import LoadedModel, checkpoint_state, weights_to_export
from .model_card import model_card

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
LEGACY_WEIGHTS_NAME = "diffusion_pytorch_model.bin"
DDPMKIT_INFO = "ddpmkit.json"
TRAINING_CONFIG = "training_config.json"
# The files a reader needs, in both layouts (the Hub download fetches only these).
FILES = ["model_index.json", DDPMKIT_INFO, TRAINING_CONFIG, "README.md",
         "unet/config.json", f"unet/{WEIGHTS_NAME}", "scheduler/scheduler_config.json",
         "config.json", WEIGHTS_NAME, "scheduler_config.json"]
LEGACY_FILES = [f"unet/{LEGACY_WEIGHTS_NAME}", LEGACY_WEIGHTS_NAME]


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object (dict) from ``path``; anything else is a one-line DamagedCheckpoint."""
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) else " ".join(str(err).split())[:120]
        raise DamagedCheckpoint(f"{path} could not be read as JSON ({reason})") from None
    if not isinstance(found, dict):
        raise DamagedCheckpoint(f"{path} holds a JSON {type(found).__name__}, not the object of keys it should")
    return found


def is_unet_folder(path: Path) -> bool:
    """A folder holding a UNet2DModel's config.json."""
    config = path / "config.json"
    if not config.is_file() or config.stat().st_size > 1_000_000:
        return False
    try:
        found = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and found.get("_class_name") == "UNet2DModel"


def is_diffusers_folder(path: Path) -> bool:
    """A diffusers pipeline folder (either layout) or a pipeline's unet/ folder."""
    return path.is_dir() and ((path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file()
                              or is_unet_folder(path))


def _layout(path: Path) -> tuple[Path, Path, Path]:
    """(the pipeline folder, the UNet's folder, the scheduler config) of a diffusers folder."""
    if (path / "unet" / "config.json").is_file():
        root, unet = path, path / "unet"
    elif is_unet_folder(path):
        root, unet = (path.parent if path.name == "unet" else path), path
    else:
        raise DdpmkitError(f"{path}: no UNet2DModel here (neither unet/config.json nor a config.json of one); "
                           f"ddpmkit reads diffusers' DDPMPipeline folders")
    for scheduler in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if scheduler.is_file():
            return root, unet, scheduler
    raise DdpmkitError(f"{path}: no scheduler config (scheduler/scheduler_config.json), so the noise schedule the "
                       f"network was trained with is unknown; add the scheduler folder saved with the pipeline")


def _read_weights(unet: Path) -> tuple[dict[str, torch.Tensor], Path]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = unet / WEIGHTS_NAME
    if path.is_file():
        try:
            return load_file(str(path), device="cpu"), path
        except (SafetensorError, OSError, ValueError) as err:
            raise DamagedCheckpoint(f"{path} is truncated or not a safetensors file ({str(err)[:100]}); download "
                                    f"it again") from None
    path = unet / LEGACY_WEIGHTS_NAME
    if path.is_file():
        try:  # weights_only: a state dict of tensors loads, a pickle that would run code is refused
            return torch.load(path, map_location="cpu", weights_only=True), path
        except Exception as err:  # noqa: BLE001 - every way an unpickler fails means "unusable"
            raise DamagedCheckpoint(f"{path} is truncated, corrupted or holds more than tensors "
                                    f"({type(err).__name__}); download it again") from None
    if (unet / f"{WEIGHTS_NAME}.index.json").is_file():
        raise Unsupported(f"{unet}: sharded weights (several files); DDPM-size networks are saved in one, and "
                          f"ddpmkit reads one")
    raise DdpmkitError(f"{unet}: no weights ({WEIGHTS_NAME} or {LEGACY_WEIGHTS_NAME}); the folder is incomplete")


def model_config_of(spec: UNetSpec) -> dict[str, Any]:
    """The ``model`` config section that builds ``spec`` (unet_spec's inverse)."""
    fields = set(ModelConfig.__dataclass_fields__)
    values = {k: v for k, v in vars(spec).items() if k in fields}
    return {**values, "class_conditional": spec.num_classes > 0}


def read_diffusers_folder(path: str | Path, name: str | None = None) -> LoadedModel:
    """A diffusers DDPM folder as a ddpmkit checkpoint dict: the UNet2DModel becomes ddpmkit's U-Net with the same
    outputs, the scheduler its noise schedule. Configurations ddpmkit cannot build are refused with the reason."""
    path = Path(path)
    name = name or str(path)
    root, unet_dir, scheduler_file = _layout(path)
    configs = {"unet": _read_json(unet_dir / "config.json"), "scheduler": _read_json(scheduler_file),
               "info": _read_json(root / DDPMKIT_INFO) if (root / DDPMKIT_INFO).is_file() else {},
               "training": _read_json(root / TRAINING_CONFIG) if (root / TRAINING_CONFIG).is_file() else None}
    try:
        spec, cfg, step, classes = _convert_configs(configs, name, scheduler_file.name)
    except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError) as err:  # a value of the wrong type
        reason = " ".join(str(err).split())[:100]
        raise DamagedCheckpoint(f"{name}: its config files cannot be read ({type(err).__name__}: {reason}); they "
                                f"were edited or written by another program") from None
    weights, file = _read_weights(unet_dir)
    weights = from_diffusers_weights(weights, spec, name)
    kind = configs["info"].get("weights") if configs["info"].get("weights") in ("ema", "raw") else "unknown"
    return LoadedModel(checkpoint_state(weights, spec, cfg, step, classes), file, name, weights=kind,
                       training_known=configs["training"] is not None)


def _convert_configs(configs: dict, name: str, scheduler_name: str) -> tuple[UNetSpec, Config, int, list[str]]:
    """(the network, the ddpmkit config, the training step, the class names) of a folder's JSON files."""
    spec = spec_from_unet2d_config(configs["unet"], f"{name} (unet/config.json)")
    training, info = configs["training"], configs["info"]
    known = config_from_dict(training, f"{name} ({TRAINING_CONFIG})") if training is not None else None
    read = (diffusion_from_flow_scheduler if configs["scheduler"].get("_class_name") == FLOW_SCHEDULER else
            diffusion_from_scheduler)
    diffusion = read(configs["scheduler"], f"{name} ({scheduler_name})", known.diffusion if known else None)
    # Another program's model: nothing says what it was trained on (evaluate asks for the real data).
    cfg = known or merge_into(Config(), {"data": {"dataset": "folder", "channels": spec.image_channels}}, name)
    merge_into(cfg, {"model": model_config_of(spec), "diffusion": diffusion,
                     "data": {"image_size": spec.image_size}}, name)
    validate(cfg)
    # An unconditional model keeps its dataset's class names (as its checkpoint does); a conditional one needs one
    # name per label.
    classes = [str(c) for c in info.get("class_names") or range(spec.num_classes)]
    if spec.num_classes and len(classes) != spec.num_classes:
        raise DamagedCheckpoint(f"{name}: {DDPMKIT_INFO} names {len(classes)} classes, the network has "
                                f"{spec.num_classes}; it was edited")
    return spec, cfg, int(info.get("step", 0)), classes


# -- writing -----------------------------------------------------------------------------------------------------------

def write_diffusers_folder(model: LoadedModel, output: str | Path, use_ema: bool = True,
                           metrics: Sequence[dict] = (), overwrite: bool = False) -> Path:
    """Write ``model`` as a folder ``DDPMPipeline.from_pretrained(output)`` loads, with a model card. The folder
    appears whole or not at all (files.write_folder_atomically); ``overwrite`` replaces only an earlier export."""
    state = model.state
    cfg = config_from_dict(state["config"], f"the config inside {model.name}")
    spec = spec_from_dict(state["unet"])
    student = bool(cfg.distill.method)
    if student:
        _check_student(cfg, spec)
    if cfg.diffusion.objective == "edm":
        raise Unsupported("an edm model has no diffusers folder: its preconditioning (c_in, c_skip, c_out) is not "
                          "part of UNet2DModel and DDPMPipeline would not apply it; export it with --format "
                          "safetensors, which ddpmkit reads back")
    if cfg.data.zero_one:
        raise Unsupported("this model works on images in [0, 1] (data.zero_one); diffusers' pipelines take and "
                          "return images in [-1, 1], so it cannot be exported for them")
    unet_config = unet2d_config(spec)
    scheduler_config = (ddim_student_scheduler_config(cfg.diffusion) if student else
                        SCHEDULER_CONFIGS[cfg.diffusion.objective](cfg.diffusion))
    weights, kind = weights_to_export(model, use_ema)
    weights = to_diffusers_weights(weights, spec)
    output = Path(output)
    _check_output(output, overwrite)
    info = {"ddpmkit_version": __version__, "weights": kind, "step": int(state["step"]),
            "class_names": list(state.get("class_names", [])),
            "null_label": spec.num_classes if spec.num_classes else None, "exported_from": model.name}
    card = model_card(cfg, spec, info, metrics, sum(v.numel() for v in weights.values()), model.training_known)

    def fill(folder: Path) -> None:
        from safetensors.torch import save

        write_json(folder / "model_index.json", {"_class_name": "DDIMPipeline" if student else "DDPMPipeline",
                                                 "_diffusers_version": DIFFUSERS_VERSION,
                                                 "scheduler": ["diffusers", scheduler_config["_class_name"]],
                                                 "unet": ["diffusers", "UNet2DModel"]})
        write_json(folder / "unet" / "config.json", unet_config)
        with atomic_write(folder / "unet" / WEIGHTS_NAME) as f:
            f.write(save(weights, metadata={"format": "pt"}))
        write_json(folder / "scheduler" / "scheduler_config.json", scheduler_config)
        write_json(folder / DDPMKIT_INFO, info)
        if model.training_known:  # the resolved config retrains it; another program's model has none to give
            write_json(folder / TRAINING_CONFIG, cfg.to_dict())
        write_text(folder / "README.md", card)

    return write_folder_atomically(output, fill)


def _check_student(cfg: Config, spec) -> None:
    """Refuse in one line a student that no diffusers scheduler steps as it was distilled: only a progressive ddpm
    student without a guidance input has one (DDIMScheduler, trailing, at its K steps)."""
    d, why = cfg.distill, None
    if d.method != "progressive":
        why = (f"a {d.method} student samples by multistep consistency sampling, which no diffusers scheduler does on "
               f"its grid")
    elif cfg.diffusion.objective != "ddpm":
        why = (f"a {cfg.diffusion.objective} student steps over times that diffusers' FlowMatchEulerDiscreteScheduler "
               f"does not visit (it spaces K steps from 1 to 1/1000, the student from 1 to 1/K)")
    elif spec.guidance_input:
        why = ("this student takes the guidance weight as an input, which diffusers' UNet2DModel does not have "
               "(distil with --max-guidance 0 for one it can run)")
    if why:
        raise Unsupported(f"{why}; export it with --format safetensors, which ddpmkit reads back")


def _check_output(output: Path, overwrite: bool) -> None:
    """Refuse an ``output`` that is a file, that holds something (without ``overwrite``), or that holds anything
    but an earlier export (with it). An export killed mid-way may have moved the previous one aside: that one is
    put back first, and judged."""
    recover_folder(output)
    if output.is_file():
        raise DdpmkitError(f"{output} is a file; the diffusers format is a folder: choose another --output")
    if not (output.is_dir() and any(output.iterdir())):
        return
    if not overwrite:
        raise DdpmkitError(f"{output} already exists and is not empty; choose another --output or add --overwrite")
    if not (output / "model_index.json").is_file():
        raise DdpmkitError(f"{output} holds something other than a diffusers folder (no model_index.json); "
                           f"--overwrite replaces only an earlier export: choose another --output")
