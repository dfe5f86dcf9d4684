"""Streaming top-k and activation statistics against full, in-memory computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronatlas.core.errors import InvalidArgument
from neuronatlas.indexer.topk import (
    RunningStats,
    StreamingTopK,
    class_ids,
    representative_samples,
    reservoir_size,
)


def _reference(acts: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full sort: value descending, ties -> lower sample index (np.lexsort is stable)."""
    a = acts.numpy().T  # (units, n)
    idx = np.stack([np.lexsort((np.arange(a.shape[1]), -row))[:k] for row in a])
    return np.take_along_axis(a, idx, 1), idx


def _stream(acts: torch.Tensor, k: int, batch: int) -> StreamingTopK:
    top = StreamingTopK(acts.shape[1], k)
    for s in range(0, acts.shape[0], batch):
        top.update(acts[s : s + batch], s)
    return top


@pytest.mark.parametrize("batch", [1, 3, 7, 50, 200])
def test_matches_full_sort_with_negatives(batch: int) -> None:
    g = torch.Generator().manual_seed(batch)
    acts = torch.randn(123, 9, generator=g) - 1.5  # mostly negative
    vals, idx = _stream(acts, 10, batch).result()
    ref_v, ref_i = _reference(acts, 10)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(vals, ref_v)
    assert (idx >= 0).all()


@pytest.mark.parametrize("batch", [1, 4, 16, 64])
def test_ties_resolve_to_lower_sample_index(batch: int) -> None:
    g = torch.Generator().manual_seed(0)
    acts = torch.randint(-2, 3, (64, 5), generator=g).float()  # values from 5 levels: many ties
    acts[:, 4] = 0.0  # a dead unit: all equal
    vals, idx = _stream(acts, 12, batch).result()
    ref_v, ref_i = _reference(acts, 12)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(idx[4], np.arange(12))
    np.testing.assert_array_equal(vals, ref_v)


def test_topk_values_equal_torch_topk() -> None:
    acts = torch.randn(500, 33, generator=torch.Generator().manual_seed(3))
    vals, _ = _stream(acts, 20, 64).result()
    expect = torch.topk(acts.t(), 20, dim=1).values.numpy()
    np.testing.assert_allclose(vals, expect)


def test_k_larger_than_samples_never_leaks_placeholders() -> None:
    top = StreamingTopK(2, 5)
    top.update(torch.tensor([[1.0, -1.0], [2.0, -2.0], [0.5, -0.5]]), 0)
    with pytest.raises(InvalidArgument, match="k=5"):
        top.result()


def test_minus_inf_and_nan_activations_keep_valid_indices() -> None:
    acts = torch.full((6, 2), float("-inf"))
    acts[2, 0] = float("nan")
    vals, idx = _stream(acts, 4, 2).result()
    np.testing.assert_array_equal(idx, [[0, 1, 2, 3], [0, 1, 2, 3]])
    assert np.isneginf(vals).all()


def test_out_of_order_batches_are_refused() -> None:
    top = StreamingTopK(3, 2)
    top.update(torch.zeros(4, 3), 0)
    with pytest.raises(InvalidArgument, match="in order"):
        top.update(torch.zeros(4, 3), 8)


def test_state_round_trip_continues_identically() -> None:
    acts = torch.randn(90, 4, generator=torch.Generator().manual_seed(1))
    full = _stream(acts, 7, 10)
    half = _stream(acts[:40], 7, 10)
    resumed = StreamingTopK.from_state({k: np.array(v) for k, v in half.state().items()})
    for s in range(40, 90, 10):
        resumed.update(acts[s : s + 10], s)
    for a, b in zip(full.result(), resumed.result(), strict=False):
        np.testing.assert_array_equal(a, b)


def test_running_stats_match_numpy() -> None:
    acts = torch.randn(301, 6, generator=torch.Generator().manual_seed(2)) * 3 + 1
    stats = RunningStats(6)
    for s in range(0, 301, 37):
        stats.update(acts[s : s + 37])
    r = stats.result()
    a = acts.numpy().astype(np.float64)
    np.testing.assert_allclose(r["mean"], a.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["std"], a.std(0), rtol=1e-5)
    np.testing.assert_allclose(r["min"], a.min(0))
    np.testing.assert_allclose(r["max"], a.max(0))
    np.testing.assert_allclose(r["frac_active"], (a > 0).mean(0))


# -- percentile (representative) selection -------------------------------------------------
def _select(acts: torch.Tensor, k: int, percentile: float, classes=None, batch: int = 64):
    """Stream the above-percentile reservoir, then pick the representatives."""
    vals, idx = _stream(acts, reservoir_size(acts.shape[0], percentile), batch).result()
    return representative_samples(vals, idx, k, classes)


def test_reservoir_size_is_the_above_percentile_count() -> None:
    assert reservoir_size(10_000, 93) == 700
    assert reservoir_size(1000, 93) == 70
    assert reservoir_size(999, 93) == 70  # ceil(69.93)
    assert reservoir_size(10, 99.9) == 1  # at least one
    assert reservoir_size(10**7, 50, cap=4096) == 4096  # bounded memory
    assert reservoir_size(5, 0) == 5
    for bad in (-1.0, 100.0, float("nan")):
        with pytest.raises(InvalidArgument):
            reservoir_size(100, bad)
    with pytest.raises(InvalidArgument):
        reservoir_size(0, 93)


@pytest.mark.parametrize("percentile", [93.0, 80.0, 99.0])
def test_percentile_selection_without_classes(percentile: float) -> None:
    g = torch.Generator().manual_seed(int(percentile))
    acts = torch.randn(1000, 12, generator=g)
    k = 20
    vals, idx = _select(acts, k, percentile)
    cand = reservoir_size(1000, percentile)
    assert vals.shape == idx.shape == (12, min(k, cand))
    a = acts.numpy()
    for u in range(12):
        thr = np.percentile(a[:, u], percentile, method="inverted_cdf")
        assert (vals[u] >= thr).all()  # every pick is at or above the percentile
        assert len(set(idx[u].tolist())) == len(idx[u])  # no sample twice
        np.testing.assert_array_equal(vals[u], a[idx[u], u])
        assert (np.diff(vals[u]) <= 0).all()  # highest activation first
    if cand > k:  # a sample of the candidates, not just their top k
        top = _reference(acts, k)[1]
        assert any(set(idx[u]) != set(top[u]) for u in range(12))
    # deterministic
    np.testing.assert_array_equal(idx, _select(acts, k, percentile)[1])


def test_percentile_selection_is_class_balanced() -> None:
    n, units, k, n_cls = 2000, 6, 20, 10
    rng = np.random.default_rng(0)
    classes = np.repeat(np.arange(n_cls), n // n_cls)
    a = rng.normal(size=(n, units)).astype(np.float32)
    a[:, 0] += 8.0 * (classes == 3)  # unit 0: a class-3 neuron (its candidates all class 3)
    a[:, 1] += 3.0 * (classes < 2) + 1.5 * (classes == 5)  # unit 1: mostly classes 0 and 1
    acts = torch.from_numpy(a)
    vals, idx = _select(acts, k, 93.0, classes)
    _, cand_i = _stream(acts, reservoir_size(n, 93.0), 64).result()
    assert vals.shape == (units, k)
    for u in range(units):
        assert set(idx[u]) <= set(cand_i[u])  # only above-percentile samples
        counts = np.bincount(classes[idx[u]], minlength=n_cls)
        available = np.bincount(classes[cand_i[u]], minlength=n_cls)
        # round-robin: a water level L that no class exceeds by more than one pick, and
        # every class gives min(its candidates, L)
        left = counts < available
        level = counts[left].min() if left.any() else counts.max()
        assert (counts <= level + 1).all(), (counts, available)
        assert (counts >= np.minimum(available, level)).all(), (counts, available)
    assert (classes[cand_i[0]] == 3).all() and (classes[idx[0]] == 3).all()
    top1 = classes[_reference(acts, k)[1][1]]  # unit 1's plain top-k: classes 0 and 1 only
    assert set(top1.tolist()) <= {0, 1}
    assert len(set(classes[idx[1]].tolist())) >= 3  # balanced: other classes get a share


def test_percentile_selection_small_probe_and_errors() -> None:
    acts = torch.randn(30, 4, generator=torch.Generator().manual_seed(1))
    vals, idx = _select(acts, 20, 93.0)  # K = 3 < k: every above-percentile sample
    ref_v, ref_i = _reference(acts, 3)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(vals, ref_v)
    with pytest.raises(InvalidArgument):
        representative_samples(np.zeros((2, 3)), np.zeros((2, 4), np.int64), 2)
    with pytest.raises(InvalidArgument):
        representative_samples(np.zeros((2, 3)), np.full((2, 3), -1), 2)
    with pytest.raises(InvalidArgument):
        representative_samples(np.zeros((2, 3)), np.zeros((2, 3), np.int64), 0)


def test_class_ids_from_probe_paths() -> None:
    np.testing.assert_array_equal(class_ids(["cat/1.jpg", "dog/2.jpg", "cat/3.jpg"]), [0, 1, 0])
    assert class_ids(["1.jpg", "2.jpg"]) is None  # flat folder
    assert class_ids(["cat/1.jpg", "cat/2.jpg"]) is None  # one class: nothing to balance
    assert class_ids([]) is None
