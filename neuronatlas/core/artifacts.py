"""Content-addressed artifacts: files a client uploads so the server can index what it does not
already have (weights, TorchScript files, probe image archives).

An artifact is stored once under ``<home>/artifacts/<sha256>`` with a small JSON sidecar
(name, kind, size, time). A write streams chunks into a temporary file while hashing them,
enforces a size limit as it goes, and keeps the file only when the digest equals the one the
client declared; otherwise nothing is kept. Uploading the same bytes again is free (the file
exists). Sources and probe sets name an artifact as ``artifact:<sha256>``.

Archives (``.tar``, ``.tar.gz``, ``.zip``) unpack into a folder next to the file, refusing
absolute paths, ``..`` components, links and anything above the unpacked size limit.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from neuronatlas.core.atomic import atomic_write_json
from neuronatlas.core.diskspace import disk_full_error, ensure_free, is_disk_full
from neuronatlas.core.errors import InvalidArgument, NotFound
from neuronatlas.core.validate import shown

PREFIX = "artifact:"
KINDS = ("weights", "torchscript", "probe_archive", "other")
DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB
MAX_UNPACKED_BYTES = 8 << 30
MAX_ARCHIVE_MEMBERS = 200_000
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Artifact:
    sha256: str
    size: int
    name: str
    kind: str
    created_at: float

    @property
    def ref(self) -> str:
        return PREFIX + self.sha256


def check_sha256(value: str, field: str = "sha256") -> str:
    v = value.strip().lower() if isinstance(value, str) else ""
    if len(v) != 64 or not set(v) <= _HEX:
        raise InvalidArgument(f"{shown(value)} is not a sha256 hex digest", field=field)
    return v


def parse_ref(value: str) -> str | None:
    """The digest of an ``artifact:<sha256>`` reference, None for anything else."""
    if isinstance(value, str) and value.startswith(PREFIX):
        return check_sha256(value[len(PREFIX) :], field="artifact")
    return None


class ArtifactStore:
    """The artifacts folder of one home."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)

    def _file(self, sha: str) -> Path:
        return self.root / sha

    def _meta(self, sha: str) -> Path:
        return self.root / f"{sha}.json"

    def get(self, sha256: str) -> Artifact:
        sha = check_sha256(sha256)
        meta = self._meta(sha)
        if not self._file(sha).is_file() or not meta.is_file():
            raise NotFound(f"no artifact {sha}")
        return Artifact(**json.loads(meta.read_text()))

    def path(self, sha256: str) -> Path:
        """The file of a stored artifact."""
        return self._file(self.get(sha256).sha256)

    def resolve(self, value: str) -> str:
        """``artifact:<sha>`` -> the stored file's path; anything else unchanged."""
        sha = parse_ref(value)
        return str(self.path(sha)) if sha is not None else value

    def list(self) -> list[Artifact]:
        if not self.root.is_dir():
            return []
        out = []
        for meta in sorted(self.root.glob("*.json")):
            try:
                out.append(self.get(meta.stem))
            except (NotFound, InvalidArgument, ValueError, TypeError):
                continue
        return out

    def put(
        self,
        chunks: Iterable[bytes],
        *,
        sha256: str,
        name: str = "",
        kind: str = "other",
        size: int | None = None,
    ) -> Artifact:
        """Stream ``chunks`` in; keep them only if their digest is ``sha256`` (and their length
        ``size`` when given). Raises InvalidArgument (mismatch, too large, truncated)."""
        sha = check_sha256(sha256)
        if kind not in KINDS:
            raise InvalidArgument(f"artifact kind must be one of {', '.join(KINDS)}", field="kind")
        if size is not None and not 0 <= size <= self.max_bytes:
            raise InvalidArgument(
                f"artifact size {size} is outside 0..{self.max_bytes} bytes", field="size"
            )
        name = PurePosixPath(name or sha).name[:200]
        try:
            existing = self.get(sha)
        except NotFound:
            existing = None
        self.root.mkdir(parents=True, exist_ok=True)
        ensure_free(self.root, size or 0, what="store the upload")
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".upload.", suffix=".part")
        tmp = Path(tmp_name)
        digest, total = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    total += len(chunk)
                    if total > self.max_bytes:
                        raise InvalidArgument(
                            f"upload is larger than the limit of {self.max_bytes} bytes",
                            field="data",
                        )
                    digest.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            if size is not None and total != size:
                raise InvalidArgument(
                    f"upload ended after {total} of the {size} bytes announced (truncated)",
                    field="data",
                )
            if digest.hexdigest() != sha:
                raise InvalidArgument(
                    f"the uploaded bytes hash to {digest.hexdigest()}, not the declared {sha}",
                    field="sha256",
                )
            if existing is not None:
                return existing
            os.replace(tmp, self._file(sha))
            art = Artifact(sha, total, name, kind, time.time())
            atomic_write_json(self._meta(sha), asdict(art))
            return art
        except OSError as e:
            if is_disk_full(e):
                raise disk_full_error(self.root, e) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)

    def unpack(self, sha256: str) -> Path:
        """Unpack an archive artifact into ``<root>/<sha>.d`` (once) and return the folder."""
        src = self.path(sha256)
        dest = self.root / f"{check_sha256(sha256)}.d"
        if dest.is_dir():
            return dest
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".unpack."))
        try:
            if zipfile.is_zipfile(src):
                _unzip(src, staging)
            elif tarfile.is_tarfile(src):
                _untar(src, staging)
            else:
                raise InvalidArgument(
                    "the artifact is not a .zip or .tar(.gz/.bz2/.xz) archive", field="archive"
                )
            os.replace(staging, dest)
            return dest
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _safe_member(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise InvalidArgument(f"archive member {shown(name)} escapes the archive", field="archive")
    return p


def _budget(sizes: list[int]) -> None:
    if len(sizes) > MAX_ARCHIVE_MEMBERS:
        raise InvalidArgument(
            f"archive has {len(sizes)} members, more than {MAX_ARCHIVE_MEMBERS}", field="archive"
        )
    if sum(sizes) > MAX_UNPACKED_BYTES:
        raise InvalidArgument(
            f"archive unpacks to more than {MAX_UNPACKED_BYTES} bytes", field="archive"
        )


def _unzip(src: Path, dest: Path) -> None:
    with zipfile.ZipFile(src) as z:
        infos = [i for i in z.infolist() if not i.is_dir()]
        _budget([i.file_size for i in infos])
        for info in infos:
            target = dest / _safe_member(info.filename)
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout)


def _untar(src: Path, dest: Path) -> None:
    with tarfile.open(src) as t:
        members = t.getmembers()
        files = [m for m in members if m.isfile()]
        if any(m.issym() or m.islnk() or m.isdev() for m in members):
            raise InvalidArgument("archive holds links or device files", field="archive")
        _budget([m.size for m in files])
        for m in files:
            _safe_member(m.name)
        t.extractall(dest, members=files, filter="data")


def describe(art: Artifact) -> dict[str, Any]:
    return {**asdict(art), "ref": art.ref}
