"""Probe sets: named, content-hashed folders of images, and their cached CLIP embeddings.

A probe set is registered once (``Home.probe_file(name)``: ``<home>/probes/<name>.json``): its
images in sorted relative-path order (class folders or flat), unreadable files skipped and
counted, and a content hash over the relative paths and file bytes. The row of an image in
that order is its sample index everywhere (top-k indices, embedding matrix rows).

Embeddings are computed once per (probe-set hash, embedder identity) and cached under
``Home.embeddings_cache`` (``<home>/cache/embeddings/``) as ``.npy`` + ``.json`` manifest, both
written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from neuronatlas.core.atomic import atomic_save_npy, atomic_write_json
from neuronatlas.core.config import Home, HomeLike
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from neuronatlas.core.hashing import file_sha256
from neuronatlas.core.records import EmbedderInfo
from neuronatlas.core.validate import shown

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass
class ProbeSet:
    name: str
    root: Path
    files: list[str]  # relative posix paths, sorted; index = sample index
    sha256: str
    skipped: list[str] = field(default_factory=list)  # unreadable files (relative paths)
    limit: int | None = None
    signature: str = ""  # hash of (path, size, mtime) of the scanned files: cheap change check

    @property
    def id(self) -> str:
        return f"{self.name}@{self.sha256[:12]}"

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> Path:
        return self.root / self.files[index]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["root"] = str(self.root)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeSet:
        return cls(
            d["name"],
            Path(d["root"]),
            list(d["files"]),
            d["sha256"],
            list(d.get("skipped", [])),
            d.get("limit"),
            d.get("signature", ""),
        )


def _image_files(folder: Path) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for fn in filenames:
            if not fn.startswith(".") and Path(fn).suffix.lower() in IMAGE_SUFFIXES:
                out.append(Path(dirpath, fn).relative_to(folder).as_posix())
    return sorted(out)


def balanced_subset(files: list[str], limit: int) -> list[str]:
    """A deterministic class-balanced subset: round-robin over the top-level folders (the
    classes; one group for a flat folder), each in sorted order. Returned sorted."""
    groups: dict[str, list[str]] = {}
    for f in files:
        groups.setdefault(f.split("/")[0] if "/" in f else "", []).append(f)
    queues = [groups[g] for g in sorted(groups)]
    picked: list[str] = []
    pos = 0
    while len(picked) < limit and any(pos < len(q) for q in queues):
        for q in queues:
            if pos < len(q) and len(picked) < limit:
                picked.append(q[pos])
        pos += 1
    return sorted(picked)


def _candidates(root: Path, limit: int | None) -> list[str]:
    files = _image_files(root)
    return balanced_subset(files, limit) if limit is not None else files


def stat_signature(root: Path, files: list[str]) -> str:
    h = hashlib.sha256()
    for rel in files:
        try:
            st = (root / rel).stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{rel}\0missing\n".encode())
    return h.hexdigest()


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - PIL raises many types for corrupt or truncated files
        return False


def check_probe_name(name: str, field: str = "probe") -> str:
    """Probe-set names: 1-128 letters, digits, '.', '_' or '-' (not starting with '.')."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"probe-set name {shown(name)} must be 1-128 letters, digits, '.', '_' or '-'",
            field=field,
        )
    return name


def scan_probe_folder(
    name: str, folder: str | Path, limit: int | None = None, progress: bool = False
) -> ProbeSet:
    """Scan, validate and hash a folder of images (does not register it)."""
    check_probe_name(name)
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise NotFound(f"probe folder {root} does not exist")
    if limit is not None and limit < 1:
        raise InvalidArgument(f"probe limit must be >= 1, not {limit}", field="limit")
    files = _candidates(root, limit)
    good, skipped = [], []
    h = hashlib.sha256()
    for rel in tqdm(files, desc=f"scan {name}", disable=not progress, unit="img"):
        path = root / rel
        if not _readable(path):
            skipped.append(rel)
            continue
        good.append(rel)
        h.update(rel.encode() + b"\0" + bytes.fromhex(file_sha256(path)))
    if not good:
        what = f" ({len(skipped)} unreadable)" if skipped else ""
        raise InvalidArgument(f"probe folder {root} holds no readable images{what}", field="probe")
    return ProbeSet(name, root, good, h.hexdigest(), skipped, limit, stat_signature(root, files))


def register_probe_set(
    home: HomeLike,
    name: str,
    folder: str | Path,
    limit: int | None = None,
    replace: bool = False,
    progress: bool = False,
) -> ProbeSet:
    """Register a probe folder under ``name``. Same content again is a no-op; other content
    under a taken name needs ``replace=True`` (else AlreadyExists)."""
    probe = scan_probe_folder(name, folder, limit, progress)
    path = Home.of(home).probe_file(name)
    if path.exists():
        old = load_probe_set(home, name)
        if old.sha256 == probe.sha256:
            return old
        if not replace:
            raise AlreadyExists(
                f"probe set {name!r} is already registered with other content ({old.root}, "
                f"{len(old)} images); pick another name or replace it"
            )
    atomic_write_json(path, probe.to_dict())
    return probe


def open_probe_set(
    home: HomeLike, name: str, folder: str | Path, limit: int | None = None, progress: bool = False
) -> ProbeSet:
    """The registered probe set ``name`` if it still matches ``folder`` (same root, limit and
    file sizes/mtimes: no re-hashing), else register the folder under ``name``."""
    root = Path(folder).expanduser().resolve()
    path = Home.of(home).probe_file(name)
    if path.is_file() and root.is_dir():
        old = load_probe_set(home, name)
        if (
            old.root == root
            and old.limit == limit
            and old.signature == stat_signature(root, _candidates(root, limit))
        ):
            return old
    return register_probe_set(home, name, root, limit, progress=progress)


def load_probe_set(home: HomeLike, name: str) -> ProbeSet:
    home = Home.of(home)
    check_probe_name(name)
    path = home.probe_file(name)
    if not path.is_file():
        known = sorted(p.stem for p in home.probes.glob("*.json"))
        listed = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
        raise NotFound(
            f"no probe set named {shown(name)} (registered: {listed or 'none'})",
            resource_type="probe set",
            resource_name=name,
        )
    return ProbeSet.from_dict(json.loads(path.read_text()))


def list_probe_sets(home: HomeLike) -> list[ProbeSet]:
    """Every registered probe set, by name (unreadable registrations left out)."""
    home = Home.of(home)
    out = []
    paths = home.probes.glob("*.json") if home.probes.is_dir() else iter(())
    for path in sorted(paths, key=lambda p: p.stem):
        try:
            out.append(ProbeSet.from_dict(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def probe_set_of(home: HomeLike, probe_id: str) -> ProbeSet | None:
    """The registered probe set a model was indexed with (``ModelEntry.probe_set``,
    ``name@sha12``), or None when it is gone or was replaced by other images since."""
    name, _, prefix = probe_id.partition("@")
    try:
        probe = load_probe_set(home, name)
    except (NotFound, InvalidArgument, OSError, ValueError, KeyError, TypeError):
        return None
    return probe if prefix and probe.sha256.startswith(prefix) else None


class ProbeImages(torch.utils.data.Dataset[torch.Tensor]):
    """The images of a probe set through a transform, in sample order."""

    def __init__(self, probe: ProbeSet, transform: Callable[[Image.Image], torch.Tensor]):
        self.probe, self.transform = probe, transform

    def __len__(self) -> int:
        return len(self.probe)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.probe.path(i)
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a damaged file
            raise FailedPrecondition(
                f"probe image {path} can no longer be read ({e}); register probe set "
                f"{self.probe.name!r} again"
            ) from None
        return self.transform(img)


def batches(
    probe: ProbeSet,
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    start: int = 0,
    workers: int = 0,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (first sample index, (b, C, H, W) tensor) in sample order from ``start``."""
    ds: torch.utils.data.Dataset[torch.Tensor] = ProbeImages(probe, transform)
    if start:
        ds = torch.utils.data.Subset(ds, range(start, len(probe)))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, shuffle=False, num_workers=workers
    )
    pos = start
    for x in loader:
        yield pos, x
        pos += x.shape[0]


def embedder_key(info: EmbedderInfo) -> str:
    return hashlib.sha256(json.dumps(info.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def embedding_cache_path(home: HomeLike, probe: ProbeSet, info: EmbedderInfo) -> Path:
    cache = Home.of(home).embeddings_cache
    return cache / f"{probe.sha256[:16]}-{embedder_key(info)}.npy"


def probe_embeddings(
    home: HomeLike,
    probe: ProbeSet,
    embedder: Embedder,
    batch_size: int = 256,
    progress: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """(n, dim) L2-normalised image embeddings of the probe set, computed once and cached.
    ``on_batch(images_done)`` is called after each batch computed (not for a cache hit)."""
    path = embedding_cache_path(home, probe, embedder.info)
    manifest = path.with_suffix(".json")
    if path.is_file() and manifest.is_file():
        meta = json.loads(manifest.read_text())
        emb: np.ndarray = np.load(path)
        if meta.get("probe_sha256") == probe.sha256 and emb.shape == (
            len(probe),
            embedder.info.dim,
        ):
            return emb
    out = np.zeros((len(probe), embedder.info.dim), np.float32)
    bar = tqdm(total=len(probe), desc=f"embed {probe.name}", unit="img", disable=not progress)
    with torch.inference_mode():
        for start, x in batches(probe, embedder.preprocess, batch_size):
            out[start : start + x.shape[0]] = embedder.encode_images(x, batch_size=batch_size)
            bar.update(x.shape[0])
            if on_batch is not None:
                on_batch(start + x.shape[0])
    bar.close()
    atomic_save_npy(path, out, durable=True)
    atomic_write_json(
        manifest,
        {
            "probe": probe.id,
            "probe_sha256": probe.sha256,
            "embedder": embedder.info.to_dict(),
            "count": len(probe),
            "files": probe.files,
        },
    )
    return out
