"""Models in and out of other formats; the rest of ddpmkit sees only its own checkpoint dicts.

``read_model`` takes whatever a user calls a model and returns a LoadedModel:

    a .pt file or a run directory     ddpmkit's checkpoints (checkpoint.py)
    a .safetensors file               written by ``ddpmkit export --format safetensors`` (safetensors_file.py)
    a diffusers folder                DDPMPipeline / UNet2DModel + scheduler, e.g. ``ddpmkit export`` or diffusers'
                                      train_unconditional wrote it (diffusers_folder.py)
    a Hugging Face Hub id             such a folder on the Hub, read from the local cache or downloaded (hub.py)
"""
from __future__ import annotations

from pathlib import Path

from ..checkpoint import locate_checkpoint
from ..errors import DdpmkitError
from . import hub
from .diffusers_folder import FILES, LEGACY_FILES, is_diffusers_folder, read_diffusers_folder
from .loaded import LoadedModel
from .safetensors_file import read_safetensors

__all__ = ["LoadedModel", "read_model", "read_diffusers"]


def read_diffusers(source: str | Path) -> LoadedModel:
    """A diffusers folder, or a Hub id of one (from the local Hugging Face cache, else downloaded)."""
    path = Path(source)
    if path.exists():
        if not is_diffusers_folder(path):
            raise DdpmkitError(f"{source} is not a diffusers folder (no model_index.json, unet/config.json or "
                               f"UNet2DModel config.json)")
        return read_diffusers_folder(path)
    if not hub.looks_like_repo_id(str(source)):
        raise DdpmkitError(f"{source} not found: give a diffusers folder or a Hugging Face Hub id (owner/name)")
    return read_diffusers_folder(hub.fetch(str(source), FILES, LEGACY_FILES), name=str(source))


def read_model(source: str | Path) -> LoadedModel:
    """A model from a ddpmkit checkpoint or run directory, an exported .safetensors file, a diffusers folder or a
    Hub id (in that order of looking)."""
    path = Path(source)
    if path.is_file() and path.suffix == ".safetensors":
        return read_safetensors(path)
    if path.is_dir() and is_diffusers_folder(path):
        return read_diffusers_folder(path)
    if path.exists():
        state, file = locate_checkpoint(path)
        return LoadedModel(state, file, str(source))
    if hub.looks_like_repo_id(str(source)):
        return read_diffusers(source)
    raise DdpmkitError(f"checkpoint {source} not found; give a .pt checkpoint or a run directory of 'ddpmkit train', a "
                       f".safetensors file of 'ddpmkit export', a diffusers folder, or a Hugging Face Hub id "
                       f"(owner/name)")
