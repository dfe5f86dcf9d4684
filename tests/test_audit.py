"""Concept audits on constructed records, and the audit CLI with the tiny open_clip model."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import TINY_EMBEDDER, FakeEmbedder, add_model, run_report_cli, spread, unit

from neuronatlas.core.audit import audit_model, audit_summary
from neuronatlas.core.errors import EmbedderMismatch, InvalidArgument, NotFound
from neuronatlas.core.records import EmbedderInfo

VALID = ["asymmetry", "border irregularity", "colour variation", "diameter", "evolution"]
SPURIOUS = ["ruler", "band-aid", "skin marker", "hair"]
DIM = 24


class ConceptAxes(FakeEmbedder):
    """Test embedder: a text naming one of the concepts maps to that concept's axis, any
    other text (the null prompt) to a shared axis. Scores are then exact dot products."""

    def __init__(self):
        super().__init__(EmbedderInfo("test-axes", "fixed", DIM), self.concept_vector)
        self.axes = {c: i for i, c in enumerate(VALID + SPURIOUS)}

    def axis(self, concept: str) -> np.ndarray:
        v = np.zeros(DIM, np.float32)
        v[self.axes[concept] if concept else DIM - 1] = 1.0
        return v

    def concept_vector(self, text: str) -> np.ndarray:
        hits = [c for c in sorted(self.axes, key=len, reverse=True) if c in text]
        return self.axis(hits[0] if hits else "")


def _derm_model(store, emb: ConceptAxes, model_id="derm"):
    """Layer 0: 10 neurons, 4 ruler + 1 hair; layer 1: 10 neurons, 6 asymmetry + 2 diameter;
    the rest point at unrelated axes. Every neuron shares a common component, like image
    embeddings do."""
    store.bind_embedder(emb.info)
    concepts = ["ruler"] * 4 + ["hair"] + [None] * 5 + ["asymmetry"] * 6 + ["diameter"] * 2
    concepts += [None] * 2
    common = np.zeros(DIM, np.float32)
    common[DIM - 2] = 1.0
    vecs = []
    for k, c in enumerate(concepts):
        other = np.zeros(DIM, np.float32)
        other[len(emb.axes) + (k % 5)] = 1.0  # axes no concept uses
        vecs.append(unit(0.6 * common + 0.8 * (emb.axis(c) if c else other)))
    add_model(
        store,
        model_id,
        {"layer0": 10, "layer1": 10},
        vectors=np.stack(vecs),
        labels=None,
        depths=(0.0, 1.0),
        sample="img/{row}_{rank}.jpg",
        top_k=8,
        entry_fields={"indexed_at": time.time()},
    )


def test_audit_shares_on_constructed_records(edge_store):
    emb = ConceptAxes()
    _derm_model(edge_store, emb)
    a = audit_model(
        edge_store, emb, "derm", VALID, SPURIOUS, threshold=0.5, top_neurons=3, top_images=2
    )
    by = {c.concept: c for c in a.concepts}
    assert a.n_neurons == 20 and a.layers == ["layer0", "layer1"]
    assert by["ruler"].aligned == 4 and by["ruler"].share == pytest.approx(0.2)
    assert by["ruler"].layer_share.tolist() == pytest.approx([0.4, 0.0])
    assert by["asymmetry"].layer_share.tolist() == pytest.approx([0.0, 0.6])
    assert by["diameter"].aligned == 2 and by["hair"].aligned == 1 and by["band-aid"].aligned == 0
    assert a.valid_share == pytest.approx(8 / 20) and a.spurious_share == pytest.approx(5 / 20)
    assert a.layer_valid_share.tolist() == pytest.approx([0.0, 0.8])
    assert a.layer_spurious_share.tolist() == pytest.approx([0.5, 0.0])
    # the most spurious-aligned neurons are the ruler neurons, with their top probe images
    assert [n.concept for n in a.spurious_neurons] == ["ruler"] * 3
    assert all(n.layer == "layer0" and n.unit < 4 for n in a.spurious_neurons)
    assert a.spurious_neurons[0].top_samples == [
        f"img/{a.spurious_neurons[0].unit}_0.jpg",
        f"img/{a.spurious_neurons[0].unit}_1.jpg",
    ]
    assert a.spurious_share_baseline < a.spurious_share
    text = audit_summary(a)
    assert "noise floor" in text
    assert f"derm/layer0/{a.spurious_neurons[0].unit}  ruler" in text


def test_audit_calibrated_threshold(edge_store):
    emb = ConceptAxes()
    _derm_model(edge_store, emb)
    a = audit_model(edge_store, emb, "derm", VALID, SPURIOUS)  # thresholds from the noise floor
    by = {c.concept: c for c in a.concepts}
    assert by["ruler"].aligned == 4 and by["asymmetry"].aligned == 6
    assert all(c.share_baseline <= 0.05 for c in a.concepts)


def test_audit_errors(edge_store):
    emb = ConceptAxes()
    _derm_model(edge_store, emb)
    with pytest.raises(NotFound):
        audit_model(edge_store, emb, "nope", VALID, SPURIOUS)
    with pytest.raises(InvalidArgument):
        audit_model(edge_store, emb, "derm", ["ruler"], ["ruler"])
    with pytest.raises(InvalidArgument):
        audit_model(edge_store, emb, "derm", [], [])
    with pytest.raises(InvalidArgument):
        audit_model(edge_store, emb, "derm", ["  "], SPURIOUS)
    other = ConceptAxes()
    other.info = EmbedderInfo("test-axes", "other-weights", DIM)
    with pytest.raises(EmbedderMismatch):
        audit_model(edge_store, other, "derm", VALID, SPURIOUS)


def test_cli_audit_writes_report(tmp_path, home):
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.embedder.openclip import register_tiny_config
    from neuronatlas.core.store.edge import EdgeStore

    register_tiny_config()
    emb = load_embedder(TINY_EMBEDDER, device="cpu")
    with EdgeStore(tmp_path / "store") as st:
        st.bind_embedder(emb.info)
        add_model(
            st,
            "tiny",
            {f"layer{li}": 8 for li in range(3)},
            dim=emb.dim,
            labels=None,
            depths=spread(3),
            sample="x/{layer_index}_{unit}.jpg",
            entry_fields={"indexed_at": time.time()},
        )
    out = tmp_path / "audit"
    res = run_report_cli(
        home,
        tmp_path / "store",
        "--embedder",
        TINY_EMBEDDER,
        "audit",
        "tiny",
        "--valid",
        ",".join(VALID),
        "--spurious",
        "ruler,band-aid",
        "--spurious",
        "skin marker",
        "--spurious",
        "hair",
        "--out",
        str(out),
    )
    assert res.exit_code == 0, res.output
    assert (out / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "audit.txt").read_text()
    for concept in VALID + SPURIOUS:
        assert concept in report
