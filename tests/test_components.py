"""Concept components (indexer/components.py) and class importance (indexer/importance.py):
extraction recovers planted directions, ids are deterministic, importance has the known
answer on a model where class c depends on channel c only, and the whole pipeline on a tiny
synthetic model and probe set (no real data needed)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_EMBEDDER
from PIL import Image
from torch import nn

from neuronatlas.core.errors import InvalidArgument
from neuronatlas.core.records import neuron_point_id, parse_component_key, parse_neuron_key
from neuronatlas.indexer.components import (
    ComponentGroup,
    ComponentOptions,
    check_options,
    default_rank,
    fingerprint,
    fit_cav,
    nmf,
    spherical_kmeans,
    subset_indices,
)
from neuronatlas.indexer.importance import class_importance, class_mapping
from neuronatlas.indexer.layers import resolve_layers
from neuronatlas.indexer.probes import ProbeSet

RNG = np.random.default_rng


def best_match(found: np.ndarray, planted: np.ndarray) -> np.ndarray:
    """For each planted direction, the best |cosine| with a found one."""
    f = found / np.linalg.norm(found, axis=1, keepdims=True)
    p = planted / np.linalg.norm(planted, axis=1, keepdims=True)
    return np.abs(p @ f.T).max(axis=1)


# -- extraction on synthetic activations --------------------------------------------------------
def test_nmf_recovers_planted_directions():
    rng = RNG(0)
    c, r = 24, 4
    h = np.zeros((r, c))
    for k in range(r):  # each concept a few channels of its own plus a shared one
        h[k, k * 5 : k * 5 + 5] = rng.uniform(0.5, 1.5, 5)
        h[k, 23] = 0.3
    w = rng.exponential(1.0, (3000, r)) * (rng.random((3000, r)) < 0.5)
    x = w @ h + rng.uniform(0, 0.01, (3000, c))
    res = nmf(x, r, seed=0, max_iter=400)
    assert res.directions.shape == (r, c)
    np.testing.assert_allclose(np.linalg.norm(res.directions, axis=1), 1.0, rtol=1e-5)
    assert (res.directions >= 0).all()
    assert best_match(res.directions, h).min() > 0.98
    assert res.fit > 0.99
    assert np.all(np.diff(res.share) <= 1e-6)  # largest share first
    again = nmf(x, r, seed=0, max_iter=400)  # seeded: the same result
    np.testing.assert_array_equal(again.directions, res.directions)


def test_nmf_clips_negative_activations():
    x = RNG(1).standard_normal((500, 8))
    res = nmf(x, 2, seed=0)
    assert (res.directions >= 0).all() and np.isfinite(res.directions).all()


def test_spherical_kmeans_recovers_centroids():
    rng = RNG(2)
    c = 16
    centres = rng.standard_normal((3, c))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, 3, 3000)
    x = centres[labels] + 0.15 * rng.standard_normal((3000, c))
    x *= rng.uniform(0.2, 5.0, (3000, 1))  # magnitudes do not matter (cosine)
    x[:50] = 0.0  # all-zero rows are dropped
    res = spherical_kmeans(x, 3, seed=0)
    assert best_match(res.directions, centres).min() > 0.99
    np.testing.assert_allclose(res.share.sum(), 1.0, rtol=1e-5)
    assert np.all(np.diff(res.share) <= 0)  # largest cluster first
    assert (res.mean_cos > 0.8).all()  # noise of norm 0.6: cos about 0.86


def test_cav_recovers_concept_direction():
    rng = RNG(3)
    c = 20
    scale = rng.uniform(0.5, 3.0, c)  # channels on different scales
    neg = rng.standard_normal((200, c)) * scale + 1.0
    pos = rng.standard_normal((200, c)) * scale + 1.0
    pos[:, 7] += 3.5 * scale[7]  # the concept moves channel 7 by 3.5 sd (Bayes 96 %)
    res = fit_cav(pos, neg, l2=1e-2, seed=0)
    assert res.direction[7] > 0.9  # the planted direction, e_7 (raw activation units)
    assert res.accuracy > 0.85 and res.train_accuracy > 0.85
    assert (res.positives, res.negatives) == (200, 200)
    chance = fit_cav(rng.standard_normal((100, c)), rng.standard_normal((100, c)), seed=0)
    assert chance.accuracy < 0.75  # nothing to find: held-out accuracy near chance


def test_rank_rule_and_subset():
    assert [default_rank(c) for c in (3, 16, 32, 64, 128, 2048)] == [2, 2, 4, 8, 16, 16]
    files = [f"{c}/{i}.jpg" for c in "abc" for i in range(10)]
    idx = subset_indices(files, 9, seed=0)
    assert len(idx) == 9 and list(idx) == sorted(idx)
    assert sorted(files[i][0] for i in idx) == list("aaabbbccc")  # class-balanced
    np.testing.assert_array_equal(idx, subset_indices(files, 9, seed=0))
    assert list(subset_indices(files, 100)) == list(range(30))


def test_options_are_checked():
    from neuronatlas.indexer.layers import LayerSpec

    specs = [LayerSpec("a", "conv", 8, 0, 0.0), LayerSpec("b.c", "conv", 8, 1, 1.0)]
    with pytest.raises(InvalidArgument, match="unknown component kind"):
        check_options(ComponentOptions(kinds=["pca"]), specs)
    with pytest.raises(InvalidArgument, match="cav-dir"):
        check_options(ComponentOptions(kinds=["cav"]), specs)
    with pytest.raises(InvalidArgument, match="not among the indexed layers"):
        check_options(ComponentOptions(kinds=["nmf"], layers=["zzz"]), specs)
    got = check_options(ComponentOptions(kinds=["nmf"], layers=["b.*"]), specs)
    assert [s.name for s in got] == ["b.c"]
    assert check_options(ComponentOptions(), specs) == []  # nothing asked: no layers


# -- ids -------------------------------------------------------------------------------------------
def test_component_ids_are_deterministic():
    ns = uuid.UUID("8d5b8a52-6a1e-4c1e-9a55-2f1f7f0f6a11")
    # a neuron's id is what it was before components existed
    assert neuron_point_id("m", "l", 3, 1) == str(uuid.uuid5(ns, "m/l/3#1"))
    a = neuron_point_id("m", "l", 3, 1, "nmf", "abc")
    assert a == neuron_point_id("m", "l", 3, 1, "nmf", "abc")
    others = {
        neuron_point_id("m", "l", 3, 1),
        neuron_point_id("m", "l", 3, 1, "cluster", "abc"),
        neuron_point_id("m", "l", 3, 1, "nmf", "abd"),
        neuron_point_id("m", "l", 3, 0, "nmf", "abc"),
        neuron_point_id("m", "l", 4, 1, "nmf", "abc"),
    }
    assert a not in others and len(others) == 5
    o = ComponentOptions(kinds=["nmf"])
    fp = fingerprint("nmf", o, "mean", "sha")
    assert fp == fingerprint("nmf", ComponentOptions(kinds=["nmf"]), "mean", "sha")
    assert fp != fingerprint("nmf", ComponentOptions(kinds=["nmf"], rank=3), "mean", "sha")
    assert fp != fingerprint("nmf", o, "max", "sha")
    assert fp != fingerprint("cluster", o, "mean", "sha")


def test_component_keys():
    assert parse_component_key("m/layer3.2/nmf:4") == ("m", "layer3.2", 4, "nmf")
    assert parse_component_key("m/a/b/7") == ("m", "a/b", 7, "neuron")
    with pytest.raises(InvalidArgument, match="unknown kind"):
        parse_component_key("m/l/pca:1")
    with pytest.raises(InvalidArgument, match="nmf component"):
        parse_neuron_key("m/l/nmf:1")


# -- importance: a model where class c depends only on channel c ---------------------------------
class Diagonal(nn.Module):
    """RGB -> 1x1 identity conv (3 channels) -> ReLU -> mean pool -> logits w_c x channel c."""

    def __init__(self, w=(1.0, 2.0, 3.0)):
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 3, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(3)[:, :, None, None])
            self.fc.weight.copy_(torch.diag(torch.tensor(w)))

    def forward(self, x):
        return self.fc(self.relu(self.features(x)).mean(dim=(2, 3)))


def diagonal():
    return Diagonal().eval()


COLOURS = {"a": (200, 30, 30), "b": (30, 200, 30), "c": (30, 30, 200)}


def images(folder: Path, rgb: tuple[int, int, int], n: int, seed: int, prefix: str = "") -> None:
    """``n`` noisy 8 x 8 images of colour ``rgb`` in ``folder``."""
    rng = RNG(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = np.clip(np.array(rgb) + rng.integers(-25, 25, (8, 8, 3)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(folder / f"{prefix}{i:02d}.png")


def colour_probe(root: Path, per_class: int = 8) -> Path:
    """Class folders a, b, c of 8 x 8 images dominated by red, green, blue."""
    for seed, (name, rgb) in enumerate(COLOURS.items()):
        images(root / name, rgb, per_class, seed)
    return root


def test_importance_known_answer(tmp_path: Path):
    from torchvision.transforms import ToTensor

    root = colour_probe(tmp_path / "probe")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    probe = ProbeSet("colours", root, files, "sha")
    model = diagonal()
    specs = resolve_layers(model, ["features", "fc"], (3, 8, 8))
    mapping = class_mapping(files, 3, None)
    assert not isinstance(mapping, str) and mapping.classes == ["a", "b", "c"]
    eye = ComponentGroup("features", "nmf", np.eye(3, dtype=np.float32), [{}] * 3, "x")
    mixed = np.array([[1, 1, 0]], np.float32) / np.sqrt(2)
    mix = ComponentGroup("features", "cluster", mixed, [{}], "y")
    imp = class_importance(
        model, specs, [eye, mix], probe, mapping.y, mapping, ToTensor(), 5, torch.device("cpu")
    )
    assert imp.images == [8, 8, 8]
    feats = imp.values["features"]  # (classes, channels)
    off = feats[~np.eye(3, dtype=bool)]
    np.testing.assert_allclose(off, 0.0, atol=1e-6)  # class c uses channel c only
    assert (np.diag(feats) > 0).all()
    # known value: w_c x mean activation of channel c over class c's images
    x = torch.stack([ToTensor()(Image.open(root / f).convert("RGB")) for f in files])
    for c in range(3):
        mean_act = float(x[c * 8 : (c + 1) * 8, c].mean())
        assert feats[c, c] == pytest.approx((c + 1) * mean_act, rel=1e-4)
    # a component along channel c is that neuron; along (e_a + e_b) / sqrt(2) it is
    # (G_a + G_b)(A_a + A_b) / 2: for class a, w_a x mean(A_a + A_b) / 2; none for class c
    np.testing.assert_allclose(imp.values["features#nmf"], feats, rtol=1e-5, atol=1e-7)
    want = [
        (c + 1) * float((x[c * 8 : (c + 1) * 8, 0] + x[c * 8 : (c + 1) * 8, 1]).mean()) / 2
        for c in range(2)
    ]
    np.testing.assert_allclose(imp.values["features#cluster"][:, 0], [*want, 0.0], rtol=1e-4)
    # the final linear layer: output unit c is its class's logit
    logits = imp.values["fc"]
    assert list(logits.argmax(axis=1)) == [0, 1, 2]
    np.testing.assert_allclose(logits[~np.eye(3, dtype=bool)], 0.0, atol=1e-6)
    top = imp.top_classes("features", 2)
    assert top[0].class_name == "c" and top[0].importance > 0


def test_class_mapping_reasons():
    files = ["a/1.png", "b/1.png"]
    assert "no class folders" in class_mapping(["1.png", "2.png"], 2, None)
    assert "--class-map" in class_mapping(files, 3, None)
    m = class_mapping(files, 4, {0: "b", 3: "b", 1: "zzz"})
    assert not isinstance(m, str)
    assert m.classes == ["b"] and m.outputs == [[0, 3]] and list(m.y) == [-1, 0]


# -- the pipeline on the tiny model (no real data) ----------------------------------------------
@pytest.fixture(scope="module")
def tiny_index(tmp_path_factory, tiny_embedder):
    """The Diagonal model indexed with nmf, cluster and cav components and importance."""
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import build_index

    base = tmp_path_factory.mktemp("components")
    probe = colour_probe(base / "probe")
    cav = base / "cav"  # concept "red" against green and blue negatives
    images(cav / "red", COLOURS["a"], 10, seed=10)
    images(cav / "negatives", COLOURS["b"], 5, seed=11, prefix="g")
    images(cav / "negatives", COLOURS["c"], 5, seed=12, prefix="b")
    (base / "model.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_components import diagonal\n"
    )
    home = base / "home"
    source = {
        "kind": "python",
        "factory": f"{base / 'model.py'}:diagonal",
        "input_size": 8,
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
    }
    store = EdgeStore(home / "store")
    entry = build_index(
        store,
        tiny_embedder,
        model_id="diag",
        source=source,
        probe_dir=probe,
        probe_name="colours",
        home=home,
        layers=["features", "fc"],
        k=4,
        progress=False,
        components=ComponentOptions(kinds=["nmf", "cluster", "cav"], cav_dir=str(cav), rank=2),
    )
    yield store, entry, home
    store.close()


@pytest.fixture(scope="module")
def tiny_embedder():
    from neuronatlas.core.embedder import load_embedder

    return load_embedder(TINY_EMBEDDER, device="cpu")


def test_pipeline_writes_components(tiny_index):
    store, entry, _ = tiny_index
    comp = entry.extra["components"]
    assert comp["per_layer_counts"] == {
        "features": {"nmf": 2, "cluster": 2, "cav": 1},
        "fc": {"nmf": 2, "cluster": 2, "cav": 1},
    }
    assert entry.neuron_count == 6  # layers count neurons; the store holds components too
    assert store.count("diag", entry.generation) == 6 + 10
    recs = list(store.scroll_neurons("diag", kinds=["nmf", "cluster", "cav"]))
    assert {r.kind for r in recs} == {"nmf", "cluster", "cav"} and len(recs) == 10
    for r in recs:
        assert r.extraction == comp["extraction"][r.kind]
        assert r.point_id == neuron_point_id(
            "diag", r.layer, r.unit, entry.generation, r.kind, r.extraction
        )
        assert len(r.top_samples) == 4 and r.vector.shape == (store.embedder.dim,)
        assert r.top_classes and r.component["method"] in ("nmf", "spherical-kmeans", "cav")
    cav = store.get_neuron("diag", "features", 0, kind="cav")
    assert cav.component["concept"] == "red" and cav.component["accuracy"] >= 0.75
    assert cav.top_samples[0].sample_id.startswith("a/")  # the reddest probe images
    assert store.verify().ok  # ids check out against the payloads


def test_pipeline_importance(tiny_index):
    store, entry, _ = tiny_index
    imp = entry.extra["importance"]
    assert imp["classes"] == ["a", "b", "c"]
    for c, cls in enumerate("abc"):
        neurons = [r for r in imp["per_class"][cls] if r["kind"] == "neuron"]
        first = neurons[0]
        assert (first["layer"], first["unit"]) in (("fc", c), ("features", c))
        feats = [r for r in neurons if r["layer"] == "features"]
        assert feats[0]["unit"] == c  # the channel class c depends on
        rec = store.get_neuron("diag", "features", c)
        assert rec.top_classes[0].class_name == cls


def test_pipeline_is_deterministic(tiny_index, tmp_path, tiny_embedder):
    """Indexing again with the same settings gives the same component ids and directions."""
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import build_index

    store, entry, home = tiny_index
    src = store.get_model("diag").source
    with EdgeStore(tmp_path / "store2") as other:
        e2 = build_index(
            other,
            tiny_embedder,
            model_id="diag",
            source=src,
            probe_dir=home.parent / "probe",
            probe_name="colours",
            home=tmp_path / "home2",
            layers=["features", "fc"],
            k=4,
            progress=False,
            components=ComponentOptions(
                kinds=["nmf", "cluster", "cav"],
                cav_dir=str(home.parent / "cav"),
                rank=2,
            ),
        )
        ids1 = sorted(
            r.point_id for r in store.scroll_neurons("diag", kinds=["nmf", "cluster", "cav"])
        )
        ids2 = sorted(
            r.point_id for r in other.scroll_neurons("diag", kinds=["nmf", "cluster", "cav"])
        )
        assert e2.generation == entry.generation and ids1 == ids2
        a = store.get_neuron("diag", "features", 1, kind="nmf")
        b = other.get_neuron("diag", "features", 1, kind="nmf")
        assert [s.sample_id for s in a.top_samples] == [s.sample_id for s in b.top_samples]


# -- integration: resnet20 on 300 CIFAR-10 test images ------------------------------------------
def majority(rec) -> str:
    """The most frequent class folder among a record's top images."""
    from collections import Counter

    return Counter(s.sample_id.split("/", 1)[0] for s in rec.top_samples).most_common(1)[0][0]


@pytest.mark.integration
def test_resnet20_components_and_importance(tmp_path, cifar_dir, cifar_models, tiny_embedder):
    """nmf + cluster components of the last block and the classifier, class importance, and
    the final layer's most important unit for class c is unit c, whose top images are mostly
    class c (the tiny random CLIP cannot name classes: "carries c" = majority class folder)."""
    import time

    from neuronatlas.core.explain import explain_class
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import build_index

    if 20 not in cifar_models:
        pytest.skip("needs the resnet20 checkpoint")
    t0 = time.perf_counter()
    with EdgeStore(tmp_path / "store") as store:
        entry = build_index(
            store,
            tiny_embedder,
            model_id="r20",
            source={"kind": "cifar_resnet", "depth": 20, "weights": str(cifar_models[20])},
            probe_dir=cifar_dir,
            probe_name="c300",
            home=tmp_path / "home",
            layers=["layer3.2", "linear"],
            k=10,
            probe_limit=300,
            progress=False,
            components=ComponentOptions(kinds=["nmf", "cluster"]),
        )
        elapsed = time.perf_counter() - t0
        comp = entry.extra["components"]
        assert comp["per_layer_counts"]["layer3.2"] == {"nmf": 8, "cluster": 8}  # 64 // 8
        assert comp["per_layer_counts"]["linear"] == {"nmf": 2, "cluster": 2}
        assert comp["per_layer"]["layer3.2"]["nmf"]["clipped"] == 0.0  # post-ReLU block
        imp = entry.extra["importance"]
        classes = imp["classes"]
        assert len(classes) == 10 and set(imp["images"].values()) == {30}
        carried = 0
        for c, name in enumerate(classes):
            e = explain_class(store, "r20", name, kinds=["neuron"], top_n=1)
            best = e.components[0].record
            assert (best.layer, best.unit) == ("linear", c)  # the class's own logit
            carried += majority(best) == name
        assert carried >= 8
        # the last block: its most important neuron / component for class c carries c
        # (observed 10, 8 and 7 of 10; chance is 1 in 10)
        for kind, least in (("neuron", 8), ("nmf", 6), ("cluster", 5)):
            hits = []
            for name in classes:
                e = explain_class(store, "r20", name, kinds=[kind], top_n=8)
                best = next(c.record for c in e.components if c.record.layer == "layer3.2")
                hits.append(majority(best) == name)
            assert sum(hits) >= least, (kind, hits)
        assert store.verify().ok
    assert elapsed < 60


def test_interrupted_run_resumes_to_the_same_components(tmp_path, tiny_embedder):
    """A run stopped in the forward pass resumes on the directions it fitted and ends with the
    store an uninterrupted run gives (components, importance, catalogue)."""
    from helpers import assert_same_model, model_snapshot

    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import build_index

    probe = colour_probe(tmp_path / "probe")
    (tmp_path / "model.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_components import diagonal\n"
    )
    source = {
        "kind": "python",
        "factory": f"{tmp_path / 'model.py'}:diagonal",
        "input_size": 8,
        "mean": [0.0, 0.0, 0.0],
        "std": [1.0, 1.0, 1.0],
    }

    class Stop(Exception):
        pass

    def stop_halfway(p) -> None:
        if p.stage == "forward" and p.done >= 12:
            raise Stop()

    def run(name: str, on_progress=None):
        with EdgeStore(tmp_path / name / "store") as store:
            entry = build_index(
                store,
                tiny_embedder,
                model_id="diag",
                source=source,
                probe_dir=probe,
                probe_name="colours",
                home=tmp_path / name,
                layers=["features", "fc"],
                k=4,
                batch_size=4,
                checkpoint_every=1,
                progress=False,
                on_progress=on_progress,
                components=ComponentOptions(kinds=["nmf", "cluster"], rank=2),
            )
            return entry, model_snapshot(store, "diag")

    _, ref = run("a")
    with pytest.raises(Stop):
        run("b", stop_halfway)
    assert (tmp_path / "b" / "runs" / "diag" / "components.npz").is_file()
    entry, got = run("b")
    assert entry.extra["index"]["resumed_from_sample"] == 12
    assert_same_model(got, ref)
