"""Content-addressed uploads: verified digests, size limits, nothing kept on failure, safe
archive unpacking."""

from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from neuronatlas.core.artifacts import ArtifactStore, parse_ref
from neuronatlas.core.errors import InvalidArgument, NotFound


def _chunks(data: bytes, n: int = 7) -> list[bytes]:
    return [data[i : i + n] for i in range(0, len(data), n)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_put_verifies_and_deduplicates(tmp_path: Path):
    store = ArtifactStore(tmp_path / "a")
    data = b"weights" * 1000
    art = store.put(_chunks(data), sha256=_sha(data), name="w.th", kind="weights", size=len(data))
    assert art.size == len(data) and art.ref == f"artifact:{_sha(data)}"
    assert store.path(art.sha256).read_bytes() == data
    assert store.resolve(art.ref) == str(store.path(art.sha256))
    assert store.resolve("/some/local/file.th") == "/some/local/file.th"
    again = store.put(_chunks(data, 100), sha256=_sha(data).upper(), kind="weights")
    assert again == art and [a.sha256 for a in store.list()] == [art.sha256]


@pytest.mark.parametrize(
    ("case", "kwargs", "match"),
    [
        ("digest", {"sha256": "0" * 64}, "hash to"),
        ("truncated", {"size": 10_000}, "truncated"),
        ("oversized", {"size": None}, "larger than the limit"),
        ("bad digest", {"sha256": "zz"}, "not a sha256"),
        ("bad kind", {"kind": "exe"}, "kind must be"),
    ],
)
def test_bad_uploads_keep_nothing(tmp_path: Path, case: str, kwargs: dict, match: str):
    data = b"x" * 5000
    store = ArtifactStore(tmp_path / "a", max_bytes=4096 if case == "oversized" else 1 << 20)
    args = {"sha256": _sha(data), "kind": "weights", **kwargs}
    with pytest.raises(InvalidArgument, match=match):
        store.put(_chunks(data, 1000), **args)
    assert _leftovers(store.root) == []
    with pytest.raises(NotFound):
        store.get(_sha(data))


def test_refs():
    assert parse_ref("artifact:" + "a" * 64) == "a" * 64
    assert parse_ref("/path/file") is None
    with pytest.raises(InvalidArgument):
        parse_ref("artifact:abc")


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


@pytest.mark.parametrize("make", [_tar, _zip], ids=["tar.gz", "zip"])
def test_unpack_archives(tmp_path: Path, make):
    store = ArtifactStore(tmp_path / "a")
    blob = make({"cat/1.jpg": b"c1", "dog/2.jpg": b"d2"})
    art = store.put([blob], sha256=_sha(blob), kind="probe_archive")
    folder = store.unpack(art.sha256)
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.jpg")) == [
        "cat/1.jpg",
        "dog/2.jpg",
    ]
    assert store.unpack(art.sha256) == folder  # once


@pytest.mark.parametrize("make", [_tar, _zip], ids=["tar.gz", "zip"])
def test_unpack_refuses_escaping_members(tmp_path: Path, make):
    store = ArtifactStore(tmp_path / "a")
    blob = make({"../evil.txt": b"x"})
    art = store.put([blob], sha256=_sha(blob), kind="probe_archive")
    with pytest.raises(InvalidArgument, match="escapes"):
        store.unpack(art.sha256)
    assert not (tmp_path / "evil.txt").exists()
    assert not any(p.name.startswith(".unpack") for p in store.root.iterdir())


def test_unpack_refuses_non_archives(tmp_path: Path):
    store = ArtifactStore(tmp_path / "a")
    art = store.put([b"plain"], sha256=_sha(b"plain"))
    with pytest.raises(InvalidArgument, match=r"not a \.zip"):
        store.unpack(art.sha256)
