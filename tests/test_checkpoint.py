"""Checkpoints: durable atomic writes, a content digest checked on load, one-line errors for every unusable file,
the last K kept and a fall-back to the newest intact one, a full disk or read-only folder leaving the old intact."""
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

from ddpmkit.checkpoint import (DamagedCheckpoint, load_checkpoint, periodic_checkpoints, read_checkpoint,
                                save_checkpoint, state_digest)
from ddpmkit.cli import main
from ddpmkit.errors import DdpmkitError
from ddpmkit.files import atomic_write
from ddpmkit.train import train
from test_training import _with


@pytest.fixture(scope="module")
def trained_run(tiny_idx_root, tmp_path_factory):
    """A finished tiny run with checkpoints at steps 2, 4 and 6, keeping the last 2."""
    from ddpmkit.config import config_from_dict
    from conftest import tiny_config_dict

    d = tiny_config_dict(tiny_idx_root)
    d["train"].update(checkpoint_every=2, keep_checkpoints=2, eval_every=0)
    run = tmp_path_factory.mktemp("run")
    train(config_from_dict(d), run, progress=False)
    return run


def _one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- writing --------------------------------------------------------------------------------------------------------

def test_writes_are_flushed_to_disk_before_and_after_the_rename(tmp_path, monkeypatch):
    # Atomic is not enough: without fsync a power cut can leave the renamed file empty (ext4, XFS).
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                   real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))), real_replace(a, b)))
    target = tmp_path / "c.pt"
    save_checkpoint({"a": torch.ones(2)}, target)
    replace = next(i for i, e in enumerate(events) if e[0] == "replace")
    tmp = events[replace][1]
    assert ("fsync", tmp) in events[:replace]                     # the data, before it gets the name
    assert ("fsync", str(tmp_path)) in events[replace + 1:]       # the folder entry, after the rename
    assert events[replace][2] == str(target)


def test_written_files_get_the_permissions_open_gives(tmp_path):
    # Regression: tempfile's private 0o600 survived the rename, so checkpoints, grids and exports were unreadable to
    # anyone else on the machine. A file written in place with open() gets 0o666 less the umask.
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    save_checkpoint({"a": torch.ones(2)}, tmp_path / "c.pt")
    with atomic_write(tmp_path / "other.bin") as f:
        f.write(b"x")
    for name in ("c.pt", "other.bin"):
        assert (tmp_path / name).stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_the_periodic_checkpoints_are_the_last_k_and_latest_is_the_newest(trained_run):
    assert [p.name for p in periodic_checkpoints(trained_run)] == ["step_00000006.pt", "step_00000004.pt"]
    for name in ("latest.pt", "final.pt"):
        assert os.path.samefile(trained_run / name, trained_run / "checkpoints" / "step_00000006.pt")
    assert read_checkpoint(trained_run / "latest.pt")["step"] == 6


def test_the_digest_covers_every_value():
    state = {"model": {"w": torch.arange(4.0)}, "step": 3, "config": {"lr": 1e-3, "mults": (1, 2)}}
    digest = state_digest(state)
    assert state_digest({**state, "model": {"w": torch.arange(4.0)}}) == digest
    assert state_digest({**state, "config": {"lr": 1e-3, "mults": [1, 2]}}) == digest  # tuple or list alike
    for changed in ({"model": {"w": torch.tensor([0.0, 1.0, 2.0, 3.5])}}, {"step": 4}, {"config": {"lr": 2e-3}},
                    {"model": {"w": torch.arange(4.0).double()}}, {"model": {"w": torch.arange(4.0).view(2, 2)}}):
        assert state_digest({**state, **changed}) != digest, changed


# -- reading what is not a usable checkpoint -------------------------------------------------------------------------

def _flip_a_weight_byte(src: Path, dst: Path) -> None:
    """Copy a checkpoint, changing one byte inside a tensor's data (the zip's structure stays valid)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        records = [n for n in zin.namelist() if "/data/" in n]
        largest = max(records, key=lambda n: zin.getinfo(n).file_size)
        for name in zin.namelist():
            data = bytearray(zin.read(name))
            if name == largest:
                data[len(data) // 2] ^= 0x40
            zout.writestr(zin.getinfo(name), bytes(data))


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['DDPMKIT_TEST_MARKER']}",))


def _bad_checkpoints(good: Path, folder: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the one-line error must say)."""
    raw = good.read_bytes()
    files = {}

    def add(name, content, message):
        path = folder / f"{name}.pt"
        path.write_bytes(content) if isinstance(content, bytes) else content(path)
        files[name] = (path, message)

    add("empty", b"", "is empty (0 bytes)")
    add("truncated", raw[: len(raw) // 2], "truncated or corrupted")
    add("random_bytes", os.urandom(4096), "truncated or corrupted")
    add("flipped_weight", lambda p: _flip_a_weight_byte(good, p), "no longer matches the digest")
    add("plain_state_dict", lambda p: torch.save({"weight": torch.ones(3)}, p), "not a ddpmkit checkpoint")
    add("a_list", lambda p: torch.save([torch.ones(3)], p), "not a ddpmkit checkpoint")
    os.environ["DDPMKIT_TEST_MARKER"] = str(marker)
    add("runs_code", lambda p: p.write_bytes(pickle.dumps({"model": RunsCode()})), "not a PyTorch file")
    add("runs_code_in_zip", lambda p: torch.save({"model": RunsCode()}, p), "refused")
    return files


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unusable_checkpoints_give_one_line_and_run_nothing(trained_run, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    for name, (path, message) in _bad_checkpoints(trained_run / "final.pt", tmp_path, marker).items():
        with pytest.raises(DamagedCheckpoint) as err:
            read_checkpoint(path)
        assert message in str(err.value), (name, str(err.value))
        out = tmp_path / f"samples_{name}"
        err = _one_line_error(["sample", "--checkpoint", str(path), "--output-dir", str(out), "--no-progress"],
                              capsys)
        assert message in err, (name, err)
        assert not out.exists(), name  # nothing written
        resume_dir = tmp_path / f"resume_{name}"
        _one_line_error(["train", "--config", str(trained_run / "config.json"), "--run-dir", str(resume_dir),
                         "--resume", str(path), "--no-progress"], capsys)
        assert not (resume_dir / "latest.pt").exists()
    assert not marker.exists(), "a checkpoint ran code"


def test_a_checkpoint_whose_config_or_weights_do_not_fit_is_refused_in_one_line(trained_run, tmp_path, capsys):
    state = read_checkpoint(trained_run / "final.pt")
    future = {**state, "config": {**state["config"], "train": {**state["config"]["train"], "warp_drive": 1}}}
    save_checkpoint(future, tmp_path / "future.pt")
    err = _one_line_error(["sample", "--checkpoint", str(tmp_path / "future.pt")], capsys)
    assert "unknown key train.warp_drive" in err
    wider = {**state, "unet": {**state["unet"], "base_channels": 16}}
    save_checkpoint(wider, tmp_path / "wider.pt")
    err = _one_line_error(["sample", "--checkpoint", str(tmp_path / "wider.pt")], capsys)
    assert "weights do not fit the network" in err
    # Resuming a run with another model config is refused before anything is written.
    before = sorted(p.name for p in trained_run.rglob("*"))
    err = _one_line_error(["train", "--config", str(trained_run / "config.json"), "--set", "train.steps=8",
                           "--set", "model.base_channels=16", "--run-dir", str(trained_run)], capsys)
    assert "cannot resume: the config changed (model.base_channels: 8 -> 16)" in err
    assert sorted(p.name for p in trained_run.rglob("*")) == before


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tiny_config, tmp_path, capsys):
    cfg = _with(tiny_config, train={"steps": 8, "checkpoint_every": 2, "keep_checkpoints": 3, "eval_every": 0})
    run = tmp_path / "run"
    train(cfg, run, stop_at=6, progress=False)
    newest = run / "checkpoints" / "step_00000006.pt"
    _flip_a_weight_byte(newest, tmp_path / "flipped.pt")
    os.replace(tmp_path / "flipped.pt", newest)  # latest.pt still names the old (undamaged) inode: damage both
    os.link(newest, run / ".l")
    os.replace(run / ".l", run / "latest.pt")
    capsys.readouterr()
    train(cfg, run, progress=False)
    out = capsys.readouterr()
    assert "step_00000006.pt is damaged" in out.err and "trying an older one" in out.err
    assert "resuming at step 4" in out.out
    # The resumed run redid steps 5 and 6 and reached the same weights as a run never damaged.
    straight = load_checkpoint(train(cfg, tmp_path / "straight", progress=False))
    resumed = load_checkpoint(run / "final.pt")
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name


def test_a_run_directory_with_only_damaged_checkpoints_says_so(tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    train(_with(tiny_config, train={"eval_every": 0, "keep_checkpoints": 1}), run, stop_at=3, progress=False)
    for path in [*periodic_checkpoints(run), run / "latest.pt"]:
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DamagedCheckpoint, match="no intact checkpoint among 1 tried"):
        train(tiny_config, run, progress=False)


# -- a full disk and a read-only folder ------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), OSError(30, "Read-only file system")])
def test_a_failed_save_stops_training_and_keeps_the_previous_checkpoint(tiny_config, tmp_path, monkeypatch, error,
                                                                        capsys):
    import ddpmkit.checkpoint as checkpoint

    real_save, calls = torch.save, []

    def failing_second_save(obj, f):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"partial")
            raise error
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", failing_second_save)
    cfg = _with(tiny_config, train={"checkpoint_every": 2, "eval_every": 0})
    with pytest.raises(DdpmkitError, match=f"{error.strerror}; no earlier file was touched. Free disk space"):
        train(cfg, tmp_path, progress=False)
    assert read_checkpoint(tmp_path / "latest.pt")["step"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002.pt"]


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_really_full_disk_and_a_really_read_only_folder(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1m"):
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        state = {"model": {"w": torch.randn(40_000)}, "ema": {}, "config": {}, "unet": {}, "step": 1}  # 160 kB
        save_checkpoint(state, disk / "c.pt")
        with open(disk / "filler", "wb") as f:  # fill the rest of the disk
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        with pytest.raises(DdpmkitError, match="No space left on device; .*c.pt still holds the previous checkpoint"):
            save_checkpoint({**state, "step": 2}, disk / "c.pt")
        assert read_checkpoint(disk / "c.pt")["step"] == 1
        assert sorted(p.name for p in disk.iterdir()) == ["c.pt", "filler"]
        (disk / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        with pytest.raises(DdpmkitError, match="Read-only file system; .*c.pt still holds the previous checkpoint"):
            save_checkpoint({**state, "step": 3}, disk / "c.pt")
        assert read_checkpoint(disk / "c.pt")["step"] == 1
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_training_onto_a_disk_that_fills_up_then_resuming_once_there_is_room(tiny_config, tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "1800k"):  # room for two of this model's ~0.9 MB checkpoints, not three
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        cfg = _with(tiny_config, train={"steps": 6, "checkpoint_every": 1, "keep_checkpoints": 2, "eval_every": 0})
        with pytest.raises(DdpmkitError, match="No space left on device; .* then run the same command again"):
            train(cfg, disk / "run", progress=False)
        kept = read_checkpoint(disk / "run" / "latest.pt")["step"]
        assert kept >= 1 and not [p for p in disk.rglob("*") if p.name.endswith(".tmp")]
        subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
        capsys.readouterr()
        train(cfg, disk / "run", progress=False)
        assert f"resuming at step {kept}" in capsys.readouterr().out
        assert read_checkpoint(disk / "run" / "final.pt")["step"] == 6
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_atomic_write_leaves_nothing_on_error(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with atomic_write(tmp_path / "x.bin") as f:
            f.write(b"half")
            1 / 0
    assert list(tmp_path.iterdir()) == []
