"""End-to-end indexing of the real CIFAR-10 ResNets on a small class-balanced subset of the
CIFAR-10 test JPEGs, with the tiny random open_clip embedder and an Edge store.

Run as a script (``python test_indexer_integration.py HOME WEIGHTS``) it is the worker that the
resumption test kills with SIGKILL part-way through.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_same_model, model_snapshot, slow_source, write_vocab

from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import EmbedderMismatch, InvalidArgument, NotFound, WeightsUnavailable
from neuronatlas.core.records import ModelStatus

pytestmark = pytest.mark.integration

EMBEDDER = "open_clip:na-tiny:random:0"
N_PROBE = 200
K = 10
CHANNELS_R20 = 16 + 6 * 16 + 6 * 32 + 6 * 64 + 10


class CountingEmbedder(Embedder):
    """Delegates to a real embedder and counts image-encoding calls."""

    def __init__(self, inner: Embedder):
        self.inner, self.info, self.preprocess = inner, inner.info, inner.preprocess
        self.image_calls = 0

    def encode_images(self, images, batch_size: int = 64) -> np.ndarray:
        self.image_calls += 1
        return self.inner.encode_images(images, batch_size=batch_size)

    def encode_text(self, texts) -> np.ndarray:
        return self.inner.encode_text(texts)


def slow_resnet(weights: str, depth: int = 20) -> torch.nn.Module:
    """A real CIFAR ResNet that sleeps ``$SLOW_RESNET_DELAY`` s before each forward pass (so
    a test can kill it mid-run; the delay is not part of the source, which must not change)."""
    from neuronatlas.indexer.cifar_resnet import load_cifar_resnet

    model = load_cifar_resnet(depth, weights)
    delay = float(os.environ.get("SLOW_RESNET_DELAY", "0"))
    if delay:
        model.register_forward_pre_hook(lambda *_: time.sleep(delay))
    return model


def _cifar_run(cifar_dir: Path, home: Path, vocab: Path) -> dict[str, Any]:
    """``build_index`` arguments shared by this file's CIFAR runs: the probe set (the first
    ``N_PROBE`` test images), the home, the vocabulary and k."""
    return {
        "probe_dir": cifar_dir,
        "probe_name": "cifar-small",
        "home": home,
        "vocabularies": {"broden": vocab},
        "k": K,
        "probe_limit": N_PROBE,
    }


# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vocab(tmp_path_factory, concepts_dir: Path) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab") / "broden80.txt", concepts_dir)


@pytest.fixture(scope="module")
def embedder():
    from neuronatlas.core.embedder import load_embedder

    return CountingEmbedder(load_embedder(EMBEDDER, device="cpu"))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, embedder, cifar_dir, cifar_models, vocab):
    """resnet20 then resnet32 indexed into one store; yields (store, home, entries, calls)."""
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import build_index

    home = tmp_path_factory.mktemp("zoo")
    store = EdgeStore(home / "store")
    entries, calls = {}, {}
    for depth in (20, 32):
        before = embedder.image_calls
        entries[depth] = build_index(
            store,
            embedder,
            model_id=f"r{depth}",
            source={"kind": "cifar_resnet", "depth": depth, "weights": str(cifar_models[depth])},
            **_cifar_run(cifar_dir, home, vocab),
            batch_size=64,
            progress=False,
        )
        calls[depth] = embedder.image_calls - before
    yield store, home, entries, calls
    store.close()


# ------------------------------------------------------------------------------------------
def test_records_have_one_neuron_per_channel_and_sane_fields(zoo, cifar_dir):
    store, _, entries, _ = zoo
    entry = entries[20]
    assert [lay.neurons for lay in entry.layers][:3] == [16, 16, 16]
    assert entry.layers[-1].name == "linear" and entry.layers[-1].neurons == 10
    assert entry.neuron_count == CHANNELS_R20
    by_layer = store.counts_by_layer()["r20"]
    assert by_layer == {lay.name: lay.neurons for lay in entry.layers}
    records = list(store.scroll_neurons("r20"))
    assert len(records) == CHANNELS_R20
    for r in records:
        assert abs(float(np.linalg.norm(r.vector)) - 1.0) < 1e-4
        acts = [s.activation for s in r.top_samples]
        assert len(acts) == K and acts == sorted(acts, reverse=True)
        assert all((cifar_dir / s.sample_id).is_file() for s in r.top_samples)
        assert len({s.index for s in r.top_samples}) == K
        assert len(r.labels["broden"]) == 5
        assert -1.0 <= r.clarity <= 1.0 + 1e-6 and 0.0 <= r.polysemanticity <= 2.0
        assert -1.0 <= r.redundancy <= 1.0 + 1e-6
        assert r.stats["min"] <= r.stats["mean"] <= r.stats["max"] == pytest.approx(acts[0])
        assert 0.0 <= r.stats["frac_active"] <= 1.0
    depths = {lay.name: lay.depth for lay in entry.layers}
    assert depths["conv1"] == 0.0 and depths["linear"] == 1.0
    assert [lay.index for lay in entry.layers] == list(range(len(entry.layers)))


def test_top_samples_equal_brute_force_activations(zoo, cifar_models):
    """Top-k of the stored neurons == full activation matrix + sort, for two layers."""
    store, home, _, _ = zoo
    from neuronatlas.indexer.probes import load_probe_set
    from neuronatlas.indexer.sources import build_model

    probe = load_probe_set(home, "cifar-small")
    built = build_model({"kind": "cifar_resnet", "depth": 20, "weights": str(cifar_models[20])})
    feats = {}
    mods = dict(built.module.named_modules())
    for name in ("layer2.1.conv1", "linear"):
        mods[name].register_forward_hook(
            lambda m, i, o, name=name: feats.setdefault(name, []).append(o)
        )
    from PIL import Image

    tf = built.input.transform()
    x = torch.stack([tf(Image.open(probe.path(i)).convert("RGB")) for i in range(len(probe))])
    with torch.inference_mode():
        built.module(x)
    for name, outs in feats.items():
        a = outs[0]
        a = a.mean(dim=(2, 3)) if a.ndim == 4 else a
        order = torch.sort(a.t(), dim=1, descending=True, stable=True).indices[:, :K]
        for unit in (0, 3, 7):
            rec = store.get_neuron("r20", name, unit)
            assert [s.index for s in rec.top_samples] == order[unit].tolist()
            assert rec.top_samples[0].sample_id == probe.files[int(order[unit, 0])]


def test_catalogue_entry(zoo, cifar_models):
    store = zoo[0]
    entry = store.get_model("r32")
    assert entry.status == ModelStatus.INDEXED and entry.status_reason == ""
    assert entry.architecture == "cifar_resnet32"
    assert entry.weights_sha256 == hashlib.sha256(cifar_models[32].read_bytes()).hexdigest()
    assert entry.weights_sha256.startswith(cifar_models[32].name.split("-")[2][:8])
    assert entry.neuron_count == 16 + 10 * 16 + 10 * 32 + 10 * 64 + 10
    assert entry.embedder.startswith("open_clip:na-tiny")
    assert entry.probe_set.startswith("cifar-small@")
    assert entry.index_wall_s > 0 and entry.indexed_at > 0
    assert entry.training_data.startswith("CIFAR-10")
    assert entry.extra["index"]["probe_images"] == N_PROBE


def test_second_model_reuses_cached_probe_embeddings(zoo):
    _, home, _, calls = zoo
    assert calls[20] > 0
    assert calls[32] == 0
    assert len(list((home / "cache" / "embeddings").glob("*.npy"))) == 1


def test_activation_sketch_saved(zoo):
    from neuronatlas.core.sketches import load_sketch

    store, home, _, _ = zoo
    entry = store.get_model("r20")
    sketch = load_sketch(home, "r20", entry.generation)
    assert sketch.n_samples == N_PROBE
    assert sketch.layers["layer3.2.conv2"].shape == (N_PROBE, 64)
    rec = store.get_neuron("r20", "layer3.2.conv2", 4)
    top = rec.top_samples[0]
    assert sketch.layers["layer3.2.conv2"][top.index, 4] == pytest.approx(
        top.activation, rel=1e-2, abs=1e-2
    )


def test_reindex_flips_generation_without_duplicates(zoo, embedder, vocab):
    from neuronatlas.indexer.pipeline import IndexOptions, index_model
    from neuronatlas.indexer.probes import load_probe_set

    store, home, _, _ = zoo
    before = {(r.layer, r.unit): r for r in store.scroll_neurons("r20")}
    old = store.get_model("r20").generation
    entry = index_model(
        store,
        embedder,
        "r20",
        load_probe_set(home, "cifar-small"),
        home,
        {"broden": vocab},
        IndexOptions(k=K, batch_size=64, progress=False),
    )
    assert entry.generation != old and entry.status == ModelStatus.INDEXED
    assert store.count("r20") == CHANNELS_R20  # the old slot is gone
    assert store.count("r20", old) == 0
    after = {(r.layer, r.unit): r for r in store.scroll_neurons("r20")}
    assert after.keys() == before.keys()
    for key, r in after.items():
        np.testing.assert_allclose(r.vector, before[key].vector, atol=1e-6)
        assert [s.index for s in r.top_samples] == [s.index for s in before[key].top_samples]
    hits = store.search(after[("layer3.0.conv1", 2)].vector, limit=50)
    keys = [h.record.key for h in hits]
    assert len(keys) == len(set(keys))


def test_percentile_samples_are_above_the_percentile_and_class_balanced(
    zoo, embedder, vocab, cifar_models
):
    """--samples percentile: up to k images at or above the 80th percentile of each neuron,
    round-robin over the CIFAR class folders; both polysemanticity scores stored."""
    from neuronatlas.core.sketches import load_sketch
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import register_model
    from neuronatlas.indexer.pipeline import IndexOptions, index_model
    from neuronatlas.indexer.probes import load_probe_set
    from neuronatlas.indexer.topk import class_ids

    _, home, _, _ = zoo
    probe = load_probe_set(home, "cifar-small")
    classes = class_ids(probe.files)
    assert classes is not None and classes.max() == 9
    opt = IndexOptions(
        k=K,
        batch_size=64,
        progress=False,
        samples="percentile",
        percentile=80.0,
        layers=["layer3.2.conv2", "linear"],
    )
    with EdgeStore(home / "store-percentile") as store:
        source = {"kind": "cifar_resnet", "depth": 20, "weights": str(cifar_models[20])}
        register_model(store, "r20p", source)
        entry = index_model(store, embedder, "r20p", probe, home, {"broden": vocab}, opt)
        index = entry.extra["index"]
        assert index["options"]["samples"] == "percentile"
        assert index["options"]["percentile"] == 80.0
        assert index["samples"] == {
            "mode": "percentile",
            "percentile": 80.0,
            "max": K,
            "candidates": 40,  # ceil(0.2 * 200)
            "classes": 10,
        }
        sketch = load_sketch(home, "r20p", entry.generation)
        records = list(store.scroll_neurons("r20p", with_vectors=False))
    assert len(records) == 64 + 10
    for r in records:
        acts = sketch.layers[r.layer][:, r.unit].astype(np.float32)  # all 200 samples
        threshold = np.percentile(acts, 80.0, method="inverted_cdf")
        got = [s.activation for s in r.top_samples]
        assert len(got) == K and got == sorted(got, reverse=True)
        assert min(got) >= threshold - 1e-2 * max(1.0, abs(threshold))
        assert 0.0 <= r.polysemanticity <= r.polysemanticity_sl + 1e-6 <= 2.0 + 1e-6
    # the logit of class c: plain top-10 is (nearly) all class c; balanced, c gives at most 5
    # (its 40 candidates hold only 20 images of c, the rest spread over other classes)
    for r in records:
        if r.layer == "linear":
            own = sum(int(classes[s.index] == r.unit) for s in r.top_samples)
            assert own <= K // 2, (r.unit, own)


# ------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors_and_write_nothing(
    zoo, embedder, cifar_dir, cifar_models, tmp_path, vocab
):
    from neuronatlas.indexer.api import build_index, register_model
    from neuronatlas.indexer.pipeline import IndexOptions, index_model
    from neuronatlas.indexer.probes import load_probe_set, register_probe_set

    store, home, _, _ = zoo
    n_before = store.count()
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        register_model(
            store,
            "ghost",
            {"kind": "cifar_resnet", "depth": 20, "weights": str(tmp_path / "no.th")},
        )
    with pytest.raises(WeightsUnavailable, match="ResNet-56"):
        register_model(
            store, "wrong", {"kind": "cifar_resnet", "depth": 56, "weights": str(cifar_models[20])}
        )
    for mid in ("ghost", "wrong"):
        with pytest.raises(NotFound):
            store.get_model(mid)

    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    (empty / "cls" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InvalidArgument, match="no readable images"):
        build_index(
            store,
            embedder,
            model_id="r20",
            source={"kind": "cifar_resnet", "depth": 20, "weights": str(cifar_models[20])},
            probe_dir=empty,
            probe_name="empty",
            home=home,
            progress=False,
        )

    probe = load_probe_set(home, "cifar-small")
    live = store.get_model("r20")
    for opts, match in (
        (IndexOptions(layers=["layer9.conv"], progress=False), "available layers: conv1"),
        (IndexOptions(k=N_PROBE + 1, progress=False), "k=201"),
    ):
        with pytest.raises(InvalidArgument, match=match):
            index_model(store, embedder, "r20", probe, home, {"broden": vocab}, opts)
    with pytest.raises(NotFound, match="vocabulary"):
        index_model(
            store,
            embedder,
            "r20",
            probe,
            home,
            {"x": tmp_path / "none.txt"},
            IndexOptions(progress=False),
        )
    after = store.get_model("r20")
    assert (after.status, after.generation, after.updated_at) == (
        live.status,
        live.generation,
        live.updated_at,
    )
    assert store.count() == n_before

    from neuronatlas.core.embedder import load_embedder

    other = load_embedder("open_clip:na-tiny:random:1", device="cpu")
    with pytest.raises(EmbedderMismatch):
        index_model(store, other, "r20", probe, home, None, IndexOptions(k=K, progress=False))
    assert store.get_model("r20").status == ModelStatus.INDEXED

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, f in enumerate(sorted((cifar_dir / "cat").glob("*.jpg"))[:3]):
        (mixed / f"{i}.jpg").write_bytes(f.read_bytes())
    (mixed / "3.jpg").write_bytes(b"\xff\xd8 truncated")
    ps = register_probe_set(home, "mixed", mixed)
    assert (len(ps), ps.skipped) == (3, ["3.jpg"])


# ------------------------------------------------------------------------------------------
def _run_worker(home: Path, weights: Path, cifar_dir: Path, vocab: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        SLOW_RESNET_DELAY="0.3",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.Popen(
        [sys.executable, __file__, str(home), str(weights), str(cifar_dir), str(vocab)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _index_slow(home: Path, weights: Path, cifar_dir: Path, vocab: Path, embedder=None):
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import build_index

    embedder = embedder or load_embedder(EMBEDDER, device="cpu")
    with EdgeStore(home / "store") as store:
        entry = build_index(
            store,
            embedder,
            model_id="slow",
            source=slow_source(weights),
            **_cifar_run(cifar_dir, home, vocab),
            batch_size=20,
            progress=False,
            checkpoint_every=1,
        )
        snapshot = model_snapshot(store, "slow")
        total = store.count()
    return entry, snapshot, total


def test_killed_run_resumes_to_the_same_store(tmp_path, embedder, cifar_dir, cifar_models, vocab):
    weights = cifar_models[20]
    ref_entry, ref, ref_total = _index_slow(tmp_path / "a", weights, cifar_dir, vocab, embedder)

    home = tmp_path / "b"
    home.mkdir()
    shutil.copytree(tmp_path / "a" / "cache", home / "cache")  # embeddings are content-addressed
    proc = _run_worker(home, weights, cifar_dir, vocab)
    state = home / "runs" / "slow" / "state.npz"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert state.exists(), (
        proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no checkpoint"
    )
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL

    from neuronatlas.core.store.edge import EdgeStore

    with EdgeStore(home / "store") as store:
        assert store.get_model("slow").status == ModelStatus.INDEXING
    entry, got, total = _index_slow(home, weights, cifar_dir, vocab, embedder)
    assert entry.extra["index"]["resumed_from_sample"] > 0
    assert entry.generation == ref_entry.generation and entry.status == ModelStatus.INDEXED
    assert total == ref_total == CHANNELS_R20
    assert_same_model(got, ref)  # ids, vectors bit for bit, payloads, catalogue minus times
    assert not (home / "runs" / "slow").exists()


if __name__ == "__main__":  # the worker killed by test_killed_run_resumes_to_the_same_store
    _index_slow(*(Path(a) for a in sys.argv[1:5]))
