"""Streaming top-k and activation statistics against full, in-memory computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuronatlas.core.errors import InvalidArgument
from neuronatlas.indexer.topk import RunningStats, StreamingTopK


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
