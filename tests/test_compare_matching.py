"""The sparse one-to-one matching of the semantic view (``sparse_assignment``): the square
formulation handed to the solver has the same optimum as the plain one."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from neuronatlas.core.compare import (
    BlockStats,
    _stable_order,
    block_stats,
    match_neurons,
    sparse_assignment,
)


def reference(rows, cols, sims, n_rows, n_cols):
    """The plain formulation (the one used before): every row to one of its edges (cost
    2 - sim) or to a dummy column of its own (cost 4), one full matching of the rows."""
    cost = np.concatenate([2.0 - sims, np.full(n_rows, 4.0)])
    r = np.concatenate([rows, np.arange(n_rows)])
    c = np.concatenate([cols, n_cols + np.arange(n_rows)])
    graph = coo_matrix((cost, (r, c)), shape=(n_rows, n_cols + n_rows)).tocsr()
    ra, cb = min_weight_full_bipartite_matching(graph)
    real = cb < n_cols
    return ra[real], cb[real]


def dense_optimum(rows, cols, sims, n_rows, n_cols) -> float:
    """Independent check: the best sum of 2 + sim by the dense Hungarian (missing edge: inf)."""
    cost = np.full((n_rows, n_cols + n_rows), np.inf)
    cost[rows, cols] = 2.0 - sims
    cost[np.arange(n_rows), n_cols + np.arange(n_rows)] = 4.0
    r, c = linear_sum_assignment(cost)
    return float(4.0 * n_rows - cost[r, c].sum())


def value(pairs, rows, cols, sims, n_cols) -> float:
    w = dict(zip((rows * n_cols + cols).tolist(), sims.tolist(), strict=True))
    return float(sum(2.0 + w[k] for k in (pairs[0] * n_cols + pairs[1]).tolist()))


def random_problem(rng, n_rows, n_cols, density, ties=False, empty_rows=0, empty_cols=0):
    mask = rng.random((n_rows, n_cols)) < density
    mask[rng.choice(n_rows, empty_rows, replace=False)] = False
    mask[:, rng.choice(n_cols, empty_cols, replace=False)] = False
    rows, cols = np.nonzero(mask)
    if ties:  # a few distinct values: many optima
        sims = rng.choice([-0.5, 0.0, 0.25, 0.5, 1.0], len(rows))
    else:
        sims = rng.uniform(-1.0, 1.0, len(rows))
    shuffle = rng.permutation(len(rows))  # edges in any order
    return rows[shuffle], cols[shuffle], sims[shuffle]


def check_valid(pairs, rows, cols, n_cols):
    pr, pc = pairs
    assert len(set(pr.tolist())) == len(pr) and len(set(pc.tolist())) == len(pc)
    assert np.isin(pr * n_cols + pc, rows * n_cols + cols).all()
    assert np.all(np.diff(pr) > 0)  # sorted by row


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("shape", [(30, 30), (40, 15), (15, 40), (60, 45), (1, 7), (7, 1)], ids=str)
def test_sparse_assignment_equals_the_plain_formulation(seed, shape):
    rng = np.random.default_rng(seed)
    n_rows, n_cols = shape
    rows, cols, sims = random_problem(
        rng,
        n_rows,
        n_cols,
        0.15 + 0.05 * (seed % 4),
        empty_rows=n_rows // 5,
        empty_cols=n_cols // 5,
    )
    got = sparse_assignment(rows, cols, sims, n_rows, n_cols)
    ref = reference(rows, cols, sims, n_rows, n_cols)
    check_valid(got, rows, cols, n_cols)
    # continuous weights: the optimum is unique, so the very same pairs
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
    best = dense_optimum(rows, cols, sims, n_rows, n_cols)
    assert value(got, rows, cols, sims, n_cols) == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("shape", [(25, 25), (35, 12), (12, 35)], ids=str)
def test_sparse_assignment_with_ties_reaches_the_same_optimum(seed, shape):
    rng = np.random.default_rng(100 + seed)
    n_rows, n_cols = shape
    rows, cols, sims = random_problem(
        rng, n_rows, n_cols, 0.2, ties=True, empty_rows=3, empty_cols=3
    )
    got = sparse_assignment(rows, cols, sims, n_rows, n_cols)
    check_valid(got, rows, cols, n_cols)
    ref = reference(rows, cols, sims, n_rows, n_cols)
    assert value(got, rows, cols, sims, n_cols) == pytest.approx(
        value(ref, rows, cols, sims, n_cols), abs=1e-9
    )
    assert value(got, rows, cols, sims, n_cols) == pytest.approx(
        dense_optimum(rows, cols, sims, n_rows, n_cols), abs=1e-9
    )


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("case", ["distinct-tops", "shared-top", "tied-top"])
def test_sparse_assignment_shortcut_when_every_row_has_its_own_best_column(seed, case):
    """Rows whose single heaviest edges go to distinct columns (near-copies of a model) take the
    shortcut; a shared or tied heaviest edge goes to the solver. Same pairs as the plain
    formulation either way."""
    rng = np.random.default_rng(200 + seed)
    n_rows, n_cols = 40, 50
    rows, cols, sims = random_problem(rng, n_rows, n_cols, 0.15, empty_rows=4)
    used = np.unique(rows)
    own = rng.permutation(n_cols)[: len(used)]  # each used row's own best column
    keep = ~np.isin(rows * n_cols + cols, used * n_cols + own)
    rows = np.concatenate([rows[keep], used])
    cols = np.concatenate([cols[keep], own])
    sims = np.concatenate([np.minimum(sims[keep], 0.9), np.full(len(used), 0.95)])
    sims[-len(used) :] += rng.uniform(0, 0.04, len(used))
    if case == "shared-top":  # row used[1]'s best becomes row used[0]'s best column
        k = np.flatnonzero(rows == used[1])[0]
        cols, sims = cols.copy(), sims.copy()
        cols[k], sims[k] = own[0], 0.999
        keep = (rows != used[1]) | (cols != own[0]) | (np.arange(len(rows)) == k)  # distinct
        rows, cols, sims = rows[keep], cols[keep], sims[keep]
    elif case == "tied-top":  # row used[2] has two heaviest edges
        k = np.flatnonzero((rows == used[2]) & (cols != own[2]))[0]
        sims = sims.copy()
        sims[k] = sims[(rows == used[2]) & (cols == own[2])][0]
    got = sparse_assignment(rows, cols, sims, n_rows, n_cols)
    check_valid(got, rows, cols, n_cols)
    ref = reference(rows, cols, sims, n_rows, n_cols)
    assert value(got, rows, cols, sims, n_cols) == pytest.approx(
        dense_optimum(rows, cols, sims, n_rows, n_cols), abs=1e-9
    )
    if case == "distinct-tops":
        assert np.array_equal(got[0], used) and np.array_equal(got[1], own)
    if case != "tied-top":  # a unique optimum: the very same pairs
        assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])


def test_sparse_assignment_edge_cases():
    empty = np.zeros(0, np.int64)
    r, c = sparse_assignment(empty, empty, np.zeros(0), 5, 4)
    assert len(r) == len(c) == 0
    r, c = sparse_assignment(empty, empty, np.zeros(0), 0, 0)
    assert len(r) == len(c) == 0
    # one column wanted by three rows: the best one gets it, the others stay unmatched
    r, c = sparse_assignment(
        np.array([0, 1, 2]), np.array([3, 3, 3]), np.array([0.1, 0.9, 0.5]), 3, 4
    )
    assert (r.tolist(), c.tolist()) == ([1], [3])
    # a second-best partner is worth taking when it frees the first one for another row
    r, c = sparse_assignment(
        np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([0.9, 0.8, 0.85]), 2, 2
    )
    assert (r.tolist(), c.tolist()) == ([0, 1], [1, 0])


def test_match_neurons_sparse_equals_the_plain_formulation():
    rng = np.random.default_rng(7)
    n_a, n_b, bounds = 300, 240, np.array([0, 50, 50, 130, 240])  # one empty B layer
    full = rng.uniform(-1, 1, (n_a, n_b)).astype(np.float32)
    best = np.full((n_a, 4), -np.inf, np.float32)
    arg = np.zeros((n_a, 4), np.int64)
    for j in range(4):
        lo, hi = bounds[j], bounds[j + 1]
        if hi > lo:
            arg[:, j] = lo + full[:, lo:hi].argmax(1)
            best[:, j] = full[np.arange(n_a), arg[:, j]]
    st = BlockStats(best_ab=best, arg_ab=arg, best_ba=np.zeros((n_b, 1), np.float32), full=None)
    ra, rb, ms, method = match_neurons(st, n_b)
    assert method == "sparse-assignment"
    ok = np.isfinite(best)
    rows = np.repeat(np.arange(n_a), 4)[ok.ravel()]
    ref_a, ref_b = reference(rows, arg[ok], best[ok].astype(np.float64), n_a, n_b)
    assert sorted(zip(ra.tolist(), rb.tolist(), strict=True)) == sorted(
        zip(ref_a.tolist(), ref_b.tolist(), strict=True)
    )
    np.testing.assert_array_equal(ms, full[ra, rb])  # each pair's own cosine
    assert np.all(np.diff(ms) <= 0)  # best first


@pytest.mark.parametrize(
    ("chunk", "max_block_floats"), [(3, 7), (3, 40), (3, 1 << 20), (1024, 12 * 37), (1024, 1 << 20)]
)
def test_block_stats_blocks_equal_brute_force_with_ties(chunk, max_block_floats):
    """Blocks of a few A rows or of whole A groups, one B layer empty: the brute-force result,
    ties resolved like ``argmax`` (first maximum)."""
    rng = np.random.default_rng(11)
    a = rng.integers(-1, 2, (37, 4)).astype(np.float32)  # few distinct dot products: ties
    b = rng.integers(-1, 2, (29, 4)).astype(np.float32)
    ga, bb = np.array([0, 5, 5, 23, 37]), np.array([0, 12, 12, 20, 29])
    st = block_stats(a, ga, b, bb, chunk=chunk, keep_full=True, max_block_floats=max_block_floats)
    _assert_brute_force(st, a, ga, b, bb)


def _assert_brute_force(st, a, ga, b, bb) -> None:
    """``st`` holds exactly the reductions of the whole cosine matrix (first maximum on ties;
    -inf for an empty layer or group)."""
    full = a @ b.T
    np.testing.assert_array_equal(st.full, full)
    for j in range(len(bb) - 1):
        lo, hi = bb[j], bb[j + 1]
        if hi == lo:
            assert np.all(st.best_ab[:, j] == -np.inf)
            continue
        np.testing.assert_array_equal(st.best_ab[:, j], full[:, lo:hi].max(1))
        np.testing.assert_array_equal(st.arg_ab[:, j], lo + full[:, lo:hi].argmax(1))
    for g in range(len(ga) - 1):
        lo, hi = ga[g], ga[g + 1]
        expect = full[lo:hi].max(0) if hi > lo else np.full(len(b), -np.inf, np.float32)
        np.testing.assert_array_equal(st.best_ba[:, g], expect)


@pytest.mark.parametrize("max_block_floats", [50, 600, 1 << 20])
def test_block_stats_runs_of_equal_width_layers(max_block_floats):
    """Runs of equal-width B layers (one argmax call each), cut by an empty layer or a width
    change, in one or several column blocks: the brute-force result, ties to the first maximum."""
    rng = np.random.default_rng(13)
    bb = np.array([0, 6, 12, 18, 18, 24, 30, 31, 32, 40, 48, 56, 64])  # widths 6 6 6 0 6 6 1 1 8..
    a = rng.integers(-1, 2, (50, 3)).astype(np.float32)
    b = rng.integers(-1, 2, (64, 3)).astype(np.float32)
    ga = np.array([0, 20, 20, 50])
    st = block_stats(a, ga, b, bb, chunk=16, keep_full=True, max_block_floats=max_block_floats)
    _assert_brute_force(st, a, ga, b, bb)


@pytest.mark.parametrize("n", [1, 300, 1 << 16, (1 << 16) + 1, 1 << 20])
def test_stable_order_is_a_stable_argsort(n):
    keys = np.random.default_rng(n).integers(0, n, 5000)
    np.testing.assert_array_equal(_stable_order(keys, n), np.argsort(keys, kind="stable"))


@pytest.mark.parametrize("groups", [[0, 100, 250, 300], [0, 300]], ids=str)
def test_block_stats_reduces_large_blocks_in_row_slices(groups):
    """Blocks taller than one reduction slice (~2 MiB of rows)."""
    rng = np.random.default_rng(12)
    a = rng.integers(-2, 3, (300, 4)).astype(np.float32)
    b = rng.integers(-2, 3, (3000, 4)).astype(np.float32)
    ga, bb = np.array(groups), np.array([0, 1000, 3000])
    st = block_stats(a, ga, b, bb)
    full = a @ b.T
    for j in range(2):
        lo, hi = bb[j], bb[j + 1]
        np.testing.assert_array_equal(st.best_ab[:, j], full[:, lo:hi].max(1))
        np.testing.assert_array_equal(st.arg_ab[:, j], lo + full[:, lo:hi].argmax(1))
    for g in range(len(ga) - 1):
        np.testing.assert_array_equal(st.best_ba[:, g], full[ga[g] : ga[g + 1]].max(0))
