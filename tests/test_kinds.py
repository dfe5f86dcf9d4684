"""Record kinds through the store (both backends), the queries, gRPC and the CLI: the kind
filter of searches and label lookups (neurons only by default), component lookups,
ExplainClass and importance-weighted audits, on constructed records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import (
    ALPHA,
    BETA,
    DIM,
    INFO,
    READ_TOKEN,
    FakeEmbedder,
    entry,
    make_records,
    run_report_cli,
    unit,
)
from qdrant_client import QdrantClient

from neuronatlas.core.errors import FailedPrecondition, InvalidArgument, NotFound
from neuronatlas.core.records import ClassImportance, EmbedderInfo, NeuronRecord
from neuronatlas.core.store import KnowledgeStore, LabelScope, SearchFilter
from neuronatlas.core.store.edge import EdgeStore
from neuronatlas.core.store.remote import RemoteStore

COMPONENTS = {"conv1": 3}  # alpha's nmf components


def components(model: str = "alpha", seed: int = 7, kind: str = "nmf") -> list[NeuronRecord]:
    recs = make_records(model, COMPONENTS, seed=seed, labels=lambda row, li, u: ["dog"])
    for r in recs:
        r.kind, r.extraction = kind, "fp123"
        r.component = {"method": kind, "rank": 3}
    return recs


@pytest.fixture(params=["edge", "remote"])
def store(request, tmp_path: Path):
    s: KnowledgeStore = (
        EdgeStore(tmp_path / "store")
        if request.param == "edge"
        else RemoteStore(QdrantClient(":memory:"), prefix="t")
    )
    s.bind_embedder(INFO)
    s.upsert_neurons(make_records("alpha", ALPHA, seed=1) + make_records("beta", BETA, seed=2))
    s.upsert_neurons(components())
    s.put_model(entry("alpha", layers=ALPHA))
    s.put_model(entry("beta", layers=BETA))
    s.optimize()
    yield s
    s.close()


def test_search_sees_neurons_unless_asked(store: KnowledgeStore):
    comp = components()
    q = comp[0].vector
    hits = store.search(q, limit=50, exact=True)
    assert len(hits) == 17 and {h.record.kind for h in hits} == {"neuron"}
    only = store.search(q, limit=50, flt=SearchFilter(kinds=("nmf",)), exact=True)
    assert only[0].record.key == "alpha/conv1/nmf:0"
    assert {h.record.kind for h in only} == {"nmf"} and len(only) == 3
    both = store.search(q, limit=50, flt=SearchFilter(kinds=("neuron", "nmf")), exact=True)
    assert len(both) == 20 and both[0].record.key == "alpha/conv1/nmf:0"
    assert both[0].score == pytest.approx(1.0, abs=1e-5)
    per = store.search_per_model(q, per_model=2, flt=SearchFilter(kinds=("nmf",)))
    assert [h.record.key for h in per][:1] == ["alpha/conv1/nmf:0"] and len(per) == 2


def test_label_lookup_and_get_by_kind(store: KnowledgeStore):
    neurons = store.find_by_label("dog", limit=100, scope=LabelScope.TOP5)
    assert neurons and {h.record.kind for h in neurons} == {"neuron"}
    comps = store.find_by_label("dog", limit=100, flt=SearchFilter(kinds=("nmf",)))
    assert [h.record.key for h in comps] == [f"alpha/conv1/nmf:{u}" for u in (2, 1, 0)]
    rec = store.get_neuron("alpha", "conv1", 1, kind="nmf", with_vector=True)
    assert rec.kind == "nmf" and rec.extraction == "fp123" and rec.component["rank"] == 3
    np.testing.assert_allclose(rec.vector, components()[1].vector, atol=1e-6)
    assert store.get_neuron("alpha", "conv1", 1).kind == "neuron"
    with pytest.raises(NotFound, match="cluster component alpha/conv1/cluster:1"):
        store.get_neuron("alpha", "conv1", 1, kind="cluster")
    with pytest.raises(NotFound):
        store.get_neuron("alpha", "conv1", 3, kind="nmf")
    kinds = {r.kind for r in store.scroll_neurons("alpha")}
    assert kinds == {"neuron", "nmf"}
    assert len(list(store.scroll_neurons("alpha", kinds=["nmf"]))) == 3
    with pytest.raises(InvalidArgument):
        store.search(np.ones(DIM), flt=SearchFilter(kinds=("pca",)))
    with pytest.raises(InvalidArgument):
        store.search(np.ones(DIM), flt=SearchFilter(kinds=()))


def test_verify_accepts_component_ids(store: KnowledgeStore):
    store.put_model(entry("alpha", layers=ALPHA))  # reseal with the components
    assert store.verify().ok


def test_kind_shortcut_sees_new_components(tmp_path: Path):
    """The embedded store leaves the kind condition out while it holds neurons only (it caches
    the stored kinds); the first component written must still stay out of a neurons-only
    search."""
    with EdgeStore(tmp_path / "s") as s:
        s.bind_embedder(INFO)
        s.upsert_neurons(make_records("alpha", ALPHA, seed=1))
        s.put_model(entry("alpha", layers=ALPHA))
        q = components()[0].vector
        assert {h.record.kind for h in s.search(q, limit=50)} == {"neuron"}  # caches the kinds
        s.upsert_neurons(components())
        assert {h.record.kind for h in s.search(q, limit=50)} == {"neuron"}
        assert {h.record.kind for h in s.find_by_label("dog", limit=50)} <= {"neuron"}
        assert len(s.search(q, limit=50, flt=SearchFilter(kinds=("nmf",)))) == 3
        both = s.search(q, limit=50, flt=SearchFilter(kinds=("neuron", "nmf")))
        assert len(both) == 15


# -- importance: explain and weighted audits ------------------------------------------------
AXES = {"ruler": 0, "asymmetry": 1}


class Axes(FakeEmbedder):
    """ "ruler" and "asymmetry" are axes 0 and 1, any other text (the null prompt) axis 15."""

    def __init__(self):
        super().__init__(EmbedderInfo("axes", "fixed", DIM), self.vec)

    @staticmethod
    def vec(text: str) -> np.ndarray:
        v = np.zeros(DIM, np.float32)
        v[next((i for c, i in AXES.items() if c in text), DIM - 1)] = 1.0
        return v


def _vec(axis: int) -> np.ndarray:
    v = np.zeros(DIM)
    v[axis], v[DIM - 2] = 0.8, 0.6
    return unit(v).astype(np.float32)


# neuron -> (concept axis, importance for "melanoma", for "nevus")
DERM = [(0, 3.0, 0.1), (0, 1.0, 0.2), (1, 0.5, 2.0), (1, -1.0, 1.0), (5, 0.0, 0.5), (6, 0.2, 0.1)]


def derm_store(store: KnowledgeStore) -> None:
    """Six neurons of one layer (two ruler-aligned, two asymmetry-aligned, two neither) and
    two nmf components, with class importance for melanoma and nevus."""
    store.bind_embedder(Axes().info)
    recs = make_records("derm", {"l": 6}, vectors=np.stack([_vec(a) for a, _, _ in DERM]))
    for r, (_, m, n) in zip(recs, DERM, strict=True):
        r.top_classes = sorted(
            [ClassImportance("melanoma", m), ClassImportance("nevus", n)],
            key=lambda c: -c.importance,
        )
    comps = make_records("derm", {"l": 2}, vectors=np.stack([_vec(0), _vec(1)]))
    for r, m in zip(comps, (0.2, 4.0), strict=True):
        r.kind, r.extraction = "nmf", "e1"
        r.top_classes = [ClassImportance("melanoma", m)]
    per_class = {
        "melanoma": [
            {"kind": "neuron", "layer": "l", "unit": 0, "importance": 3.0},
            {"kind": "neuron", "layer": "l", "unit": 1, "importance": 1.0},
            {"kind": "neuron", "layer": "l", "unit": 2, "importance": 0.5},
            {"kind": "nmf", "layer": "l", "unit": 1, "importance": 4.0},
            {"kind": "nmf", "layer": "l", "unit": 0, "importance": 0.2},
        ],
        "nevus": [{"kind": "neuron", "layer": "l", "unit": 2, "importance": 2.0}],
    }
    extra = {
        "importance": {
            "method": "grad x act",
            "classes": ["melanoma", "nevus"],
            "images": {"melanoma": 40, "nevus": 40},
            "per_kind": 8,
            "per_class": per_class,
        }
    }
    store.upsert_neurons(recs + comps)
    store.put_model(entry("derm", layers={"l": 6}, extra=extra))
    store.put_model(entry("plain", layers={"l": 6}))
    store.upsert_neurons(make_records("plain", {"l": 6}, vectors=np.stack([_vec(2)] * 6)))


@pytest.fixture()
def atlas(tmp_path: Path):
    from neuronatlas.core.queries import Atlas

    store = EdgeStore(tmp_path / "store")
    derm_store(store)
    a = Atlas(store, Axes(), home=tmp_path / "home")
    yield a
    a.close()


def test_explain_class(atlas) -> None:
    e = atlas.explain_class("derm", "melanoma")
    assert [(c.record.key, c.importance, c.rank) for c in e.components] == [
        ("derm/l/0", 3.0, 1),
        ("derm/l/1", 1.0, 2),
        ("derm/l/2", 0.5, 3),
        ("derm/l/nmf:1", 4.0, 1),
        ("derm/l/nmf:0", 0.2, 2),
    ]
    assert e.images == 40 and e.classes == ["melanoma", "nevus"] and e.generation == 0
    assert e.components[3].record.top_classes[0].class_name == "melanoma"
    only = atlas.explain_class("derm", "melanoma", kinds=["nmf"], top_n=1)
    assert [c.record.key for c in only.components] == ["derm/l/nmf:1"]
    with pytest.raises(NotFound, match="no class 'tumour'"):
        atlas.explain_class("derm", "tumour")
    with pytest.raises(FailedPrecondition, match="without class importance"):
        atlas.explain_class("plain", "melanoma")
    with pytest.raises(InvalidArgument):
        atlas.explain_class("derm", "melanoma", top_n=0)
    with pytest.raises(InvalidArgument):
        atlas.explain_class("derm", "")


def test_audit_weighted_by_class_importance(atlas) -> None:
    a = atlas.audit_model("derm", ["asymmetry"], ["ruler"], threshold=0.3)
    assert a.valid_share == pytest.approx(2 / 6) and a.spurious_share == pytest.approx(2 / 6)
    assert a.class_name == "" and a.class_spurious_share == 0.0
    w = atlas.audit_model("derm", ["asymmetry"], ["ruler"], threshold=0.3, class_name="melanoma")
    total = 3.0 + 1.0 + 0.5 + 0.2  # positive importance only
    assert w.class_spurious_share == pytest.approx(4.0 / total)
    assert w.class_valid_share == pytest.approx(0.5 / total)
    assert w.concepts[1].class_share == pytest.approx(4.0 / total)
    assert [(n.unit, n.importance) for n in w.spurious_neurons] == [(0, 3.0), (1, 1.0)]
    n = atlas.audit_model("derm", ["asymmetry"], ["ruler"], threshold=0.3, class_name="nevus")
    assert n.class_valid_share == pytest.approx(3.0 / 3.9)  # what nevus uses is mostly valid
    comps = atlas.audit_model(
        "derm", ["asymmetry"], ["ruler"], threshold=0.3, kind="nmf", class_name="melanoma"
    )
    assert comps.n_neurons == 2 and comps.kind == "nmf"
    assert comps.class_valid_share == pytest.approx(4.0 / 4.2)
    from neuronatlas.core.audit import audit_summary

    text = audit_summary(w)
    assert "weighted by importance for class 'melanoma'" in text and "derm/l/0" in text
    with pytest.raises(NotFound):
        atlas.audit_model("derm", ["asymmetry"], class_name="tumour")
    with pytest.raises(FailedPrecondition):
        atlas.audit_model("plain", ["asymmetry"], class_name="melanoma")


def test_compare_components(atlas) -> None:
    cmp = atlas.compare_models("derm", "derm", kind="nmf", activation=False)
    assert cmp.kind == "nmf" and len(cmp.a.layer_of) == 2
    assert {(p.a_unit, p.b_unit) for p in cmp.pairs} == {(0, 0), (1, 1)}


# -- over gRPC: the same answers ------------------------------------------------------------------
@pytest.fixture()
def remote(atlas, tmp_path: Path):
    from neuronatlas.core.queries import Atlas
    from neuronatlas.service.auth import TokenSet
    from neuronatlas.service.client import Client
    from neuronatlas.service.server import build_server

    served = Atlas(atlas.store, Axes(), home=tmp_path / "home")
    srv = build_server(
        served, "127.0.0.1:0", tokens=TokenSet({READ_TOKEN: "read"}), zoo=False
    ).start()
    with Client(srv.address, token=READ_TOKEN, timeout=20) as c:
        yield c
    srv.stop(grace=0.5)


def test_grpc_kinds_explain_audit(atlas, remote) -> None:
    from neuronatlas.core.queries import NeuronQuery

    q = NeuronQuery("derm", "l", 1, kind="nmf")
    for flt in (None, SearchFilter(kinds=("nmf",)), SearchFilter(kinds=("neuron", "nmf"))):
        direct = atlas.search_neurons(q, flt, top_k=20).items
        over = remote.search_neurons(q, flt, top_k=20).items
        assert [(h.record.key, h.record.kind) for h in over] == [
            (h.record.key, h.record.kind) for h in direct
        ]
        assert [h.score for h in over] == pytest.approx([h.score for h in direct], abs=1e-6)
    assert {h.record.kind for h in remote.search_neurons(q, top_k=20).items} == {"neuron"}
    rec = remote.get_neuron("derm", "l", 1, kind="nmf")
    assert rec.kind == "nmf" and rec.key == "derm/l/nmf:1"
    assert rec.top_classes == [ClassImportance("melanoma", 4.0)]
    d = remote.describe_neuron("derm", "l", 0, kind="nmf")
    assert d.kind == "nmf"
    labelled = remote.find_by_label("dog", flt=SearchFilter(kinds=("nmf",)), scope="top5")
    assert {h.record.kind for h in labelled.items} <= {"nmf"}
    e1, e2 = atlas.explain_class("derm", "melanoma"), remote.explain_class("derm", "melanoma")
    assert [(c.record.key, c.rank) for c in e2.components] == [
        (c.record.key, c.rank) for c in e1.components
    ]
    assert [c.importance for c in e2.components] == pytest.approx(
        [c.importance for c in e1.components]
    )  # float32 on the wire
    assert e2.components[3].record.component == e1.components[3].record.component
    a1 = atlas.audit_model("derm", ["asymmetry"], ["ruler"], threshold=0.3, class_name="melanoma")
    a2 = remote.audit_model("derm", ["asymmetry"], ["ruler"], threshold=0.3, class_name="melanoma")
    assert a2.class_name == "melanoma" and a2.class_spurious_share == pytest.approx(
        a1.class_spurious_share
    )
    assert [(n.unit, n.kind, n.importance) for n in a2.spurious_neurons] == [
        (n.unit, n.kind, pytest.approx(n.importance)) for n in a1.spurious_neurons
    ]
    c2 = remote.compare_models("derm", "derm", kind="nmf", activation=False)
    assert c2.kind == "nmf" and {(p.a_unit, p.b_unit) for p in c2.pairs} == {(0, 0), (1, 1)}
    with pytest.raises(NotFound):
        remote.explain_class("derm", "tumour")
    with pytest.raises(FailedPrecondition):
        remote.explain_class("plain", "melanoma")
    with pytest.raises(InvalidArgument):
        remote.get_neuron("derm", "l", 1, kind="pca")
    with pytest.raises(InvalidArgument):
        remote.search_neurons(q, SearchFilter(kinds=("pca",)))


# -- the CLI ---------------------------------------------------------------------------------------
def test_cli_explain_audit_search(tmp_path: Path, home, monkeypatch) -> None:
    import json

    store_path = tmp_path / "cli-store"
    with EdgeStore(store_path) as s:
        derm_store(s)
    monkeypatch.setattr(
        "neuronatlas.core.embedder.load_embedder", lambda spec, device="cpu": Axes()
    )
    png = tmp_path / "melanoma.png"
    r = run_report_cli(home, store_path, "explain", "derm", "melanoma", "--out", str(png))
    assert r.exit_code == 0, r.output
    assert "derm/l/nmf:1" in r.output and "importance" in r.output
    assert png.stat().st_size > 1000
    r = run_report_cli(home, store_path, "explain", "derm", "melanoma", "--kind", "nmf", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [c["ref"] for c in data["components"]] == ["derm/l/nmf:1", "derm/l/nmf:0"]
    out = tmp_path / "audit"
    r = run_report_cli(
        home, store_path, "audit", "derm", "--valid", "asymmetry", "--spurious", "ruler",
        "--threshold", "0.3", "--class", "melanoma", "--out", str(out),
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "weighted by importance for class 'melanoma'" in (out / "audit.txt").read_text()
    r = run_report_cli(
        home, store_path, "search", "--like", "derm/l/nmf:1", "--kind", "all", "--json"
    )
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    top = [h["neuron"] for h in hits if h["score"] > 0.999]  # neurons 2, 3 share its vector
    assert "derm/l/nmf:1" in top and {h["kind"] for h in hits} == {"nmf", "neuron"}
    r = run_report_cli(home, store_path, "search", "--like", "derm/l/nmf:1", "--json")
    assert {h["kind"] for h in json.loads(r.output)} == {"neuron"}  # default: neurons only
    r = run_report_cli(home, store_path, "neuron", "derm/l/nmf:1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["top_classes"] == [{"class": "melanoma", "importance": 4.0}]
