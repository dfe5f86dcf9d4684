"""Atomic file writes: readers (and a run killed with -9) see the old file or the whole new one."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from neuronatlas.core.diskspace import disk_full_error, is_disk_full


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file + rename. ``durable`` also fsyncs the file
    and its directory, to survive a power cut (a rename alone is enough for kill -9). A full
    disk raises ``StorageFull`` and leaves the old file (no temp file behind)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        if is_disk_full(e):
            raise disk_full_error(path, e) from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and is_disk_full(e):
            raise disk_full_error(path, e) from None
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, durable: bool = True) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode(), durable)


def atomic_save_npz(
    path: str | os.PathLike[str], arrays: dict[str, np.ndarray], durable: bool = False
) -> None:
    buf = io.BytesIO()
    named: dict[str, Any] = arrays  # as Any: mypy would also match **arrays to allow_pickle
    np.savez(buf, **named)
    atomic_write_bytes(path, buf.getvalue(), durable)


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray, durable: bool = False) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue(), durable)
