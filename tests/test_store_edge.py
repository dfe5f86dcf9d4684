"""EdgeStore on disk: persistence, the process lock, and refusing foreign or broken dirs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import ALPHA, DIM, INFO, entry, make_records

from neuronatlas.core.config import Settings, load_settings
from neuronatlas.core.errors import (
    EmbedderMismatch,
    InvalidArgument,
    NotAStore,
    StoreCorrupted,
    StoreLocked,
)
from neuronatlas.core.records import EmbedderInfo, ModelStatus
from neuronatlas.core.store import SearchFilter, open_store
from neuronatlas.core.store._common import SEARCH_HNSW_EF
from neuronatlas.core.store.edge import EdgeStore
from neuronatlas.core.store.remote import RemoteStore


def filled(path: Path) -> EdgeStore:
    store = EdgeStore(path)
    store.bind_embedder(INFO)
    store.upsert_neurons(make_records("alpha", ALPHA, seed=1))
    store.put_model(entry("alpha", layers=ALPHA))
    store.put_model(entry("beta", status=ModelStatus.REGISTERED))
    return store


def test_persists_across_close_and_reopen(tmp_path: Path):
    path = tmp_path / "store"
    store = filled(path)
    q = make_records("alpha", ALPHA, seed=1)[4].vector
    before = [(h.record.key, round(h.score, 5)) for h in store.search(q, limit=5)]
    store.optimize()
    store.close()
    meta = json.loads((path / "store.json").read_text())
    assert meta["embedder"] == INFO.to_dict() and meta["version"] == 1
    assert not (path / "store.json.tmp").exists()
    with EdgeStore(path) as again:
        assert again.embedder == INFO
        assert again.count() == 12
        assert [e.model_id for e in again.list_models()] == ["alpha", "beta"]
        assert [(h.record.key, round(h.score, 5)) for h in again.search(q, limit=5)] == before
        assert again.counts_by_layer() == {"alpha": {"conv1": 6, "layer1.0.conv2": 6}}


def test_unflushed_writes_survive_close(tmp_path: Path):
    """Writes without an explicit optimize() are durable once close() returns."""
    path = tmp_path / "store"
    filled(path).close()
    with EdgeStore(path) as again:
        assert again.get_neuron("alpha", "conv1", 3).unit == 3


_HOLDER = textwrap.dedent(
    """
    import sys
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.core.errors import StoreLocked
    try:
        store = EdgeStore(sys.argv[1])
    except StoreLocked:
        print("locked", flush=True)
        sys.exit(3)
    print("open", flush=True)
    sys.stdin.readline()
    store.close()
    """
)


def test_second_process_is_locked_out(tmp_path: Path):
    path = tmp_path / "store"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLocked):
            EdgeStore(path)
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    with EdgeStore(path) as store:  # released by the other process's close()
        # and now we hold it: another process is refused
        other = subprocess.run(
            [sys.executable, "-c", _HOLDER, str(path)],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.returncode == 3 and other.stdout.strip() == "locked"
        assert store.count() == 0


def test_same_process_second_open_is_locked(tmp_path: Path):
    with EdgeStore(tmp_path / "s"), pytest.raises(StoreLocked):
        EdgeStore(tmp_path / "s")
    EdgeStore(tmp_path / "s").close()


def test_not_a_store(tmp_path: Path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(NotAStore):
        EdgeStore(tmp_path / "photos")
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == ["cat.jpg"]  # untouched
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotAStore):
        EdgeStore(tmp_path / "afile")


def test_empty_or_missing_dir_becomes_a_store(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    for p in (tmp_path / "empty", tmp_path / "new" / "nested"):
        with EdgeStore(p) as s:
            assert s.embedder is None and s.list_models() == []
        assert (p / "store.json").exists()


def test_store_without_marker_is_refused_never_wiped(tmp_path: Path):
    """Deleting store.json by hand must not let the next open recreate (wipe) the store."""
    path = tmp_path / "store"
    filled(path).close()
    (path / "store.json").unlink()
    before = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.name != ".lock")
    for _ in range(2):  # refused every time, and the refusal released its lock
        with pytest.raises(StoreCorrupted, match=r"no store\.json.*neurons/ shard"):
            EdgeStore(path)
    after = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.name != ".lock")
    assert after == before and not (path / "store.json").exists()


def test_catalogue_without_marker_is_refused(tmp_path: Path):
    """A store with catalogue entries but no neurons yet is data too."""
    path = tmp_path / "store"
    with EdgeStore(path) as s:
        s.put_model(entry("beta", status=ModelStatus.REGISTERED))
    (path / "store.json").unlink()
    with pytest.raises(StoreCorrupted, match="holds 1 entries"):
        EdgeStore(path)
    assert (path / "models").is_dir()


def test_restored_marker_opens_the_data_again(tmp_path: Path):
    path = tmp_path / "store"
    filled(path).close()
    saved = (path / "store.json").read_text()
    (path / "store.json").unlink()
    with pytest.raises(StoreCorrupted):
        EdgeStore(path)
    (path / "store.json").write_text(saved)
    with EdgeStore(path) as again:
        assert again.count() == 12


def test_interrupted_creation_is_redone(tmp_path: Path):
    path = tmp_path / "store"
    EdgeStore(path).close()
    (path / "store.json").unlink()  # as if the process died before writing the marker
    with EdgeStore(path) as s:
        assert s.embedder is None
        s.put_model(entry("alpha"))
        assert s.get_model("alpha").model_id == "alpha"


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps({"format": "something-else", "version": 1}),
        json.dumps({"format": "neuronatlas-edge-store", "version": 99}),
        json.dumps({"format": "neuronatlas-edge-store", "version": 1, "embedder": {"name": "x"}}),
    ],
    ids=["garbage", "format", "version", "embedder"],
)
def test_corrupted_marker(tmp_path: Path, content: str):
    path = tmp_path / "store"
    filled(path).close()
    (path / "store.json").write_text(content)
    with pytest.raises(StoreCorrupted):
        EdgeStore(path)
    with pytest.raises(StoreCorrupted):  # the failed open released its lock
        EdgeStore(path)


def test_missing_or_broken_shard(tmp_path: Path):
    import shutil

    path = tmp_path / "store"
    filled(path).close()
    shutil.rmtree(path / "neurons")
    with pytest.raises(StoreCorrupted, match="neurons"):
        EdgeStore(path)
    path2 = tmp_path / "store2"
    filled(path2).close()
    for f in (path2 / "models").rglob("*.json"):
        f.write_text("garbage")
    with pytest.raises(StoreCorrupted, match="models"):
        EdgeStore(path2)


def test_embedder_mismatch_after_reopen(tmp_path: Path):
    path = tmp_path / "store"
    filled(path).close()
    with EdgeStore(path) as s:
        with pytest.raises(EmbedderMismatch):
            s.bind_embedder(EmbedderInfo("open_clip:ViT-B-32", "openai", 512))
        with pytest.raises(EmbedderMismatch):
            s.bind_embedder(EmbedderInfo(INFO.name, "random:1", DIM))
        s.bind_embedder(INFO)
        recs = make_records("alpha", {"x": 2}, seed=5)
        for r in recs:
            r.vector = np.ones(DIM * 2, np.float32)
        with pytest.raises(InvalidArgument):
            s.upsert_neurons(recs)
        assert s.count() == 12


def test_open_store_from_settings(home: Path, monkeypatch: pytest.MonkeyPatch):
    with open_store(load_settings()) as s:
        assert isinstance(s, EdgeStore) and s.path == home / "store"
    custom = home / "elsewhere"
    with open_store(load_settings(store_path=custom)) as s:
        assert isinstance(s, EdgeStore) and (custom / "store.json").exists()
    monkeypatch.setenv("NEURONATLAS_BACKEND", "remote")
    monkeypatch.setenv("NEURONATLAS_URL", ":memory:")
    with open_store(load_settings()) as s:
        assert isinstance(s, RemoteStore) and s.embedder is None


def test_store_of_an_older_version_gets_the_label_scope_indexes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A neuron shard created before ``label_set`` / ``top_label`` were indexed gets them on
    open: prefix label lookups facet on them, which needs an index."""
    import neuronatlas.core.store.edge as edge_mod
    from neuronatlas.core.store import LabelScope

    keyword_fields = edge_mod.KEYWORD_FIELDS
    monkeypatch.setattr(edge_mod, "KEYWORD_FIELDS", ("kind", "model_id", "slot", "layer"))
    recs = make_records("alpha", ALPHA, seed=1)
    with EdgeStore(tmp_path / "st") as s:
        s.bind_embedder(INFO)
        s.upsert_neurons(recs)
        s.put_model(entry("alpha", layers=ALPHA))
        assert "label_set" not in s._neurons.info().payload_schema
    monkeypatch.setattr(edge_mod, "KEYWORD_FIELDS", keyword_fields)
    with EdgeStore(tmp_path / "st") as s:
        assert set(keyword_fields) <= set(s._neurons.info().payload_schema)
        for scope in LabelScope:
            hits = s.find_by_label("ca", prefix=True, limit=50, scope=scope)
            assert hits and all(h.record.key in {r.key for r in recs} for h in hits)


@pytest.mark.parametrize(
    ("quantization", "datatype", "memory"),
    [
        ("none", "float32", "cached"),
        ("int8", "float16", "cached"),
        ("turbo4", "float32", "cached"),
        ("turbo4", "float32", "cold"),
        ("turbo4", "float16", "cold"),
    ],
)
def test_vector_layouts_answer_alike(tmp_path: Path, quantization: str, datatype: str, memory):
    """Issue 13: int8 / turbo4 quantization (rescored), float16 storage and vectors read on
    first use ("cold") give the float32 answer on a small store, before and after the HNSW
    build and after reopening; a search reading only HIT_FIELDS returns the same hits with the
    fields a search answer shows."""
    from neuronatlas.core.store.base import HIT_FIELDS

    store = EdgeStore(tmp_path / "store")
    store.indexing_threshold_kb = 1
    store.quantization, store.vector_datatype = quantization, datatype
    store.vector_memory = memory
    store.bind_embedder(INFO)
    recs = make_records("alpha", ALPHA, seed=1)
    store.upsert_neurons(recs)
    store.put_model(entry("alpha", layers=ALPHA))
    vecs = np.stack([r.vector / np.linalg.norm(r.vector) for r in recs])
    q = recs[4].vector
    want = [recs[i].key for i in np.argsort(-(vecs @ (q / np.linalg.norm(q))))[:5]]
    for _ in range(2):
        full = store.search(q, limit=5)
        slim = store.search(q, limit=5, fields=HIT_FIELDS)
        assert [h.record.key for h in full] == want == [h.record.key for h in slim]
        for a, b in zip(full, slim, strict=True):
            assert abs(a.score - b.score) < 1e-6
            assert (a.record.layer_index, a.record.depth, a.record.labels, a.record.clarity) == (
                b.record.layer_index,
                b.record.depth,
                b.record.labels,
                b.record.clarity,
            )
        assert full[0].record.top_samples and not slim[0].record.top_samples
        store.optimize()
    store.close()
    saved = json.loads((tmp_path / "store" / "neurons" / "edge_config.json").read_text())
    assert saved["vectors"][""]["memory"] == memory  # the layout is the shard's, kept on disk
    assert saved["vectors"][""]["datatype"] == datatype
    with EdgeStore(tmp_path / "store") as reopened:
        assert [h.record.key for h in reopened.search(q, limit=5)] == want
        reopened.upsert_neurons(make_records("beta", ALPHA, seed=2))  # a segment built after
        reopened.optimize()  # reopening keeps the layout too
        alpha = SearchFilter(model_ids=("alpha",))
        assert [h.record.key for h in reopened.search(q, limit=5, flt=alpha)] == want
    saved = json.loads((tmp_path / "store" / "neurons" / "edge_config.json").read_text())
    assert saved["vectors"][""]["memory"] == memory


def test_edge_layout_settings(tmp_path: Path):
    with pytest.raises(InvalidArgument):
        load_settings(edge_quantization="pq")
    with pytest.raises(InvalidArgument):
        load_settings(edge_vector_datatype="int4")
    with pytest.raises(InvalidArgument, match="too few hits"):  # measured at 1M: store.md
        load_settings(edge_vector_datatype="float16")
    with pytest.raises(InvalidArgument, match="edge_vector_memory"):
        load_settings(edge_vector_memory="pinned")
    s = load_settings(home=tmp_path, edge_quantization="none", edge_vector_memory="cold")
    with open_store(s) as store:
        assert isinstance(store, EdgeStore)
        assert (store.quantization, store.vector_datatype, store.vector_memory) == (
            "none",
            "float32",
            "cold",
        )


def _pool_sizes(path: Path) -> dict[str, object]:
    return {
        shard: json.loads((path / shard / "edge_config.json").read_text()).get("max_search_threads")
        for shard in ("models", "neurons")
    }


@pytest.mark.parametrize("datatype", ["float32", "float16"])
def test_search_threads_applied_at_every_open(tmp_path: Path, datatype: str):
    """Issue 13: the search-pool size is a setting applied each time a store opens (a store
    created with one size and reopened with another takes the new one), whatever vector
    layout the shard has; the data and the answers do not change."""
    path = tmp_path / "store"
    store = EdgeStore(path, search_threads=3)
    store.vector_datatype = datatype
    store.bind_embedder(INFO)
    recs = make_records("alpha", ALPHA, seed=1)
    store.upsert_neurons(recs)
    store.put_model(entry("alpha", layers=ALPHA))
    q = recs[4].vector
    before = [h.record.key for h in store.search(q, limit=5)]
    store.close()
    assert _pool_sizes(path) == {"models": 3, "neurons": 3}
    for threads, want in ((1, 1), (0, os.cpu_count() or 1)):
        with open_store(
            load_settings(home=tmp_path, store_path=path, edge_search_threads=threads)
        ) as s:
            assert isinstance(s, EdgeStore) and s.search_threads == threads
            assert [h.record.key for h in s.search(q, limit=5)] == before
            assert s.vector_datatype == "float32"  # a setting for new stores only...
        assert _pool_sizes(path) == {"models": want, "neurons": want}
        cfg = json.loads((path / "neurons" / "edge_config.json").read_text())
        assert cfg["vectors"][""].get("datatype", "float32") == datatype  # ...the shard keeps its


def test_search_ef_setting_reaches_every_search(tmp_path: Path, monkeypatch):
    """``search_ef`` (setting or environment) is the beam of each approximate search the store
    asks the engine for, whichever backend, and of the per-model searches too."""
    monkeypatch.setenv("NEURONATLAS_SEARCH_EF", "40")
    settings = load_settings(home=tmp_path, store_path=tmp_path / "s")
    assert settings.search_ef == 40
    remote = open_store(load_settings(home=tmp_path, backend="remote", url=":memory:"))
    with remote:
        assert remote.search_ef == 40
    with open_store(settings) as store:
        store.bind_embedder(INFO)
        recs = make_records("alpha", ALPHA, seed=1)
        store.upsert_neurons(recs)
        store.put_model(entry("alpha", layers=ALPHA))
        seen: list = []
        n_query = store._n_query
        monkeypatch.setattr(
            store, "_n_query", lambda specs, **kw: seen.extend(specs) or n_query(specs, **kw)
        )
        assert store.search(recs[4].vector, limit=5)[0].record.key == recs[4].key
        assert store.search_per_model(recs[4].vector, per_model=1)
        assert len(seen) >= 2 and {spec.hnsw_ef for spec in seen} == {40}
    assert Settings().search_ef == SEARCH_HNSW_EF  # the setting's default is the store's


def test_search_ef_refused_when_out_of_range():
    for bad in (0, -5, 4097):
        with pytest.raises(InvalidArgument, match="search_ef"):
            load_settings(search_ef=bad)
    with pytest.raises(InvalidArgument, match="search_ef"):
        load_settings(search_ef="wide")


def test_search_threads_refused_when_out_of_range(tmp_path: Path):
    for bad in (-1, 1025):
        with pytest.raises(InvalidArgument, match="edge_search_threads"):
            load_settings(edge_search_threads=bad)
        with pytest.raises(InvalidArgument, match="search_threads"):
            EdgeStore(tmp_path / "s", search_threads=bad)
    assert not (tmp_path / "s").exists()  # refused before anything was created


def test_a_point_read_from_the_engine_reads_its_id_only_when_asked():
    """Search hits never need their point ids; reading one from Qdrant Edge builds a UUID."""
    import uuid

    from neuronatlas.core.store._common import Point

    class EnginePoint:
        reads = 0

        @property
        def id(self) -> uuid.UUID:
            EnginePoint.reads += 1
            return uuid.UUID(int=7)

    p = Point.read(EnginePoint(), {"unit": 1}, None, 0.5)
    assert EnginePoint.reads == 0 and p.payload == {"unit": 1} and p.score == 0.5
    assert p.id == p.id == "00000000-0000-0000-0000-000000000007"
    assert EnginePoint.reads == 1  # read once, then kept as the string
    assert "00000000-0000-0000-0000-000000000007" in repr(p)
    assert Point("abc", {}).id == "abc"
