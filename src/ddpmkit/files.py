"""Files that are never left half-written: a killed process or a power cut leaves either the old file or the new one.

The recipe (the one databases use): write a temporary file in the same folder, flush it to the disk (fsync), rename
it over the target (atomic on POSIX and on Windows' NTFS), then flush the folder so the rename itself survives a
power cut. A process killed with SIGKILL mid-write leaves only its temporary file, ``.NAME.ddpmkit-XXXXXXXX.tmp``
(named so that no other program's hidden ``.tmp`` files are taken for ddpmkit's): the first
``atomic_write`` of any later process into the same folder removes it (``remove_stale_temporaries``), so every command
clears what a killed run left in its output folder. A writer holds a lock on its temporary file until the file has
its name, and the kernel drops a dead process's locks: that tells an abandoned file from one still being written.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

try:
    import fcntl
except ImportError:  # Windows: no flock, but an open file cannot be deleted there, which protects it just as well
    fcntl = None

TEMP_SUFFIX = ".tmp"
TEMP_MARK = ".ddpmkit-"  # in every temporary file's name, between the target's name and the random part
_CLEARED: set[Path] = set()  # folders this process has cleared: once each, or N files written into one list it N times


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


UMASK = _umask()


def shareable(path: str | Path) -> None:
    """Give a file (0o666) or folder (0o777) the permissions the umask allows, as ``open`` and ``mkdir`` would:
    ``tempfile``'s are private (0o600, 0o700), which would make every renamed-into-place output unreadable to
    anyone else (a shared checkpoint, a model folder)."""
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~UMASK)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; when the block ends without error it durably replaces ``path``, on any
    error (or Ctrl-C) it is deleted and ``path`` is untouched. Writers that pick a format from the file name need
    it given explicitly (``image.save(f, format="PNG")``), since the temporary name ends in ``.tmp``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_once(path.parent)
    fd, tmp, lock = _locked_temporary(path)
    try:
        shareable(tmp)
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        if lock is not None:
            os.close(lock)  # the lock lasts until the file has its name
    fsync_folder(path.parent)


def _locked_temporary(path: Path) -> tuple[int, str, int | None]:
    """A new temporary file beside ``path``: (its descriptor, its name, a second descriptor holding an exclusive lock
    on it; None on Windows). A clearer that deleted the file between its creation and the lock leaves it with no
    name (st_nlink 0): then a new one is made."""
    while True:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_MARK}", suffix=TEMP_SUFFIX)
        if fcntl is None:
            return fd, tmp, None
        lock = os.dup(fd)
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.fstat(lock).st_nlink:
            return fd, tmp, lock
        os.close(lock)
        os.close(fd)


def _clear_once(folder: Path) -> None:
    """Remove the abandoned temporaries in ``folder`` (not below it), the first time this process writes there."""
    key = folder.resolve()
    if key not in _CLEARED:
        _CLEARED.add(key)
        remove_stale_temporaries(folder, recursive=False)


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
    return path.name.startswith(".") and TEMP_MARK in path.name and path.name.endswith(TEMP_SUFFIX)


def remove_stale_temporaries(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in ``folder`` (and below it when ``recursive``);
    returns what was deleted. Files whose writers are still at work are left alone, so any process may call it."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f".*{TEMP_MARK}*{TEMP_SUFFIX}"
    found = folder.rglob(pattern) if recursive else folder.glob(pattern)
    return [p for p in found if p.is_file() and is_temporary(p) and _remove_if_abandoned(p)]


def _remove_if_abandoned(path: Path) -> bool:
    """Delete a temporary file unless a live writer holds it (its lock; on Windows, the open file refuses deletion).
    Files that cannot be opened for writing (another user's) are left too."""
    try:
        if fcntl is None:  # Windows: deleting a file still open for writing fails
            path.unlink()
            return True
        fd = os.open(path, os.O_RDWR)  # writable: network file systems lock exclusively only what is open for writing
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path.unlink(missing_ok=True)  # refused in a sticky folder (/tmp) for another user's file: then it stays
    except OSError:
        return False
    else:
        return True
    finally:
        os.close(fd)


def recover_folder(output: str | Path) -> None:
    """Undo what a ``write_folder_atomically(output, ...)`` killed with SIGKILL left: put back the previous
    ``output`` it had moved aside (if ``output`` is missing), delete its unfinished new folder."""
    output = Path(output)
    if not output.parent.is_dir():
        return
    for moved in output.parent.glob(f".{output.name}.replaced-*{TEMP_SUFFIX}"):
        if (moved / output.name).is_dir() and not output.exists():
            os.replace(moved / output.name, output)
        shutil.rmtree(moved, ignore_errors=True)
    for unfinished in output.parent.glob(f".{output.name}.writing-*{TEMP_SUFFIX}"):
        shutil.rmtree(unfinished, ignore_errors=True)


def write_folder_atomically(output: str | Path, fill: Callable[[Path], None]) -> Path:
    """Make the folder ``output`` appear whole or not at all: ``fill(folder)`` writes a new folder beside it, which
    is then renamed to ``output``; an existing ``output`` is moved aside first and deleted after. Ctrl-C or an error
    leaves ``output`` as it was; after SIGKILL the next call for the same ``output`` first recovers (recover_folder).
    One call per ``output`` at a time."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(output)
    work = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.writing-", suffix=TEMP_SUFFIX))
    shareable(work)
    moved = None
    try:
        fill(work)
        fsync_folder(work)
        if output.exists():
            moved = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.replaced-", suffix=TEMP_SUFFIX))
            os.replace(output, moved / output.name)
        os.replace(work, output)
        fsync_folder(output.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if moved is not None and not output.exists():  # put the previous folder back
            os.replace(moved / output.name, output)
        raise
    finally:
        if moved is not None:
            shutil.rmtree(moved, ignore_errors=True)
    return output
