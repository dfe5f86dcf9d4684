"""Probe sets: ordering, hashing, subsets, unreadable files, and the embedding cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import AlreadyExists, InvalidArgument, NotFound
from neuronatlas.core.records import EmbedderInfo
from neuronatlas.indexer.probes import (
    balanced_subset,
    embedding_cache_path,
    load_probe_set,
    open_probe_set,
    probe_embeddings,
    register_probe_set,
)


def _folder(root: Path, per_class: dict[str, int]) -> Path:
    for c, n in per_class.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (10 * i, len(c) * 20, 100)).save(root / c / f"{i:03d}.png")
    return root


class MeanColour(Embedder):
    """A real (if simple) embedder: mean RGB + 1, normalised. Counts image calls."""

    def __init__(self, weights: str = "v1"):
        self.info = EmbedderInfo("test:mean-colour", weights, 4)
        self.preprocess = lambda im: torch.from_numpy(
            np.asarray(im.convert("RGB"), np.float32) / 255
        ).permute(2, 0, 1)
        self.calls = 0

    def encode_images(self, images, batch_size: int = 64) -> np.ndarray:
        self.calls += 1
        x = images.mean(dim=(2, 3)).numpy()
        v = np.concatenate([x, np.ones((len(x), 1), np.float32)], 1)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def encode_text(self, texts) -> np.ndarray:
        raise NotImplementedError


def test_balanced_subset_is_round_robin_and_sorted():
    files = (
        [f"a/{i}.jpg" for i in range(5)]
        + [f"b/{i}.jpg" for i in range(2)]
        + [f"c/{i}.jpg" for i in range(5)]
    )
    sub = balanced_subset(files, 7)
    assert sub == sorted(sub)
    assert sum(f.startswith("a/") for f in sub) == 3 and sum(f.startswith("b/") for f in sub) == 2
    assert balanced_subset(files, 7) == sub
    assert balanced_subset(["x.jpg", "y.jpg", "z.jpg"], 2) == ["x.jpg", "y.jpg"]


def test_register_orders_hashes_and_counts_unreadable(tmp_path):
    folder = _folder(tmp_path / "imgs", {"dog": 3, "cat": 2})
    (folder / "cat" / "zz.jpg").write_bytes(b"\xff\xd8 broken")
    (folder / "notes.txt").write_text("not an image")
    home = tmp_path / "home"
    ps = register_probe_set(home, "pets", folder)
    assert ps.files == ["cat/000.png", "cat/001.png", "dog/000.png", "dog/001.png", "dog/002.png"]
    assert ps.skipped == ["cat/zz.jpg"]
    assert load_probe_set(home, "pets").sha256 == ps.sha256
    assert register_probe_set(home, "pets", folder).id == ps.id  # same content: no-op

    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "dog" / "001.png")  # change one file's bytes
    with pytest.raises(AlreadyExists, match="pets"):
        register_probe_set(home, "pets", folder)
    changed = register_probe_set(home, "pets", folder, replace=True)
    assert changed.sha256 != ps.sha256 and changed.files == ps.files

    sub = register_probe_set(home, "pets2", folder, limit=2)
    assert sub.files == ["cat/000.png", "dog/000.png"]
    with pytest.raises(NotFound, match="pets, pets2"):
        load_probe_set(home, "nothing")


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match="no readable images"):
        register_probe_set(tmp_path / "home", "e", tmp_path / "empty")
    with pytest.raises(NotFound):
        register_probe_set(tmp_path / "home", "m", tmp_path / "missing")
    with pytest.raises(InvalidArgument, match="name"):
        register_probe_set(tmp_path / "home", "bad/name", tmp_path / "empty")


def test_open_probe_set_rescans_only_on_change(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "imgs", {"a": 2})
    home = tmp_path / "home"
    first = open_probe_set(home, "p", folder)
    from neuronatlas.indexer import probes

    calls = []
    real = probes.scan_probe_folder
    monkeypatch.setattr(
        probes, "scan_probe_folder", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    assert open_probe_set(home, "p", folder).sha256 == first.sha256 and calls == []
    _folder(folder, {"b": 1})  # new content under the same name is detected and refused
    with pytest.raises(AlreadyExists):
        open_probe_set(home, "p", folder)
    assert calls == [1]


def test_embeddings_computed_once_per_probe_and_embedder(tmp_path):
    folder = _folder(tmp_path / "imgs", {"a": 3, "b": 4})
    home = tmp_path / "home"
    ps = register_probe_set(home, "p", folder)
    emb = MeanColour()
    first = probe_embeddings(home, ps, emb, batch_size=3, progress=False)
    assert first.shape == (7, 4) and emb.calls == 3
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)
    again = probe_embeddings(home, ps, emb, batch_size=3, progress=False)
    assert emb.calls == 3 and np.array_equal(first, again)
    manifest = json.loads(embedding_cache_path(home, ps, emb.info).with_suffix(".json").read_text())
    assert manifest["probe_sha256"] == ps.sha256 and manifest["count"] == 7
    other = MeanColour("v2")  # another embedder identity: its own cache entry
    probe_embeddings(home, ps, other, progress=False)
    assert other.calls == 1
    assert len(list((home / "cache" / "embeddings").glob("*.npy"))) == 2
    assert not list((home / "cache" / "embeddings").glob(".*tmp"))
