"""Free-space checks before writes, so a full disk stops a command cleanly.

Qdrant Edge maps its write-ahead log and storage pages into memory; on a full disk the kernel
cannot back a page the engine writes to and the process dies with SIGBUS (no message, store
state unknown). So every write path asks first: at least ``min_free_bytes()`` must stay free
after the bytes it is about to write. ``NEURONATLAS_MIN_FREE_MB`` sets the reserve (default
128; 0 turns the check off).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from neuronatlas.core.errors import InvalidArgument, StorageFull

DEFAULT_MIN_FREE_MB = 128
_MB = 1 << 20


def min_free_bytes() -> int:
    raw = os.environ.get("NEURONATLAS_MIN_FREE_MB", "")
    if not raw.strip():
        return DEFAULT_MIN_FREE_MB * _MB
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise InvalidArgument(
            f"NEURONATLAS_MIN_FREE_MB must be a number >= 0, not {raw[:40]!r}",
            field="min_free_mb",
        )
    return int(value * _MB)


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def ensure_free(path: str | os.PathLike[str], need_bytes: int = 0, what: str = "write") -> None:
    """Raise ``StorageFull`` unless ``need_bytes`` plus the reserve fit on ``path``'s disk."""
    reserve = min_free_bytes()
    if reserve == 0 and need_bytes == 0:
        return
    free = shutil.disk_usage(_existing(Path(path))).free
    if free < reserve + need_bytes:
        raise StorageFull(
            f"the disk holding {path} has {free / _MB:.0f} MiB free; to {what} safely "
            f"NeuronAtlas needs {(reserve + need_bytes) / _MB:.0f} MiB "
            f"({need_bytes / _MB:.0f} MiB for the data + a {reserve / _MB:.0f} MiB reserve). "
            "Nothing was written: free some space (or lower NEURONATLAS_MIN_FREE_MB) and retry"
        )


# filesystems whose mapped files take memory pages for their holes as soon as they are mapped
# and touched (a disk filesystem reads holes as zeros without allocating)
_MEMORY_BACKED = {"tmpfs", "ramfs", "shmem"}


def filesystem_type(path: str | os.PathLike[str]) -> str:
    """The type of the filesystem holding ``path`` (Linux ``/proc/self/mounts``; "" if unknown)."""
    target = str(_existing(Path(path)).resolve())
    best, kind = "", ""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return ""
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def unfilled_mapped_bytes(root: str | os.PathLike[str]) -> int:
    """Bytes the sparse files under ``root`` may still claim when the engine maps them: their
    holes (size minus allocated blocks) on a memory-backed filesystem such as tmpfs, where
    opening a store gives every mapped chunk real pages (a small store's open took 110-142 MiB
    there); 0 on a disk filesystem, where an open allocates nothing."""
    if filesystem_type(root) not in _MEMORY_BACKED:
        return 0
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += max(0, st.st_size - st.st_blocks * 512)
    return total


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(path: str | os.PathLike[str], exc: OSError) -> StorageFull:
    return StorageFull(f"the disk holding {path} is full ({exc.strerror}); nothing was written")
