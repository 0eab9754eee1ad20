"""Models on the Hugging Face Hub, by id (``google/ddpm-cifar10-32``): read from the local Hugging Face cache, or
downloaded into it when the machine is online, through ``huggingface_hub`` (``pip install 'ddpmkit[hub]'``)."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import DdpmkitError

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_repo_id(text: str) -> bool:
    """``owner/name`` with nothing else: no more slashes, no file ending of a ddpmkit file."""
    return bool(REPO_ID.fullmatch(text)) and not text.endswith((".pt", ".safetensors", ".json", ".npz"))


def fetch(repo_id: str, files: list[str], fallback_files: list[str]) -> Path:
    """The local folder of ``repo_id``'s ``files`` (glob patterns): the cached snapshot if there is one, else a
    download. ``fallback_files`` are fetched only when none of the weights in ``files`` exist (old repositories
    hold pickled .bin weights only)."""
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise DdpmkitError(f"{repo_id} is not a file or folder here; if it is a Hugging Face Hub id, reading it "
                           f"needs huggingface_hub: pip install 'ddpmkit[hub]'") from None

    def snapshot(patterns: list[str], local: bool) -> Path:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=local))

    def has_weights(folder: Path, names: list[str]) -> bool:
        return any((folder / f).is_file() for f in names if f.endswith((".safetensors", ".bin")))

    try:  # a cached snapshot: nothing is downloaded, so the fallback files may be looked for at once
        folder = snapshot(files + fallback_files, local=True)
        if has_weights(folder, files + fallback_files):
            return folder
    except Exception:  # noqa: BLE001 - not in the cache (huggingface_hub's error classes vary across versions)
        pass
    if constants.HF_HUB_OFFLINE:
        raise DdpmkitError(f"{repo_id} is neither a file or folder here nor in the Hugging Face cache "
                           f"({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE forbids downloading it; download it on a "
                           f"connected machine ({_download_command(repo_id)}) and copy the cache over")
    try:
        folder = snapshot(files, local=False)
        if not has_weights(folder, files) and fallback_files:
            folder = snapshot(files + fallback_files, local=False)
        return folder
    except Exception as err:  # noqa: BLE001 - no network, no such repository, no access: all end here
        reason = " ".join(str(err).split())[:160] or type(err).__name__
        raise DdpmkitError(f"{repo_id} is neither a file or folder here nor in the Hugging Face cache "
                           f"({constants.HF_HUB_CACHE}), and downloading it failed ({reason}); check the name, or "
                           f"download it where there is internet ({_download_command(repo_id)})") from None


def _download_command(repo_id: str) -> str:
    """A command that fills the Hugging Face cache with ``repo_id``, whatever huggingface_hub version is there."""
    return f"python -c \"import huggingface_hub; huggingface_hub.snapshot_download('{repo_id}')\""
