"""A full disk stops a command with StorageFull and leaves the store as it was.

On a real small tmpfs when this process may mount one (root in a container), otherwise with
``shutil.disk_usage`` reporting a full disk (the check is the same code path).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from helpers import ALPHA, INFO, entry, make_records

from neuronatlas.core import atomic, diskspace
from neuronatlas.core.errors import InvalidArgument, StorageFull
from neuronatlas.core.store.edge import EdgeStore

_Usage = namedtuple("_Usage", "total used free")


@pytest.fixture()
def small_disk(tmp_path: Path):
    """A 600 MiB tmpfs, or None when mounting is not allowed here."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    ok = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600m", "tmpfs", str(mnt)], capture_output=True
    )
    if ok.returncode != 0:
        yield None
        return
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(disk: Path, leave_mb: float) -> None:
    free = shutil.disk_usage(disk).free
    with open(disk / "ballast", "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, int(free - leave_mb * (1 << 20))))


def test_reserve_setting(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NEURONATLAS_MIN_FREE_MB", "1.5")
    assert diskspace.min_free_bytes() == int(1.5 * (1 << 20))
    for bad in ("-1", "lots", "nan"):
        monkeypatch.setenv("NEURONATLAS_MIN_FREE_MB", bad)
        with pytest.raises(InvalidArgument, match="NEURONATLAS_MIN_FREE_MB"):
            diskspace.min_free_bytes()


def test_open_and_write_on_a_full_disk(tmp_path: Path, small_disk, monkeypatch):
    monkeypatch.setenv("NEURONATLAS_MIN_FREE_MB", "8")
    root = small_disk or tmp_path
    path = root / "store"
    with EdgeStore(path) as s:
        s.bind_embedder(INFO)
        s.upsert_neurons(make_records("alpha", ALPHA, seed=1))
        s.put_model(entry("alpha", layers=ALPHA))
    if small_disk is not None:
        _fill(small_disk, leave_mb=4)
    else:
        monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda p: _Usage(1 << 30, 0, 4 << 20))
    files_before = sorted((p.name, p.stat().st_size) for p in path.rglob("*") if p.is_file())
    with pytest.raises(StorageFull, match="MiB free"):  # even a read-only command: open maps WAL
        EdgeStore(path)
    assert (
        sorted((p.name, p.stat().st_size) for p in path.rglob("*") if p.is_file()) == files_before
    )

    # Some space comes back, the store opens; a write that would not fit is refused up front.
    if small_disk is not None:
        (small_disk / "ballast").unlink()
        # the reserve + the holes an open may fill on tmpfs (counted by the open-time check)
        _fill(small_disk, leave_mb=64 + diskspace.unfilled_mapped_bytes(path) / (1 << 20) + 8)
    else:
        monkeypatch.setattr(diskspace.shutil, "disk_usage", lambda p: _Usage(1 << 30, 0, 120 << 20))
    monkeypatch.setenv("NEURONATLAS_MIN_FREE_MB", "64")
    with EdgeStore(path) as s:
        big = make_records("gamma", {"layer": 80_000}, seed=3)  # ~340 MiB by the estimate
        with pytest.raises(StorageFull, match="write 80000 neurons"):
            s.upsert_neurons(big)
        assert s.count() == 12 and [e.model_id for e in s.list_models()] == ["alpha"]
    if small_disk is not None:
        (small_disk / "ballast").unlink()
    monkeypatch.undo()
    monkeypatch.setenv("NEURONATLAS_MIN_FREE_MB", "8")
    with EdgeStore(path) as s:
        assert s.count() == 12 and s.get_model("alpha").model_id == "alpha"


def test_atomic_write_enospc_leaves_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "state.json"
    atomic.atomic_write_json(target, {"v": 1})

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(StorageFull, match="is full"):
        atomic.atomic_write_json(target, {"v": 2})
    assert target.read_text().replace(" ", "").replace("\n", "") == '{"v":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left


def test_cli_reports_full_disk_in_one_line(tmp_path: Path, small_disk):
    """`neuronatlas models` on a full disk: exit 2 and one line, not SIGBUS."""
    root = small_disk or tmp_path
    home = root / "home"
    env = {**os.environ, "NEURONATLAS_HOME": str(home), "NEURONATLAS_MIN_FREE_MB": "8"}
    cmd = [sys.executable, "-m", "neuronatlas.cli", "models"]
    assert subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    if small_disk is not None:
        _fill(small_disk, leave_mb=2)
    else:
        env["NEURONATLAS_MIN_FREE_MB"] = str(10 * shutil.disk_usage(root).free >> 20)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "free" in lines[0] and "Traceback" not in res.stderr


def test_open_counts_what_tmpfs_fills(tmp_path: Path, small_disk, monkeypatch):
    """On tmpfs, opening a store gives the holes of every chunk the engine maps real pages
    (~110 MiB for a small store): the open-time check counts them, so a tmpfs with the reserve
    free but not the holes gets StorageFull, not SIGBUS, and the store stays as it was."""
    if small_disk is None:
        pytest.skip("needs a real tmpfs (this process may not mount one)")
    monkeypatch.setenv("NEURONATLAS_MIN_FREE_MB", "8")
    path = small_disk / "store"
    with EdgeStore(path) as s:
        s.bind_embedder(INFO)
        s.upsert_neurons(make_records("alpha", ALPHA, seed=1))
        s.put_model(entry("alpha", layers=ALPHA))
    holes = diskspace.unfilled_mapped_bytes(path)
    assert diskspace.filesystem_type(path) == "tmpfs" and holes > 32 << 20
    _fill(small_disk, leave_mb=8 + holes / 2 / (1 << 20))
    files_before = sorted((p.name, p.stat().st_size) for p in path.rglob("*") if p.is_file())
    with pytest.raises(StorageFull, match="open the store"):
        EdgeStore(path)
    assert (
        sorted((p.name, p.stat().st_size) for p in path.rglob("*") if p.is_file()) == files_before
    )
    (small_disk / "ballast").unlink()
    with EdgeStore(path) as s:
        assert s.count() == 12 and [e.model_id for e in s.list_models()] == ["alpha"]


def test_holes_count_only_on_memory_backed_filesystems(tmp_path: Path):
    sparse = tmp_path / "sparse.bin"
    with open(sparse, "wb") as f:
        f.truncate(64 << 20)  # a 64 MiB hole
    kind = diskspace.filesystem_type(tmp_path)
    assert kind  # /proc/self/mounts names the filesystem of every path
    want = 64 << 20 if kind in {"tmpfs", "ramfs", "shmem"} else 0
    assert diskspace.unfilled_mapped_bytes(tmp_path) == want
