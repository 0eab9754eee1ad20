"""A ddpmkit model as one ``.safetensors`` file: the weights, with the config as metadata, and no pickle.

safetensors stores tensors and a str -> str header; a file ``ddpmkit export --format safetensors`` writes holds

    tensors                  one set of U-Net weights, under ddpmkit's own names (the EMA ones unless --no-ema)
    ddpmkit.config           the resolved training config, JSON
    ddpmkit.unet             the network's shape (UNetSpec), JSON
    ddpmkit.class_names      JSON list; ddpmkit.step; ddpmkit.weights (ema or raw); ddpmkit.version
    ddpmkit.sha256           the digest of all of the above, checked when read, as a checkpoint's is

It is for sharing a model for sampling (any program can read it without running code); training resumes from the
.pt checkpoints, which also hold the optimizer.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..build import spec_from_dict
from ..checkpoint import DamagedCheckpoint, state_digest
from ..config import config_from_dict
from ..errors import DdpmkitError
from ..files import atomic_write
from ..version import __version__
from .loaded import LoadedModel, checkpoint_state, weights_to_export

PREFIX = "ddpmkit."


def write_safetensors(model: LoadedModel, output: str | Path, use_ema: bool = True, overwrite: bool = False) -> Path:
    """Write one set of ``model``'s weights and its config to ``output`` (atomically)."""
    from safetensors.torch import save

    output = Path(output)
    if output.suffix != ".safetensors":
        raise DdpmkitError(f"{output}: the safetensors format writes one file named *.safetensors, e.g. "
                           f"{output.with_suffix('.safetensors').name}")
    if output.is_dir():
        raise DdpmkitError(f"{output} is a folder; choose a file name for --output")
    if output.exists() and not overwrite:
        raise DdpmkitError(f"{output} already exists; choose another --output or add --overwrite")
    state = model.state
    weights, kind = weights_to_export(model, use_ema)
    weights = {k: v.contiguous() for k, v in weights.items()}
    metadata = {"format": "pt", f"{PREFIX}config": json.dumps(state["config"]),
                f"{PREFIX}unet": json.dumps(state["unet"]),
                f"{PREFIX}class_names": json.dumps(list(state.get("class_names", []))),
                f"{PREFIX}step": str(int(state["step"])), f"{PREFIX}weights": kind,
                f"{PREFIX}version": __version__}
    metadata[f"{PREFIX}sha256"] = _digest(weights, metadata)
    with atomic_write(output) as f:
        f.write(save(weights, metadata=metadata))
    return output


def _digest(weights: dict, metadata: dict) -> str:
    return state_digest({"weights": weights, "metadata": {k: v for k, v in metadata.items() if k != f"{PREFIX}sha256"}})


def read_safetensors(path: str | Path, name: str | None = None) -> LoadedModel:
    """A file ``write_safetensors`` wrote, verified, as a checkpoint dict."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    name = name or str(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            weights = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise DamagedCheckpoint(f"{name} is truncated or not a safetensors file ({str(err)[:100]}); use another "
                                f"copy") from None
    if f"{PREFIX}config" not in metadata:
        raise DdpmkitError(f"{name} holds weights without ddpmkit's config (no {PREFIX}config in its metadata), so "
                           f"the network they belong to is unknown; ddpmkit reads the .safetensors files "
                           f"'ddpmkit export' writes, and diffusers' models as folders (with unet/config.json)")
    if f"{PREFIX}sha256" in metadata and _digest(weights, metadata) != metadata[f"{PREFIX}sha256"]:
        raise DamagedCheckpoint(f"{name} is damaged: its content no longer matches the digest written with it; use "
                                f"another copy")
    try:
        cfg = config_from_dict(json.loads(metadata[f"{PREFIX}config"]), f"the config inside {name}")
        spec = spec_from_dict(json.loads(metadata[f"{PREFIX}unet"]))
        classes = [str(c) for c in json.loads(metadata.get(f"{PREFIX}class_names", "[]"))]
        step = int(metadata.get(f"{PREFIX}step", 0))
        kind = metadata.get(f"{PREFIX}weights", "unknown")
    except (ValueError, TypeError, AttributeError) as err:  # JSON of the wrong shape, a spec key of the wrong type
        raise DamagedCheckpoint(f"{name}: its ddpmkit metadata cannot be read ({type(err).__name__}: "
                                f"{str(err)[:100]}); it was edited or written by another program") from None
    return LoadedModel(checkpoint_state(weights, spec, cfg, step, classes), path, name,
                       weights=kind if kind in ("ema", "raw") else "unknown")
