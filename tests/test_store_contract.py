"""The KnowledgeStore contract, run on both backends: Qdrant Edge in a temp dir, and
RemoteStore on qdrant-client's in-process ``:memory:`` double."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from helpers import ALPHA, BETA, DIM, INFO, LABELS, entry, make_records, unit_rows
from qdrant_client import QdrantClient

from neuronatlas.core.errors import (
    EmbedderMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotIndexed,
)
from neuronatlas.core.records import (
    EmbedderInfo,
    Label,
    ModelStatus,
    NeuronRecord,
    neuron_point_id,
)
from neuronatlas.core.store import KnowledgeStore, LabelScope, SearchFilter
from neuronatlas.core.store.edge import EdgeStore
from neuronatlas.core.store.remote import RemoteStore


@pytest.fixture(params=["edge", "remote"])
def backend(request) -> str:
    return request.param


def open_backend(kind: str, tmp_path: Path) -> KnowledgeStore:
    if kind == "edge":
        return EdgeStore(tmp_path / "store")
    return RemoteStore(QdrantClient(":memory:"), prefix="t")


@pytest.fixture()
def empty(backend: str, tmp_path: Path):
    store = open_backend(backend, tmp_path)
    yield store
    store.close()


@pytest.fixture()
def store(empty: KnowledgeStore) -> KnowledgeStore:
    """alpha (12 neurons) and beta (5) indexed; gamma registered, not indexed."""
    empty.bind_embedder(INFO)
    empty.upsert_neurons(make_records("alpha", ALPHA, seed=1) + make_records("beta", BETA, seed=2))
    empty.put_model(entry("alpha", layers=ALPHA))
    empty.put_model(entry("beta", layers=BETA))
    empty.put_model(entry("gamma", status=ModelStatus.REGISTERED))
    empty.optimize()
    return empty


def all_records() -> list[NeuronRecord]:
    return make_records("alpha", ALPHA, seed=1) + make_records("beta", BETA, seed=2)


def brute(query: np.ndarray, recs: list[NeuronRecord]) -> list[tuple[str, float]]:
    scores = [(r.key, float(np.dot(query, r.vector))) for r in recs]
    return sorted(scores, key=lambda t: -t[1])


# -- embedder identity -------------------------------------------------------------------------
def test_bind_embedder(empty: KnowledgeStore):
    assert empty.embedder is None
    empty.bind_embedder(INFO)
    assert empty.embedder == INFO
    empty.bind_embedder(EmbedderInfo(INFO.name, INFO.weights, INFO.dim))  # same identity: no-op
    with pytest.raises(EmbedderMismatch):
        empty.bind_embedder(EmbedderInfo(INFO.name, "random:1", DIM))
    with pytest.raises(EmbedderMismatch):
        empty.bind_embedder(EmbedderInfo(INFO.name, INFO.weights, DIM + 1))
    assert empty.embedder == INFO


def test_bind_embedder_rejects_bad_identity(empty: KnowledgeStore):
    with pytest.raises(InvalidArgument):
        empty.bind_embedder(EmbedderInfo("x", "y", 0))
    assert empty.embedder is None


def test_empty_store_reads(empty: KnowledgeStore):
    assert empty.count() == 0
    assert empty.counts_by_layer() == {}
    assert empty.list_models() == []
    with pytest.raises(NotIndexed):
        empty.search(np.ones(DIM))
    with pytest.raises(FailedPrecondition):  # embedder not bound yet
        empty.upsert_neurons(make_records("alpha", {"c": 1}, seed=0))


# -- writes: validation and ids ----------------------------------------------------------------
@pytest.mark.parametrize(
    "bad",
    [
        lambda v: v[:-1],  # wrong dimension
        lambda v: np.where(np.arange(DIM) == 3, np.nan, v),
        lambda v: np.where(np.arange(DIM) == 0, np.inf, v),
        lambda v: np.zeros_like(v),
    ],
    ids=["dim", "nan", "inf", "zero"],
)
def test_upsert_rejects_whole_batch(empty: KnowledgeStore, bad):
    empty.bind_embedder(INFO)
    recs = make_records("alpha", ALPHA, seed=1)
    recs[7].vector = bad(recs[7].vector).astype(np.float32)
    with pytest.raises(InvalidArgument):
        empty.upsert_neurons(recs)
    assert empty.count() == 0  # nothing of the batch was written


def test_upsert_rejects_empty_and_bad_fields(empty: KnowledgeStore):
    empty.bind_embedder(INFO)
    with pytest.raises(InvalidArgument):
        empty.upsert_neurons([])
    recs = make_records("alpha", ALPHA, seed=1)
    recs[-1].model_id = "bad/id"
    with pytest.raises(InvalidArgument):
        empty.upsert_neurons(recs)
    recs = make_records("alpha", ALPHA, seed=1)
    recs[0].clarity = math.nan
    with pytest.raises(InvalidArgument):
        empty.upsert_neurons(recs)
    assert empty.count() == 0


def test_ids_are_deterministic_and_upsert_idempotent(store: KnowledgeStore):
    recs = make_records("alpha", ALPHA, seed=1)
    assert recs[0].point_id == neuron_point_id("alpha", "conv1", 0, 0)
    assert recs[0].point_id != neuron_point_id("alpha", "conv1", 0, 1)
    assert store.count() == 17
    assert store.upsert_neurons(recs) == 12
    assert store.count() == 17 and store.count("alpha") == 12
    recs[0].clarity = 0.999
    store.upsert_neurons(recs[:1])
    assert store.get_neuron("alpha", "conv1", 0).clarity == pytest.approx(0.999)
    assert store.count() == 17


def test_get_neuron(store: KnowledgeStore):
    want = make_records("alpha", ALPHA, seed=1)[8]  # layer1.0.conv2 unit 2
    got = store.get_neuron("alpha", "layer1.0.conv2", 2)
    assert got.key == want.key and got.layer_index == 1 and got.generation == 0
    np.testing.assert_allclose(got.vector, want.vector, atol=1e-5)
    assert got.labels["vocab"][0].label == want.labels["vocab"][0].label
    assert got.top_samples[0].sample_id == "cls/2.jpg" and got.stats == {"mean": 0.5}
    assert store.get_neuron("alpha", "conv1", 1, with_vector=False).vector.size == 0
    with pytest.raises(NotFound):
        store.get_neuron("alpha", "conv1", 99)
    with pytest.raises(NotFound):
        store.get_neuron("nosuch", "conv1", 0)
    with pytest.raises(NotIndexed):
        store.get_neuron("gamma", "conv1", 0)


# -- search ------------------------------------------------------------------------------------
def test_search_matches_brute_force(store: KnowledgeStore):
    recs = all_records()
    q = recs[3].vector
    hits = store.search(q, limit=5)
    want = brute(q, recs)[:5]
    assert [h.record.key for h in hits] == [k for k, _ in want]
    assert hits[0].record.key == recs[3].key and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    for h, (_, s) in zip(hits, want, strict=False):
        assert h.score == pytest.approx(s, abs=1e-4)
    assert hits[0].record.vector.size == 0


def test_search_paging_vectors_and_exact(store: KnowledgeStore):
    q = all_records()[0].vector
    full = [h.record.key for h in store.search(q, limit=10)]
    page = [h.record.key for h in store.search(q, limit=3, offset=4)]
    assert page == full[4:7]
    exact = [h.record.key for h in store.search(q, limit=10, exact=True)]
    assert exact == full
    with_vec = store.search(q, limit=2, with_vectors=True)
    assert with_vec[0].record.vector.shape == (DIM,)
    np.testing.assert_allclose(with_vec[0].record.vector, q, atol=1e-5)
    assert len(store.search(q, limit=100)) == 17  # gamma has no neurons; nothing else leaks


def test_search_filters(store: KnowledgeStore):
    recs = all_records()
    q = recs[0].vector

    def keys(flt: SearchFilter) -> list[str]:
        return [h.record.key for h in store.search(q, limit=50, flt=flt)]

    assert {k.split("/")[0] for k in keys(SearchFilter(model_ids=("beta",)))} == {"beta"}
    assert len(keys(SearchFilter(model_ids=("beta", "alpha")))) == 17
    assert {k.split("/")[1] for k in keys(SearchFilter(layers=("layer1.0.conv2",)))} == {
        "layer1.0.conv2"
    }
    deep = keys(SearchFilter(depth_min=0.9))
    assert deep and all(r.depth >= 0.9 for r in recs if r.key in deep)
    assert len(deep) == sum(r.depth >= 0.9 for r in recs)
    shallow = keys(SearchFilter(depth_max=0.6))
    assert set(shallow) == {r.key for r in recs if r.depth <= 0.6}
    clear = keys(SearchFilter(min_clarity=0.7))
    assert set(clear) == {r.key for r in recs if r.clarity >= 0.7}
    cats = keys(SearchFilter(label="cat"))  # default scope: the adaptive label set
    assert cats and set(cats) == {r.key for r in recs if "cat" in r.label_set}
    top5 = keys(SearchFilter(label="cat", label_scope=LabelScope.TOP5))
    assert set(top5) == {r.key for r in recs if any(l.label == "cat" for l in r.labels["vocab"])}
    assert set(cats) < set(top5)
    top1 = keys(SearchFilter(label="cat", label_scope=LabelScope.TOP1))
    assert set(top1) == {r.key for r in recs if r.top_label and r.top_label.label == "cat"}
    combo = keys(SearchFilter(model_ids=("alpha",), layers=("conv1",), min_clarity=0.5))
    assert set(combo) == {
        r.key for r in recs if r.model_id == "alpha" and r.layer == "conv1" and r.clarity >= 0.5
    }
    assert keys(SearchFilter(label="no-such-label")) == []
    # filtered ranking is still brute-force exact on this small set
    want = [k for k, _ in brute(q, [r for r in recs if r.model_id == "beta"])]
    assert keys(SearchFilter(model_ids=("beta",))) == want


def test_short_filtered_answer_is_searched_exactly(
    store: KnowledgeStore, monkeypatch: pytest.MonkeyPatch
):
    """Issue 13: a filtered graph walk that comes back with fewer hits than asked although
    more points match (Qdrant Edge did, on a float16 shard of 1M neurons) is redone as an
    exact search of the filtered points; a filter that matches fewer points than the limit
    costs no second search."""
    recs = all_records()
    q = recs[0].vector
    beta = [k for k, _ in brute(q, [r for r in recs if r.model_id == "beta"])]
    alpha = [k for k, _ in brute(q, [r for r in recs if r.model_id == "alpha"])]
    real = type(store)._n_query
    calls: list[bool] = []

    def lossy(self, specs, with_payload=True):  # the engine drops all but one hit
        calls.append(specs[0].exact)
        answers = real(self, specs, with_payload)
        return answers if specs[0].exact else [a[:1] for a in answers]

    monkeypatch.setattr(type(store), "_n_query", lossy)
    hits = store.search(q, limit=4, flt=SearchFilter(model_ids=("alpha",)))
    assert [h.record.key for h in hits] == alpha[:4]
    assert calls == [False, True]
    calls.clear()
    hits = store.search(q, limit=4, offset=3, flt=SearchFilter(model_ids=("beta",)))
    assert [h.record.key for h in hits] == beta[3:5]  # beta has 5 neurons: 2 after offset 3
    assert calls == [False, True]

    def counted(self, specs, with_payload=True):  # the engine as it is
        calls.append(specs[0].exact)
        return real(self, specs, with_payload)

    monkeypatch.setattr(type(store), "_n_query", counted)
    calls.clear()
    hits = store.search(q, limit=10, flt=SearchFilter(model_ids=("beta",)))
    assert [h.record.key for h in hits] == beta  # 5 of 10: all there are
    assert calls == [False]


def test_search_errors(store: KnowledgeStore):
    q = np.ones(DIM)
    with pytest.raises(NotFound):
        store.search(q, flt=SearchFilter(model_ids=("nosuch",)))
    with pytest.raises(NotIndexed):
        store.search(q, flt=SearchFilter(model_ids=("gamma",)))
    with pytest.raises(InvalidArgument):
        store.search(np.ones(DIM + 1))
    with pytest.raises(InvalidArgument):
        store.search(np.full(DIM, np.nan))
    with pytest.raises(InvalidArgument):
        store.search(np.zeros(DIM))
    with pytest.raises(InvalidArgument):
        store.search(q, limit=0)
    with pytest.raises(InvalidArgument):
        store.search(q, offset=-1)
    with pytest.raises(InvalidArgument):
        store.search(q, flt=SearchFilter(depth_min=0.8, depth_max=0.2))
    with pytest.raises(InvalidArgument):
        store.search(q, flt=SearchFilter(model_ids=()))


def test_search_without_indexed_models(empty: KnowledgeStore):
    empty.bind_embedder(INFO)
    empty.upsert_neurons(make_records("alpha", ALPHA, seed=1))
    empty.put_model(entry("alpha", status=ModelStatus.INDEXING))
    with pytest.raises(NotIndexed):
        empty.search(np.ones(DIM))
    with pytest.raises(NotIndexed):
        empty.find_by_label("dog")
    assert empty.counts_by_layer() == {}
    empty.put_model(entry("alpha", status=ModelStatus.FAILED))
    with pytest.raises(NotIndexed):
        empty.search_per_model(np.ones(DIM))


# -- per-model grouping --------------------------------------------------------------------------
def test_search_per_model(store: KnowledgeStore):
    recs = all_records()
    q = recs[14].vector  # a beta neuron: beta must come first
    hits = store.search_per_model(q, per_model=2)
    assert [h.record.model_id for h in hits] == ["beta", "beta", "alpha", "alpha"]
    for m in ("alpha", "beta"):
        want = [k for k, _ in brute(q, [r for r in recs if r.model_id == m])[:2]]
        assert [h.record.key for h in hits if h.record.model_id == m] == want
    assert hits[0].score == pytest.approx(1.0, abs=1e-4)
    one = store.search_per_model(q, per_model=1, max_models=1)
    assert [h.record.key for h in one] == [recs[14].key]
    only = store.search_per_model(
        q, per_model=3, flt=SearchFilter(model_ids=("alpha",), layers=("conv1",))
    )
    assert len(only) == 3 and {(h.record.model_id, h.record.layer) for h in only} == {
        ("alpha", "conv1")
    }
    with pytest.raises(InvalidArgument):
        store.search_per_model(q, per_model=0)
    with pytest.raises(NotIndexed):
        store.search_per_model(q, flt=SearchFilter(model_ids=("gamma",)))


def test_search_per_model_drops_models_without_hits(store: KnowledgeStore):
    hits = store.search_per_model(
        np.ones(DIM), per_model=5, flt=SearchFilter(layers=("layer1.0.conv2",))
    )
    assert {h.record.model_id for h in hits} == {"alpha"} and len(hits) == 5


# -- label lookups -------------------------------------------------------------------------------
def label_scores(label_pred, scope: LabelScope = LabelScope.TOP5) -> list[tuple[str, float]]:
    out = []
    for r in all_records():
        if scope == LabelScope.SET and not any(label_pred(l) for l in r.label_set):
            continue
        s = [l.score for l in r.labels["vocab"] if label_pred(l.label)]
        if s:
            out.append((r.key, max(s)))
    return sorted(
        out, key=lambda t: (-t[1], t[0].split("/")[0], t[0].split("/")[1], int(t[0].split("/")[2]))
    )


@pytest.mark.parametrize("scope", [LabelScope.SET, LabelScope.TOP5])
def test_find_by_label_exact(store: KnowledgeStore, scope: LabelScope):
    want = label_scores(lambda l: l == "cat", scope)
    hits = store.find_by_label("cat", limit=50, scope=scope)
    assert [(h.record.key, round(h.score, 5)) for h in hits] == [(k, round(s, 5)) for k, s in want]
    page = store.find_by_label("cat", limit=2, offset=1, scope=scope)
    assert [h.record.key for h in page] == [k for k, _ in want[1:3]]
    assert store.find_by_label("do", scope=scope) == []  # exact: nobody carries "do"
    assert hits[0].record.top_samples and hits[0].record.labels


@pytest.mark.parametrize("scope", [LabelScope.SET, LabelScope.TOP5])
def test_find_by_label_prefix(store: KnowledgeStore, scope: LabelScope):
    want = label_scores(lambda l: l.startswith("dog"), scope)
    hits = store.find_by_label("dog", prefix=True, limit=50, scope=scope)
    assert [h.record.key for h in hits] == [k for k, _ in want]
    assert hits[0].score == pytest.approx(want[0][1])
    assert store.find_by_label("zebra", prefix=True, scope=scope) == []


def test_find_by_label_default_scope_is_the_label_set(store: KnowledgeStore):
    default = [h.record.key for h in store.find_by_label("cat", limit=50)]
    assert default == [h.record.key for h in store.find_by_label("cat", limit=50, scope="set")]
    assert len(default) < len(store.find_by_label("cat", limit=50, scope=LabelScope.TOP5))
    with pytest.raises(InvalidArgument):
        store.find_by_label("cat", scope="top3")


def _labelled(unit: int, labels: dict[str, list[tuple[str, float]]], label_set: list[str]):
    rec = make_records("lab", {"conv1": 1}, seed=unit, labels=None)[0]
    rec.unit = unit
    rec.labels = {v: [Label(n, s) for n, s in ls] for v, ls in labels.items()}
    rec.label_set = label_set
    return rec


def test_label_scopes(empty: KnowledgeStore):
    """top1 (best label over all vocabularies) < set (adaptive set) < top5 (any top label)."""
    recs = [
        # two near-equal best labels: both in the set, cat is top-1
        _labelled(0, {"v": [("cat", 0.30), ("dog", 0.29), ("car", 0.10)]}, ["cat", "dog"]),
        _labelled(1, {"v": [("dog", 0.40), ("cat", 0.20)]}, ["dog"]),  # cat only in the top 5
        _labelled(2, {"v": [("car", 0.30), ("tree", 0.10), ("cat", 0.05)]}, ["car"]),
        # a second vocabulary's best label wins top-1
        _labelled(3, {"v": [("car", 0.20)], "w": [("cat", 0.50)]}, ["cat"]),
        _labelled(4, {}, []),  # unlabelled
    ]
    empty.bind_embedder(INFO)
    empty.upsert_neurons(recs)
    empty.put_model(entry("lab", layers={"conv1": 5}))
    empty.optimize()

    def found(label: str, scope: LabelScope | None, prefix: bool = False) -> list[int]:
        hits = empty.find_by_label(label, prefix=prefix, limit=50, scope=scope or LabelScope.SET)
        return [h.record.unit for h in hits]

    def filtered(label: str, scope: LabelScope | None) -> set[int]:
        flt = SearchFilter(label=label, label_scope=scope)
        return {h.record.unit for h in empty.search(recs[0].vector, limit=50, flt=flt)}

    assert found("cat", LabelScope.TOP1) == [3, 0]  # ranked by the label's score
    assert found("cat", None) == [3, 0]
    assert found("cat", LabelScope.TOP5) == [3, 0, 1, 2]
    assert found("dog", LabelScope.TOP1) == [1]
    assert found("dog", LabelScope.SET) == [1, 0]
    assert found("ca", LabelScope.TOP1, prefix=True) == [3, 0, 2]  # car: unit 2's top label
    assert found("tree", LabelScope.SET) == [] and found("tree", LabelScope.TOP5) == [2]
    for label in ("cat", "dog", "car", "tree"):
        for scope in LabelScope:
            assert filtered(label, scope) == set(found(label, scope)), (label, scope)
        assert filtered(label, None) == filtered(label, LabelScope.SET)
    # the payload carries the fields each scope filters on
    payload = recs[3].to_payload()
    assert payload["top_label"] == "cat" and payload["label_set"] == ["cat"]
    assert payload["label_all"] == ["car", "cat"]
    assert recs[4].to_payload()["top_label"] == ""


def test_find_by_label_filters_and_errors(store: KnowledgeStore):
    hits = store.find_by_label("car", limit=50, flt=SearchFilter(model_ids=("beta",)))
    assert hits and {h.record.model_id for h in hits} == {"beta"}
    with pytest.raises(InvalidArgument):
        store.find_by_label("  ")
    with pytest.raises(NotIndexed):
        store.find_by_label("car", flt=SearchFilter(model_ids=("gamma",)))
    with pytest.raises(NotFound):
        store.find_by_label("car", flt=SearchFilter(model_ids=("nosuch",)))


# -- generations (atomic re-index) ----------------------------------------------------------------
def test_generation_visibility(store: KnowledgeStore):
    gen1 = make_records("alpha", ALPHA, seed=99, generation=1)
    store.upsert_neurons(gen1)
    assert (
        store.count("alpha") == 24
        and store.count("alpha", 1) == 12
        and store.count("alpha", 0) == 12
    )
    q = gen1[0].vector
    # gen 0 is still the live slot: gen 1 records never show up
    hits = store.search(q, limit=50)
    assert len(hits) == 17 and all(h.record.generation == 0 for h in hits)
    assert all(h.record.generation == 0 for h in store.search_per_model(q, per_model=20))
    assert all(h.record.generation == 0 for h in store.find_by_label("dog", prefix=True, limit=50))
    assert store.get_neuron("alpha", "conv1", 0).generation == 0
    assert store.counts_by_layer()["alpha"] == {"conv1": 6, "layer1.0.conv2": 6}
    # flip the catalogue entry: only gen 1 is visible
    store.put_model(entry("alpha", generation=1, layers=ALPHA))
    hits = store.search(q, limit=50)
    assert len(hits) == 17
    assert {h.record.generation for h in hits if h.record.model_id == "alpha"} == {1}
    assert hits[0].record.key == gen1[0].key and hits[0].score == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(
        store.get_neuron("alpha", "conv1", 0).vector, gen1[0].vector, atol=1e-5
    )
    assert [r.generation for r in store.scroll_neurons("alpha")] == [1] * 12
    store.delete_neurons("alpha", 0)
    assert store.count("alpha") == 12 and store.count("alpha", 0) == 0
    assert store.counts_by_layer()["alpha"] == {"conv1": 6, "layer1.0.conv2": 6}


def test_reindex_in_progress_hides_model(store: KnowledgeStore):
    store.put_model(entry("beta", status=ModelStatus.INDEXING, layers=BETA))
    keys = {h.record.model_id for h in store.search(np.ones(DIM), limit=50)}
    assert keys == {"alpha"}
    assert set(store.counts_by_layer()) == {"alpha"}


# -- scroll, counts, deletes -----------------------------------------------------------------------
def test_scroll_neurons(store: KnowledgeStore):
    got = list(store.scroll_neurons("alpha", batch_size=5))
    assert sorted(r.key for r in got) == sorted(r.key for r in make_records("alpha", ALPHA, seed=1))
    assert all(r.vector.shape == (DIM,) for r in got)
    assert len({r.key for r in got}) == 12
    no_vec = list(store.scroll_neurons("beta", with_vectors=False))
    assert len(no_vec) == 5 and all(r.vector.size == 0 for r in no_vec)
    assert list(store.scroll_neurons("alpha", generation=3)) == []
    with pytest.raises(NotFound):
        list(store.scroll_neurons("nosuch"))


def test_counts(store: KnowledgeStore):
    assert store.count() == 17 and store.count("beta") == 5 and store.count("gamma") == 0
    assert store.count(generation=0) == 17 and store.count(generation=1) == 0
    assert store.counts_by_layer() == {
        "alpha": {"conv1": 6, "layer1.0.conv2": 6},
        "beta": {"conv1": 5},
    }


def test_delete_neurons_and_model(store: KnowledgeStore):
    store.delete_neurons("beta")
    assert store.count("beta") == 0 and store.count() == 12
    assert store.counts_by_layer()["beta"] == {}
    assert store.search_per_model(np.ones(DIM), per_model=1)[0].record.model_id == "alpha"
    store.delete_model("alpha")
    assert store.count() == 0
    with pytest.raises(NotFound):
        store.get_model("alpha")
    with pytest.raises(NotFound):
        store.delete_model("alpha")
    with pytest.raises(NotFound):
        store.search(np.ones(DIM), flt=SearchFilter(model_ids=("alpha",)))
    assert [e.model_id for e in store.list_models()] == ["beta", "gamma"]


# -- crash safety and integrity (kill -9 tests: test_store_atomic.py) ---------------------------
def test_interrupted_delete_is_invisible_and_finished_on_recovery(store: KnowledgeStore):
    """A process killed after the delete's first write leaves a tombstone: the model is gone
    for every reader at once, and recovery (run on open) deletes its neurons and the entry."""
    from neuronatlas.core.records import model_point_id

    pid = model_point_id("alpha")
    store._m_put(pid, {**store._m_get(pid), "kind": "deleting"})  # step 1 only, then "killed"
    store._refresh_visibility()
    with pytest.raises(NotFound):
        store.get_model("alpha")
    assert [e.model_id for e in store.list_models()] == ["beta", "gamma"]
    # (no vector search here: the remote test double renormalises the stored vectors it
    # compares in place, 1-ulp changes that a later verify would report as changed content)
    found = {h.record.model_id for lab in LABELS for h in store.find_by_label(lab, limit=50)}
    assert found == {"beta"} and store.counts_by_layer().keys() == {"beta"}
    assert store.count("alpha") == 12  # not deleted yet, but nobody sees it
    report = store.verify()
    assert not report.ok and "delete of model 'alpha' did not finish" in report.problems[0]
    assert store._recover() == ["finished the interrupted delete of model 'alpha' (12 neurons)"]
    assert store.count("alpha") == 0 and store._m_get(pid) is None and store.verify().ok
    assert store._recover() == []
    # re-registering the id over a tombstone finishes the old delete first
    store._m_put(pid, {**entry("alpha").to_payload(), "kind": "deleting"})
    store.upsert_neurons(make_records("alpha", ALPHA, seed=1))
    store.put_model(entry("alpha", ModelStatus.REGISTERED))
    assert store.count("alpha") == 0 and store.get_model("alpha").status == ModelStatus.REGISTERED


def test_flip_retires_the_old_generation(store: KnowledgeStore):
    """The flip records the old live generation; deleting it (the indexer's next step) clears
    the mark, and recovery deletes it when the process died before."""
    from neuronatlas.core.records import model_point_id

    pid = model_point_id("alpha")
    store.upsert_neurons(make_records("alpha", ALPHA, seed=5, generation=1))
    store.put_model(entry("alpha", generation=1, layers=ALPHA))
    assert store._m_get(pid)["retire"] == 0 and store.count("alpha", 0) == 12
    seal = store._m_get(pid)["integrity"]
    assert (seal["generation"], seal["count"]) == (1, 12)
    assert store._recover() == [
        "deleted generation 0 of model 'alpha' (12 neurons), left by an interrupted re-index"
    ]
    assert store.count("alpha", 0) == 0 and "retire" not in store._m_get(pid)
    # the normal path: the indexer deletes the old generation itself
    store.upsert_neurons(make_records("alpha", ALPHA, seed=6, generation=0))
    store.put_model(entry("alpha", generation=0, layers=ALPHA))
    assert store._m_get(pid)["retire"] == 1
    store.delete_neurons("alpha", 1)
    assert "retire" not in store._m_get(pid) and store._recover() == []
    assert store._m_get(pid)["integrity"]["generation"] == 0 and store.verify().ok


def test_verify_and_open_check_catch_changes_behind_the_store(store: KnowledgeStore):
    from neuronatlas.core.store._common import Cond, Point

    report = store.verify()
    assert report.ok and report.points_scanned == 17
    by_model = {m.model_id: m for m in report.models}
    assert (by_model["alpha"].found_neurons, by_model["alpha"].expected_neurons) == (12, 12)
    assert by_model["gamma"].found_neurons is None and by_model["gamma"].ok
    assert store._check_on_open() == []
    # a vector rewritten without the store's write path: counts agree, the digest does not
    rec = make_records("alpha", ALPHA, seed=1)[0]
    store._n_upsert([Point(rec.point_id, rec.to_payload(), list(np.roll(rec.vector, 1)))])
    alpha = next(m for m in store.verify().models if m.model_id == "alpha")
    assert (
        not alpha.ok and alpha.found_neurons == 12 and alpha.found_digest != alpha.expected_digest
    )
    # points lost: the open-time count catches it and marks the model failed
    store._n_delete([Cond("slot", any=("beta#0",)), Cond("unit", any=(0, 1))])
    damaged = store._check_on_open()
    assert len(damaged) == 1 and "should hold 5 neurons but 3 are readable" in damaged[0]
    assert store.get_model("beta").status == ModelStatus.FAILED
    with pytest.raises(NotIndexed):
        store.search(np.ones(DIM), flt=SearchFilter(model_ids=("beta",)))
    beta = next(m for m in store.verify().models if m.model_id == "beta")
    assert not beta.ok and (beta.found_neurons, beta.expected_neurons) == (3, 5)
    # a new index run rebuilds it: the seal is recomputed at the flip
    store.put_model(entry("beta", ModelStatus.INDEXING))
    store.delete_neurons("beta")
    store.upsert_neurons(make_records("beta", BETA, seed=2))
    store.put_model(entry("beta", layers=BETA))
    assert next(m for m in store.verify().models if m.model_id == "beta").ok


def test_writing_into_a_live_generation_reseals_it(store: KnowledgeStore):
    store.upsert_neurons(make_records("alpha", {"conv1": 6, "extra": 3}, seed=8))
    assert store._check_on_open() == [] and store.verify().ok
    store.delete_neurons("alpha", 0)
    assert store._check_on_open() == [] and store.verify().ok


# -- catalogue ------------------------------------------------------------------------------------
def test_catalogue(empty: KnowledgeStore):
    e = entry("zeta", layers=ALPHA)
    e.tags, e.extra, e.notes = ["cifar"], {"k": 20, "timings": {"embed": 1.5}}, "hello"
    empty.put_model(e)
    empty.put_model(entry("alpha", status=ModelStatus.FAILED))
    got = empty.get_model("zeta")
    # Edge's JSON payloads may round the last bit of a float64 timestamp
    assert got.updated_at == pytest.approx(e.updated_at, abs=1e-3)
    assert dataclasses.replace(got, created_at=e.created_at, updated_at=e.updated_at) == e
    assert got.neuron_count == 12 and got.layers[1].name == "layer1.0.conv2"
    assert [m.model_id for m in empty.list_models()] == ["alpha", "zeta"]
    e.status, e.generation = ModelStatus.INDEXED, 1
    empty.put_model(e)
    assert empty.get_model("zeta").generation == 1 and len(empty.list_models()) == 2
    with pytest.raises(NotFound):
        empty.get_model("nosuch")
    with pytest.raises(InvalidArgument):
        empty.put_model(entry("bad/id"))
    with pytest.raises(InvalidArgument):
        empty.get_model("")


# -- job records (the queue of long-running operations) -------------------------------------------
def test_job_records(store: KnowledgeStore, backend: str, tmp_path: Path):
    """Jobs live in the catalogue shard as their own kind: never a model, untouched by model
    deletes and by verify, persisted with the store."""
    from neuronatlas.core.jobs import Job, JobQueue, JobState

    assert store.all_jobs() == [] and store.get_job("nosuch") is None
    record = Job("j1", "index", "alpha", {"nested": {"a": [1]}}, seq=1).to_dict()
    store.put_job("j1", record)
    assert store.get_job("j1") == record and store.all_jobs() == [record]
    store.put_job("j1", {**record, "state": "running"})
    assert store.get_job("j1")["state"] == "running" and len(store.all_jobs()) == 1
    queue = JobQueue(store)  # the store is a JobTable
    job = queue.submit("index", "beta", {"k": 5})
    assert {j["job_id"] for j in store.all_jobs()} == {"j1", job.job_id}
    assert [m.model_id for m in store.list_models()] == ["alpha", "beta", "gamma"]
    store.delete_model("beta")
    assert queue.get(job.job_id).state is JobState.QUEUED
    assert store.verify().ok
    if backend == "edge":  # persisted: a reopened store (e.g. after kill -9) has them
        store.close()
        from neuronatlas.core.store.edge import EdgeStore

        with EdgeStore(tmp_path / "store") as again:
            assert JobQueue(again).get(job.job_id).request == {"k": 5}
            assert again.get_job("j1")["request"] == {"nested": {"a": [1]}}


# -- maintenance ----------------------------------------------------------------------------------
def test_optimize_size_and_close(store: KnowledgeStore, backend: str):
    store.optimize()
    assert store.search(all_records()[5].vector, limit=1)[0].record.key == all_records()[5].key
    if backend == "edge":
        assert store.size_bytes() > 0
    else:
        assert store.size_bytes() == 0
    store.close()
    store.close()  # idempotent
    with pytest.raises(FailedPrecondition):
        store.count()


# -- both backends agree ---------------------------------------------------------------------------
def test_backends_agree(tmp_path: Path):
    rng = np.random.default_rng(7)
    stores = [open_backend("edge", tmp_path), open_backend("remote", tmp_path)]
    recs = all_records() + make_records("delta", {"fc": 8}, seed=3)
    try:
        for s in stores:
            s.bind_embedder(INFO)
            s.upsert_neurons(recs)
            for m, layers in (("alpha", ALPHA), ("beta", BETA), ("delta", {"fc": 8})):
                s.put_model(entry(m, layers=layers))
            s.optimize()
        for q in unit_rows(rng, 5):
            results = [
                (
                    [h.record.key for h in s.search(q, limit=7, flt=SearchFilter(min_clarity=0.2))],
                    [h.record.key for h in s.search_per_model(q, per_model=2, max_models=2)],
                    [h.record.key for h in s.find_by_label("ca", prefix=True, limit=20)],
                )
                for s in stores
            ]
            assert results[0] == results[1]
        assert stores[0].counts_by_layer() == stores[1].counts_by_layer()
    finally:
        for s in stores:
            s.close()


# -- remote connection failures ----------------------------------------------------------------
def test_remote_unreachable_names_the_url(home: Path):
    from neuronatlas.core.config import load_settings
    from neuronatlas.core.errors import StoreUnavailable

    url = "http://127.0.0.1:9"  # discard port: connection refused at once
    settings = load_settings(backend="remote", url=url, prefer_grpc=False)
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:9"):
        RemoteStore.from_settings(settings)
