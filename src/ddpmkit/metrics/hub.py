"""Pretrained weights that metrics need (Inception, LPIPS backbones) are read from torch hub's cache or a path the
user gives, never downloaded behind the user's back and never replaced by random weights."""
from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch


def hub_file(filename: str) -> Path:
    """Where torch hub keeps ``filename``: ``$TORCH_HOME/hub/checkpoints/filename``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def find_weights(filename: str, path: str | Path | None, what: str, url: str, alternative: str) -> Path:
    """``path`` if given, else the hub cache's copy of ``filename``; if the file is not there, a one-line
    DdpmkitError-ready message (raised as FileNotFoundError) says what to download and where to put it."""
    candidate = Path(path) if path else hub_file(filename)
    if not candidate.is_file():
        where = f"at {candidate}" if path else f"in {candidate.parent}/"
        raise FileNotFoundError(f"{what} {filename}, not found {where}. Download {url} on a machine with internet, "
                                f"put it {where} or {alternative}")
    return candidate


@contextmanager
def serving(weights: Path, filename: str):
    """Let torch hub find ``weights`` under its expected ``filename``, wherever the user keeps them (libraries
    such as torchmetrics' KID, IS and LPIPS take no weights path and look only in the hub cache)."""
    if weights.resolve() == hub_file(filename).resolve():
        yield
        return
    # Restore exactly what was set before: usually nothing, so that $TORCH_HOME keeps deciding (set_dir(get_dir())
    # would pin today's value for the rest of the process).
    had_private = hasattr(torch.hub, "_hub_dir")
    previous = torch.hub._hub_dir if had_private else torch.hub.get_dir()
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "checkpoints").mkdir()
        (Path(tmp) / "checkpoints" / filename).symlink_to(weights.resolve())
        torch.hub.set_dir(tmp)
        try:
            yield
        finally:
            if had_private:
                torch.hub._hub_dir = previous
            else:
                torch.hub.set_dir(previous)
