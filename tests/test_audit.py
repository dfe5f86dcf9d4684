"""Concept audits on constructed records, and the audit CLI with the tiny open_clip model."""

from __future__ import annotations

import time

import numpy as np
import pytest
from click.testing import CliRunner

from neuronatlas.core.audit import audit_model, audit_summary
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import EmbedderMismatch, InvalidArgument, NotFound
from neuronatlas.core.records import (
    EmbedderInfo,
    LayerInfo,
    ModelEntry,
    ModelStatus,
    NeuronRecord,
    TopSample,
)

VALID = ["asymmetry", "border irregularity", "colour variation", "diameter", "evolution"]
SPURIOUS = ["ruler", "band-aid", "skin marker", "hair"]
DIM = 24


class ConceptAxes(Embedder):
    """Test embedder: a text naming one of the concepts maps to that concept's axis, any
    other text (the null prompt) to a shared axis. Scores are then exact dot products."""

    def __init__(self):
        self.info = EmbedderInfo("test-axes", "fixed", DIM)
        self.preprocess = lambda img: img
        self.axes = {c: i for i, c in enumerate(VALID + SPURIOUS)}

    def axis(self, concept: str) -> np.ndarray:
        v = np.zeros(DIM, np.float32)
        v[self.axes[concept] if concept else DIM - 1] = 1.0
        return v

    def encode_text(self, texts):
        out = []
        for t in texts:
            hits = [c for c in sorted(self.axes, key=len, reverse=True) if c in t]
            out.append(self.axis(hits[0] if hits else ""))
        return np.stack(out)

    def encode_images(self, images, batch_size=64):
        raise NotImplementedError("not used by audits")


def _unit(v):
    return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture()
def store(tmp_path):
    from neuronatlas.core.store.edge import EdgeStore

    s = EdgeStore(tmp_path / "store")
    yield s
    s.close()


def _derm_model(store, emb: ConceptAxes, model_id="derm"):
    """Layer 0: 10 neurons, 4 ruler + 1 hair; layer 1: 10 neurons, 6 asymmetry + 2 diameter;
    the rest point at unrelated axes. Every neuron shares a common component, like image
    embeddings do."""
    store.bind_embedder(emb.info)
    plan = {
        0: ["ruler"] * 4 + ["hair"] + [None] * 5,
        1: ["asymmetry"] * 6 + ["diameter"] * 2 + [None] * 2,
    }
    common = np.zeros(DIM, np.float32)
    common[DIM - 2] = 1.0
    recs, k = [], 0
    for li, concepts in plan.items():
        for u, c in enumerate(concepts):
            other = np.zeros(DIM, np.float32)
            other[len(emb.axes) + (k % 5)] = 1.0  # axes no concept uses
            vec = _unit(0.6 * common + 0.8 * (emb.axis(c) if c else other))
            recs.append(
                NeuronRecord(
                    model_id,
                    f"layer{li}",
                    li,
                    float(li),
                    u,
                    vec,
                    top_samples=[TopSample(f"img/{k}_{j}.jpg", k, 1.0 - j) for j in range(8)],
                )
            )
            k += 1
    store.upsert_neurons(recs)
    store.put_model(
        ModelEntry(
            model_id,
            status=ModelStatus.INDEXED,
            indexed_at=time.time(),
            layers=[LayerInfo("layer0", 0, 0.0, 10), LayerInfo("layer1", 1, 1.0, 10)],
        )
    )


def test_audit_shares_on_constructed_records(store):
    emb = ConceptAxes()
    _derm_model(store, emb)
    a = audit_model(store, emb, "derm", VALID, SPURIOUS, threshold=0.5, top_neurons=3, top_images=2)
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


def test_audit_calibrated_threshold(store):
    emb = ConceptAxes()
    _derm_model(store, emb)
    a = audit_model(store, emb, "derm", VALID, SPURIOUS)  # thresholds from the noise floor
    by = {c.concept: c for c in a.concepts}
    assert by["ruler"].aligned == 4 and by["asymmetry"].aligned == 6
    assert all(c.share_baseline <= 0.05 for c in a.concepts)


def test_audit_errors(store):
    emb = ConceptAxes()
    _derm_model(store, emb)
    with pytest.raises(NotFound):
        audit_model(store, emb, "nope", VALID, SPURIOUS)
    with pytest.raises(InvalidArgument):
        audit_model(store, emb, "derm", ["ruler"], ["ruler"])
    with pytest.raises(InvalidArgument):
        audit_model(store, emb, "derm", [], [])
    with pytest.raises(InvalidArgument):
        audit_model(store, emb, "derm", ["  "], SPURIOUS)
    other = ConceptAxes()
    other.info = EmbedderInfo("test-axes", "other-weights", DIM)
    with pytest.raises(EmbedderMismatch):
        audit_model(store, other, "derm", VALID, SPURIOUS)


def test_cli_audit_writes_report(tmp_path, home):
    from neuronatlas.cli import cli
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.embedder.openclip import register_tiny_config
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.service.compare_cli import COMMANDS

    register_tiny_config()
    spec = "open_clip:na-tiny:random:0"
    emb = load_embedder(spec, device="cpu")
    rng = np.random.default_rng(0)
    with EdgeStore(tmp_path / "store") as st:
        st.bind_embedder(emb.info)
        recs = [
            NeuronRecord(
                "tiny",
                f"layer{li}",
                li,
                li / 2,
                u,
                _unit(rng.standard_normal(emb.dim)),
                top_samples=[TopSample(f"x/{li}_{u}.jpg", u, 1.0)],
            )
            for li in range(3)
            for u in range(8)
        ]
        st.upsert_neurons(recs)
        st.put_model(ModelEntry("tiny", status=ModelStatus.INDEXED, indexed_at=time.time()))
    for cmd in COMMANDS:
        cli.add_command(cmd)
    out = tmp_path / "audit"
    res = CliRunner().invoke(
        cli,
        [
            "--home",
            str(home),
            "--store",
            str(tmp_path / "store"),
            "--embedder",
            spec,
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
        ],
    )
    assert res.exit_code == 0, res.output
    assert (out / "audit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "audit.txt").read_text()
    for concept in VALID + SPURIOUS:
        assert concept in report
