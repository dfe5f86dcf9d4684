"""Model comparison: semantic view, matching, CKA, sketches, cache, errors, CLI."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import add_model, per_row, run_report_cli, spread, unit_rows

from neuronatlas.core.compare import (
    BlockStats,
    ModelSide,
    ModelVectors,
    block_stats,
    cka_matrix,
    compare_models,
    depth_alignment,
    linear_cka,
    match_neurons,
    semantic_view,
    spearman,
)
from neuronatlas.core.errors import FailedPrecondition, InvalidArgument, NotFound, NotIndexed
from neuronatlas.core.records import EmbedderInfo, ModelEntry, ModelStatus
from neuronatlas.core.sketches import load_sketch, save_sketch

DIM = 32


def vectors_of(
    name: str, vecs: np.ndarray, sizes: list[int], labels: list[str] | None = None
) -> ModelVectors:
    n_layers = len(sizes)
    side = ModelSide(
        model_id=name,
        generation=0,
        layers=[f"l{i}" for i in range(n_layers)],
        depths=np.linspace(0, 1, n_layers),
        sizes=np.array(sizes),
        layer_of=np.repeat(np.arange(n_layers), sizes),
        units=np.concatenate([np.arange(s) for s in sizes]),
        labels=labels or [""] * len(vecs),
    )
    return ModelVectors(
        entry=ModelEntry(name),
        side=side,
        vectors=vecs.astype(np.float32),
        bounds=np.concatenate([[0], np.cumsum(sizes)]),
    )


def within_layer_permutation(rng, sizes):
    offs = np.concatenate([[0], np.cumsum(sizes)])
    return np.concatenate([offs[i] + rng.permutation(s) for i, s in enumerate(sizes)])


def put_model(
    store,
    model_id: str,
    vecs: np.ndarray,
    sizes: list[int],
    labels: list[str] | None = None,
    status: ModelStatus = ModelStatus.INDEXED,
) -> ModelEntry:
    """Write a model with these neuron vectors (layers ``layer<i>`` of ``sizes`` units, labels
    one a neuron) and its catalogue entry into a store."""
    return add_model(
        store,
        model_id,
        {f"layer{i}": size for i, size in enumerate(sizes)},
        status,
        vectors=vecs,
        labels=per_row(labels) if labels else None,
        depths=spread(len(sizes)),
        sample="cls/{row}.jpg",
        entry_fields={"indexed_at": time.time()},
    )


@pytest.fixture()
def store(edge_store):
    edge_store.bind_embedder(EmbedderInfo("test", "random:0", DIM))
    return edge_store


# --- semantic view on constructed models ------------------------------------------------------


def test_permuted_copy_matches_perfectly():
    rng = np.random.default_rng(1)
    sizes = [30, 40, 30, 50, 40]
    a = unit_rows(rng, sum(sizes), DIM)
    perm = within_layer_permutation(rng, sizes)
    view = semantic_view(vectors_of("a", a, sizes), vectors_of("b", a[perm], sizes))
    assert view.matching_method == "hungarian"
    assert np.array_equal(perm[view.match_b], view.match_a)  # every neuron found its copy
    assert view.matching.value == pytest.approx(1.0, abs=1e-5)
    assert view.alignment.rho.value == pytest.approx(1.0)
    assert view.alignment_b.rho.value == pytest.approx(1.0)
    assert view.coverage_a.value == 1.0 and view.coverage_b.value == 1.0
    # the noise floor stays at chance level
    assert view.coverage_a.baseline < 0.2 and view.matching.baseline < 0.7
    assert np.argmax(view.layer_similarity, axis=1).tolist() == list(range(len(sizes)))


def test_unrelated_models_sit_at_the_noise_floor():
    rng = np.random.default_rng(2)
    sizes = [60] * 6
    view = semantic_view(
        vectors_of("a", unit_rows(rng, 360, DIM), sizes),
        vectors_of("b", unit_rows(rng, 360, DIM), sizes),
    )
    assert abs(view.best_match.value - view.best_match.baseline) < 0.03
    assert abs(view.matching.value - view.matching.baseline) < 0.05
    assert view.coverage_a.value < 0.15 and view.coverage_b.value < 0.15
    assert abs(view.coverage_a.value - view.coverage_a.baseline) < 0.1
    assert np.abs(view.layer_similarity - view.layer_similarity_baseline).max() < 0.05


def test_sparse_assignment_recovers_a_noisy_permutation():
    rng = np.random.default_rng(3)
    sizes = [50] * 4
    a = unit_rows(rng, 200, DIM)
    perm = within_layer_permutation(rng, sizes)
    b = a[perm] + 0.05 * rng.standard_normal(a.shape).astype(np.float32)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    dense = semantic_view(vectors_of("a", a, sizes), vectors_of("b", b, sizes))
    sparse = semantic_view(vectors_of("a", a, sizes), vectors_of("b", b, sizes), dense_limit=0)
    assert sparse.matching_method == "sparse-assignment"
    assert np.array_equal(perm[sparse.match_b], sparse.match_a)
    assert sparse.matching.value == pytest.approx(dense.matching.value, abs=1e-6)


def test_hungarian_beats_greedy_on_a_small_case():
    sim = np.array([[0.9, 0.8, 0.0], [0.85, 0.0, 0.0], [0.0, 0.0, 0.5]], dtype=np.float32)
    st = BlockStats(
        best_ab=sim.max(1, keepdims=True),
        arg_ab=sim.argmax(1)[:, None],
        best_ba=sim.T.copy(),
        full=sim,
    )
    ra, rb, ms, method = match_neurons(st, 3)
    assert method == "hungarian"
    assert dict(zip(ra.tolist(), rb.tolist(), strict=False)) == {
        0: 1,
        1: 0,
        2: 2,
    }  # greedy would take (0, 0)
    assert ms.sum() == pytest.approx(2.15)
    assert ms.tolist() == sorted(ms.tolist(), reverse=True)


def test_sparse_assignment_is_exact_when_every_column_is_a_candidate():
    rng = np.random.default_rng(4)
    a, b = unit_rows(rng, 40, DIM), unit_rows(rng, 55, DIM)
    per_neuron = np.arange(56)  # every B neuron its own "layer": all edges are candidates
    st = block_stats(a, np.array([0, 40]), b, per_neuron, keep_full=True)
    _, _, exact, m1 = match_neurons(st, 55)
    st.full = None
    _, _, sparse, m2 = match_neurons(st, 55)
    assert (m1, m2) == ("hungarian", "sparse-assignment")
    assert sparse.sum() == pytest.approx(exact.sum(), abs=1e-4)


def test_block_stats_equal_brute_force():
    rng = np.random.default_rng(5)
    a, b = unit_rows(rng, 70, DIM), unit_rows(rng, 45, DIM)
    ba, bb = np.array([0, 20, 70]), np.array([0, 10, 30, 45])
    st = block_stats(a, ba, b, bb, chunk=16)
    full = a @ b.T
    for j in range(3):
        seg = full[:, bb[j] : bb[j + 1]]
        np.testing.assert_allclose(st.best_ab[:, j], seg.max(1), atol=1e-6)
        np.testing.assert_array_equal(st.arg_ab[:, j], bb[j] + seg.argmax(1))
    for i in range(2):
        np.testing.assert_allclose(st.best_ba[:, i], full[ba[i] : ba[i + 1]].max(0), atol=1e-6)


def test_depth_alignment_and_spearman():
    sim = np.eye(6) + 0.01
    depth = np.linspace(0, 1, 6)
    al = depth_alignment(sim, depth, depth, baseline=np.ones((6, 6)))
    assert al.rho.value == pytest.approx(1.0) and al.rho.baseline == 0.0  # constant -> 0
    assert al.p_value < 0.01
    assert spearman(np.arange(5), -np.arange(5)) == pytest.approx(-1.0)


# --- CKA --------------------------------------------------------------------------------------


def test_cka_properties():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((200, 30))
    q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-5)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-5)  # orthogonal transform
    assert linear_cka(x, 7.5 * x + 3.0) == pytest.approx(1.0, abs=1e-5)  # isotropic scale, shift
    y = rng.standard_normal((200, 20))
    z = x[:, :10] @ rng.standard_normal((10, 20))  # shares a subspace with x
    assert linear_cka(x, z) > linear_cka(x, y) + 0.2
    # the feature-space formula ||Y'X||^2 / (||X'X|| ||Y'Y||) on centred data
    xc, yc = x - x.mean(0), y - y.mean(0)
    ref = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert linear_cka(x, y) == pytest.approx(ref, rel=1e-4)
    m = cka_matrix([x, y], [x @ q, y, z])
    assert (
        m.shape == (2, 3)
        and m[0, 0] == pytest.approx(1.0, abs=1e-5)
        and m[1, 1] == pytest.approx(1.0, abs=1e-5)
    )
    with pytest.raises(InvalidArgument):
        linear_cka(x, y[:100])


# --- sketches ---------------------------------------------------------------------------------


def test_sketch_roundtrip_and_validation(tmp_path):
    rng = np.random.default_rng(7)
    acts = {"layer1.0": rng.standard_normal((50, 8)) * 1e5, "fc": rng.standard_normal((50, 3))}
    path = save_sketch(tmp_path, "m", 1, np.arange(50), acts)
    assert path.exists() and path.parent == tmp_path / "sketches" / "m"
    sk = load_sketch(tmp_path, "m", 1)
    assert sk.layer_names == ["layer1.0", "fc"] and sk.n_samples == 50
    for name, a in acts.items():  # float16 storage: ~3 significant digits, large values rescaled
        np.testing.assert_allclose(sk.layers[name], a, rtol=2e-3, atol=2e-3 * np.abs(a).max())
    with pytest.raises(NotFound):
        load_sketch(tmp_path, "m", 0)
    with pytest.raises(InvalidArgument):
        save_sketch(tmp_path, "m", 0, np.arange(50), {"x": np.full((50, 2), np.nan)})
    with pytest.raises(InvalidArgument):
        save_sketch(tmp_path, "m", 0, np.arange(50), {"x": np.zeros((49, 2))})
    with pytest.raises(InvalidArgument):
        save_sketch(tmp_path, "../evil", 0, np.arange(50), acts)
    assert not (tmp_path / "sketches" / "m" / "gen0.npz").exists()  # nothing half-written


# --- compare_models through a store -----------------------------------------------------------


def _two_models(store, home, sketches=True):
    rng = np.random.default_rng(8)
    sizes = [12, 16, 20]
    a = unit_rows(rng, 48, DIM)
    perm = within_layer_permutation(rng, sizes)
    labels = [f"concept{i % 7}" for i in range(48)]
    ea = put_model(store, "alpha", a, sizes, labels)
    eb = put_model(store, "beta", a[perm], sizes, [labels[i] for i in perm])
    if sketches:
        x = rng.standard_normal((60, 10))
        acts = {f"layer{i}": np.tanh(x @ rng.standard_normal((10, s))) for i, s in enumerate(sizes)}
        save_sketch(home, "alpha", ea.generation, np.arange(60), acts)
        save_sketch(
            home, "beta", eb.generation, np.arange(60), {k: v[:, ::-1] for k, v in acts.items()}
        )
    return ea, eb


def test_compare_models_end_to_end(store, home):
    _two_models(store, home)
    cmp = compare_models(store, "alpha", "beta", home=home, limit=10)
    assert not cmp.cached and cmp.pairs_total == 48 and len(cmp.pairs) == 10
    assert all(
        p.a_label == p.b_label and p.a_unit >= 0 for p in cmp.pairs
    )  # copies carry the same label
    assert cmp.semantic.matching.value == pytest.approx(1.0, abs=1e-5)
    assert cmp.semantic.shared and not cmp.semantic.unique_a
    act = cmp.activation
    assert act is not None and act.layers_a == ["layer0", "layer1", "layer2"]
    np.testing.assert_allclose(np.diag(act.cka), 1.0, atol=1e-4)  # same units, reordered
    assert act.alignment.rho.value == pytest.approx(1.0)
    assert (np.diag(act.cka_baseline) < 0.9).all()
    # paging and the on-disk cache
    again = compare_models(store, "alpha", "beta", home=home, offset=10, limit=5)
    assert again.cached and [p.a_unit for p in again.pairs] == [p.a_unit for p in cmp.page(10, 5)]
    np.testing.assert_array_equal(again.semantic.layer_similarity, cmp.semantic.layer_similarity)
    assert list((home / "cache" / "compare").rglob("*.npz"))
    only = compare_models(store, "alpha", "beta", ["layer1"], home=home, activation=False)
    assert only.a.layers == ["layer1"] and only.activation is None and only.pairs_total == 16


def test_compare_models_errors(store, home):
    ea, _ = _two_models(store, home, sketches=False)
    with pytest.raises(NotFound):
        compare_models(store, "alpha", "nope", home=home)
    put_model(
        store,
        "gamma",
        unit_rows(np.random.default_rng(0), 5, DIM),
        [5],
        status=ModelStatus.INDEXING,
    )
    with pytest.raises(NotIndexed):
        compare_models(store, "alpha", "gamma", home=home)
    with pytest.raises(FailedPrecondition, match="no activation sketch"):
        compare_models(store, "alpha", "beta", home=home)
    assert compare_models(store, "alpha", "beta", home=home, activation=False).activation is None
    save_sketch(home, "alpha", ea.generation, np.arange(20), {"layer0": np.ones((20, 3))})
    save_sketch(home, "beta", 0, np.arange(1, 21), {"layer0": np.ones((20, 3))})
    with pytest.raises(FailedPrecondition, match="different probe samples"):
        compare_models(store, "alpha", "beta", home=home)
    with pytest.raises(InvalidArgument):
        compare_models(store, "alpha", "beta", ["no-such-layer"], home=home)
    with pytest.raises(InvalidArgument):
        compare_models(store, "alpha", "beta", home=home, tau=3.0)


def test_cli_compare_writes_report(store, home, tmp_path):
    _two_models(store, home)
    store.close()  # the CLI opens the embedded store itself
    out = tmp_path / "report"
    res = run_report_cli(home, tmp_path / "store", "compare", "alpha", "beta", "--out", str(out))
    assert res.exit_code == 0, res.output
    for name in ("semantic_heatmap.png", "cka_heatmap.png", "depth_alignment.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.txt").read_text()
    assert "noise floor" in summary and "linear CKA" in summary
    assert len((out / "pairs.tsv").read_text().splitlines()) == 49
    res = run_report_cli(home, tmp_path / "store", "compare", "alpha", "zeta", "--out", str(out))
    assert isinstance(res.exception, NotFound)
