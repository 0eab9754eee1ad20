"""Checkpoints: plain dicts of state_dicts, config and step, written atomically and durably, verified when read.

Every checkpoint carries ``sha256``, a digest of its own content (every tensor's bytes, dtype and shape, every
plain value), so a file damaged after it was written (a bad disk, an interrupted copy) is recognised when loaded
instead of silently training or sampling from corrupted weights. Reading uses ``torch.load(weights_only=True)``,
which refuses pickles that would run code.

A run directory keeps its last ``train.keep_checkpoints`` periodic checkpoints as ``checkpoints/step_NNNNNNNN.pt``;
``latest.pt`` (and ``best.pt``, ``final.pt`` when they hold the same state) are hard links to them, so they cost no
extra disk space or writing time. Resuming takes the newest intact one and says so when it had to skip a damaged one.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from .errors import DdpmkitError
from .files import atomic_write, fsync_folder

REQUIRED_KEYS = ("model", "ema", "config", "unet", "step")
PERIODIC_DIR = "checkpoints"


class DamagedCheckpoint(DdpmkitError):
    """A checkpoint file that exists but cannot be used: empty, truncated, corrupted or not ddpmkit's."""


# -- content digest ----------------------------------------------------------------------------------------------------

def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 over a checkpoint's content in a fixed order (the ``sha256`` entry itself left out).

    It is computed from the values, not the file's bytes, so it is the same before saving and after loading.
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "sha256"})
    return h.hexdigest()


def _feed(h, value: Any) -> None:
    if isinstance(value, dict):
        h.update(b"{")
        for key in sorted(value, key=repr):
            _feed(h, key)
            _feed(h, value[key])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):  # a tuple may come back as a list: both hash alike
        h.update(b"[")
        for item in value:
            _feed(h, item)
        h.update(b"]")
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        h.update(f"{type(value).__name__}:{value!r};".encode())


# -- writing -------------------------------------------------------------------------------------------------------------

def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` (plus its ``sha256``) to ``path`` atomically and durably. A full disk or a read-only folder
    raises a one-line DdpmkitError; whatever ``path`` held before stays intact."""
    path = Path(path)
    state = {**state, "sha256": state_digest(state)}
    try:
        with atomic_write(path) as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as err:
        # torch.save's zip writer may turn a failed write into a RuntimeError while closing the archive.
        cause = err if isinstance(err, OSError) else err.__context__
        if not isinstance(cause, OSError):
            raise
        err = cause
        before = f"{path} still holds the previous checkpoint" if path.exists() else "no earlier file was touched"
        raise DdpmkitError(f"could not write checkpoint {path}: {err.strerror or err}; {before}. Free disk space or "
                           f"make {path.parent} writable, then run the same command again") from None
    return path


def link_checkpoint(source: Path, name: Path) -> Path:
    """Make ``name`` show the checkpoint ``source`` (a hard link, replacing ``name`` atomically); on file systems
    without hard links, a durable copy."""
    tmp = name.with_name(f".{name.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            with atomic_write(tmp) as f, source.open("rb") as src:
                shutil.copyfileobj(src, f)
        os.replace(tmp, name)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DdpmkitError(f"could not write {name}: {err.strerror or err}; {source} holds the checkpoint. Free "
                           f"disk space or make {name.parent} writable, then run the same command again") from None
    fsync_folder(name.parent)
    return name


def periodic_path(run_dir: Path, step: int) -> Path:
    return run_dir / PERIODIC_DIR / f"step_{step:08d}.pt"


def periodic_checkpoints(run_dir: Path) -> list[Path]:
    """The periodic checkpoints of a run directory, newest first."""
    folder = run_dir / PERIODIC_DIR
    return sorted(folder.glob("step_*.pt"), reverse=True) if folder.is_dir() else []


def save_periodic(state: dict[str, Any], run_dir: Path, keep: int) -> Path:
    """Write ``checkpoints/step_N.pt``, point ``latest.pt`` at it, and delete all but the newest ``keep``."""
    path = save_checkpoint(state, periodic_path(run_dir, int(state["step"])))
    link_checkpoint(path, run_dir / "latest.pt")
    for old in periodic_checkpoints(run_dir)[keep:]:
        old.unlink(missing_ok=True)
    return path


# -- reading -------------------------------------------------------------------------------------------------------------

def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify one checkpoint file; every way it can be unusable is a one-line DamagedCheckpoint."""
    path = Path(path)
    if not path.is_file():
        raise DdpmkitError(f"checkpoint {path} not found; pass a .pt file written by 'ddpmkit train' or its run "
                           f"directory")
    if path.stat().st_size == 0:
        raise DamagedCheckpoint(f"checkpoint {path} is empty (0 bytes): its writing never finished; use another "
                                f"checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused the pickle: a forbidden global, or no pickle at all
        if "GLOBAL" in str(err):
            raise DamagedCheckpoint(f"checkpoint {path} holds Python objects that a ddpmkit checkpoint never does, "
                                    f"which loading could execute as code; refused. Load only checkpoints written "
                                    f"by 'ddpmkit train'") from None
        raise DamagedCheckpoint(f"checkpoint {path} is truncated or corrupted, or not a PyTorch file (no pickle a "
                                f"weights-only load accepts); use another checkpoint") from None
    except Exception as err:  # garbage makes the unpickler fail in any number of ways: all mean "unusable"
        reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise DamagedCheckpoint(f"checkpoint {path} is truncated or corrupted, or not a PyTorch file ({reason}); "
                                f"use another checkpoint") from None
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        found = f"keys {', '.join(sorted(map(str, state))[:6])}" if isinstance(state, dict) else type(state).__name__
        raise DamagedCheckpoint(f"{path} is not a ddpmkit checkpoint (it holds {found}; a ddpmkit checkpoint has "
                                f"{', '.join(REQUIRED_KEYS)})")
    if "sha256" in state and state_digest(state) != state["sha256"]:
        raise DamagedCheckpoint(f"checkpoint {path} is damaged: its content no longer matches the digest written "
                                f"with it (a bad disk or an incomplete copy); use another checkpoint")
    return state


def newest_intact(candidates: list[Path], map_location: str | torch.device = "cpu") -> tuple[dict, Path] | None:
    """The first of ``candidates`` that loads and verifies, skipping damaged ones with a message on stderr; None when
    there are none. Names that link to a file already tried are not read again."""
    tried: list[Path] = []
    damaged: list[str] = []
    for path in candidates:
        if not path.is_file() or any(os.path.samefile(path, seen) for seen in tried):
            continue
        tried.append(path)
        try:
            state = read_checkpoint(path, map_location)
        except DamagedCheckpoint as err:
            damaged.append(str(err))
            print(f"ddpmkit: warning: {err}; trying an older one", file=sys.stderr)
            continue
        return state, path
    if damaged:
        raise DamagedCheckpoint(f"no intact checkpoint among {len(tried)} tried ({damaged[-1]}); start afresh with "
                                f"a new --run-dir")
    return None


def resume_candidates(run_dir: Path) -> list[Path]:
    """Where a run directory's newest state may be, newest first: the periodic checkpoints, then ``latest.pt``
    (which a run killed between writing a periodic checkpoint and linking it may leave one behind, and which
    run directories of earlier ddpmkit versions hold alone)."""
    return [*periodic_checkpoints(run_dir), run_dir / "latest.pt"]


def locate_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """A checkpoint file, or a run directory's final checkpoint (else its newest intact one), verified; with the
    file it was read from."""
    path = Path(path)
    if not path.is_dir():
        return read_checkpoint(path, map_location), path
    found = newest_intact([path / "final.pt", *resume_candidates(path)], map_location)
    if found is None:
        raise DdpmkitError(f"{path} holds no checkpoint (final.pt, latest.pt or checkpoints/step_*.pt); pass a .pt "
                           f"file written by 'ddpmkit train' or its run directory")
    return found


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint file, or a run directory's final checkpoint (else its newest intact one), verified."""
    return locate_checkpoint(path, map_location)[0]


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """``module.load_state_dict(weights)`` with PyTorch's many-line mismatch report cut to one line."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as err:
        missing = set(module.state_dict()) - set(weights)
        unexpected = set(weights) - set(module.state_dict())
        detail = (f"{len(missing)} missing and {len(unexpected)} unexpected tensors" if missing or unexpected
                  else str(err).strip().splitlines()[-1].strip()[:160])
        raise DamagedCheckpoint(f"{source}: its weights do not fit the network its config describes ({detail}); "
                                f"it was written by another program or edited") from None
