"""Files that are never left half-written: a killed process or a power cut leaves either the old file or the new one.

The recipe (the one databases use): write a temporary file in the same folder, flush it to the disk (fsync), rename
it over the target (atomic on POSIX and on Windows' NTFS), then flush the folder so the rename itself survives a
power cut. A process killed with SIGKILL mid-write leaves only its temporary file, ``.NAME.XXXXXXXX.tmp``, which
``remove_stale_temporaries`` clears the next time the same job starts.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; when the block ends without error it durably replaces ``path``, on any
    error (or Ctrl-C) it is deleted and ``path`` is untouched. Writers that pick a format from the file name need
    it given explicitly (``image.save(f, format="PNG")``), since the temporary name ends in ``.tmp``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_text(path: str | Path, text: str) -> Path:
    """``Path.write_text``, atomically and durably."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON, atomically and durably."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")


def fsync_folder(folder: str | Path) -> None:
    """Flush a folder's entries (a rename, a new file) to the disk. Where folders cannot be opened or synced
    (Windows, some network file systems) there is nothing more to do, so it returns quietly."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file of ``atomic_write``."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left under ``folder``; returns what was deleted.
    Only for folders no other process is writing to (a run directory while its run starts)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.rglob(f".*{TEMP_SUFFIX}") if p.is_file() and is_temporary(p)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
