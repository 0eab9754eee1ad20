"""Checkpoints are plain dicts of state_dicts, config and step, written atomically and read with weights_only."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import DdpmkitError


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` via a temporary file in the same folder and a rename, so a crash or Ctrl-C
    mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():  # a run directory: take its final checkpoint, else the latest
        for name in ("final.pt", "latest.pt"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise DdpmkitError(f"checkpoint {path} not found; pass a .pt file written by 'ddpmkit train' or its run "
                           f"directory")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise DdpmkitError(f"checkpoint {path} could not be read ({type(err).__name__}: {err}); "
                           f"it may be truncated or not a ddpmkit checkpoint") from None
    missing = {"model", "ema", "config", "unet", "step"} - set(state)
    if missing:
        raise DdpmkitError(f"{path} is not a ddpmkit checkpoint (missing {', '.join(sorted(missing))})")
    return state
