"""Quality-score maths on constructed cases, and batched results against per-neuron references."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import unit

from neuronatlas.core.errors import InvalidArgument
from neuronatlas.core.scores import (
    clarity,
    neuron_vectors,
    polysemanticity,
    polysemanticity_both,
    polysemanticity_centres,
    redundancy,
    two_means,
)


def random_topk(n=40, k=12, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return unit(rng.normal(size=(n, k, d))).astype(np.float32)


# -- straightforward per-neuron references ------------------------------------------------
def ref_clarity(emb):
    k = emb.shape[0]
    if k == 1:
        return 1.0
    g = unit(emb) @ unit(emb).T
    return float((g.sum() - np.trace(g)) / (k * (k - 1)))


def ref_two_means(emb, iters=20, start=0, weighted=False):
    e = unit(emb)
    a = e[start]
    b = e[int(np.argmin(e @ a))]
    prev = None
    for _ in range(iters):
        to_b = np.array([float(x @ b) > float(x @ a) for x in e])
        if prev is not None and (to_b == prev).all():
            break
        prev = to_b
        if (~to_b).any() and np.linalg.norm(e[~to_b].sum(0)) > 1e-6:
            a = unit(e[~to_b].sum(0))
        if to_b.any() and np.linalg.norm(e[to_b].sum(0)) > 1e-6:
            b = unit(e[to_b].sum(0))
    p = float(np.mean(prev)) if prev is not None else 0.0
    return (2 * min(p, 1 - p) if weighted else 1.0) * (1.0 - float(a @ b))


def ref_redundancy(v):
    v = unit(v)
    out = []
    for i in range(len(v)):
        others = [float(v[i] @ v[j]) for j in range(len(v)) if j != i]
        out.append(max(others) if others else 0.0)
    return np.array(out)


# -- neuron_vectors -----------------------------------------------------------------------
def test_neuron_vectors_mean_and_weights():
    emb = random_topk(5, 4, 8)
    v = neuron_vectors(emb)
    assert v.shape == (5, 8) and v.dtype == np.float32
    np.testing.assert_allclose(v, unit(emb.mean(axis=1)), atol=1e-5)
    w = np.array([[3.0, 1.0, 0.0, -2.0]] * 5, np.float32)  # negative weight counts as zero
    expected = unit(3 * emb[:, 0] + emb[:, 1])
    np.testing.assert_allclose(neuron_vectors(emb, w), expected, atol=1e-5)


def test_neuron_vectors_degenerate_cases_have_no_nan():
    e = unit(np.eye(4)[:2])  # two orthogonal directions
    opposite = np.stack([e[0], -e[0]])[None]  # mean cancels -> falls back to the top-1 image
    v = neuron_vectors(opposite)
    np.testing.assert_allclose(v[0], e[0], atol=1e-6)
    zero_weights = neuron_vectors(e[None], np.zeros((1, 2)))  # all-zero weights -> uniform
    np.testing.assert_allclose(zero_weights[0], unit(e.sum(0)), atol=1e-6)
    assert np.isfinite(neuron_vectors(np.zeros((2, 3, 4)))).all()
    with pytest.raises(InvalidArgument):
        neuron_vectors(np.zeros((2, 3)))
    with pytest.raises(InvalidArgument):
        neuron_vectors(random_topk(2, 3, 4), np.ones((2, 4)))


# -- clarity ------------------------------------------------------------------------------
def test_clarity_identical_is_one_and_matches_reference():
    same = np.repeat(unit(np.arange(1, 9, dtype=float))[None, None], 6, axis=1)
    np.testing.assert_allclose(clarity(np.repeat(same, 3, axis=0)), 1.0, atol=1e-5)
    emb = random_topk(30, 10, 16)
    c = clarity(emb)
    assert c.shape == (30,) and c.dtype == np.float32
    np.testing.assert_allclose(c, [ref_clarity(x) for x in emb], atol=1e-5)
    opposite = np.stack([np.eye(3)[0], -np.eye(3)[0]])[None]
    np.testing.assert_allclose(clarity(opposite), [-1.0], atol=1e-6)


def test_clarity_k1_and_zero_rows():
    assert clarity(random_topk(3, 1, 5)).tolist() == [1.0, 1.0, 1.0]
    assert np.isfinite(clarity(np.zeros((2, 4, 3)))).all()


# -- polysemanticity ----------------------------------------------------------------------
def test_polysemanticity_identical_is_zero():
    same = np.repeat(unit(np.arange(1, 9, dtype=float))[None, None], 10, axis=1)
    np.testing.assert_allclose(polysemanticity(same), [0.0], atol=1e-6)


def test_polysemanticity_separates_one_from_two_concepts():
    rng = np.random.default_rng(1)
    d = 32
    a, b = np.eye(d)[0], np.eye(d)[1]
    tight = unit(a + 0.05 * rng.normal(size=(10, d)))
    opposite = unit(
        np.concatenate([a + 0.05 * rng.normal(size=(5, d)), -a + 0.05 * rng.normal(size=(5, d))])
    )
    orthogonal = unit(
        np.concatenate([a + 0.05 * rng.normal(size=(5, d)), b + 0.05 * rng.normal(size=(5, d))])
    )
    p = polysemanticity(np.stack([tight, opposite, orthogonal]))
    assert p[0] < 0.1
    assert p[1] > 1.9  # two tight opposite clusters
    assert 0.85 < p[2] < 1.15  # two orthogonal concepts
    assert p[0] < p[2] < p[1]


def test_polysemanticity_batched_equals_reference_and_is_deterministic():
    emb = random_topk(25, 12, 8, seed=3)
    p = polysemanticity_centres(emb)
    np.testing.assert_allclose(p, [ref_two_means(x) for x in emb], atol=1e-4)
    np.testing.assert_array_equal(p, polysemanticity_centres(emb))
    np.testing.assert_allclose(
        polysemanticity_centres(emb, seed=5), [ref_two_means(x, start=5) for x in emb], atol=1e-4
    )
    mixed = polysemanticity(emb)
    np.testing.assert_allclose(mixed, [ref_two_means(x, weighted=True) for x in emb], atol=1e-4)
    both = polysemanticity_both(emb)
    np.testing.assert_array_equal(both[0], mixed)
    np.testing.assert_array_equal(both[1], p)


def test_polysemanticity_small_k():
    for fn in (polysemanticity, polysemanticity_centres):
        assert fn(random_topk(4, 1, 6)).tolist() == [0.0] * 4
        emb = random_topk(4, 2, 6)  # a 1/1 split: both definitions are 1 - cos
        np.testing.assert_allclose(
            fn(emb), 1 - np.einsum("nd,nd->n", emb[:, 0], emb[:, 1]), atol=1e-5
        )
    assert polysemanticity(np.zeros((0, 5, 3))).shape == (0,)


# -- polysemanticity on mixtures with known proportions ----------------------------------------
def mixtures(k: int, d: int = 64, sigma: float = 0.03, seed: int = 0) -> np.ndarray:
    """``(k // 2 + 1, k, d)``: neuron m holds k - m images of concept A and m of concept B
    (orthogonal unit directions), each plus Gaussian noise of ``sigma`` per dimension."""
    rng = np.random.default_rng(seed)
    a, b = np.eye(d)[0], np.eye(d)[1]
    out = []
    for m in range(k // 2 + 1):
        x = np.concatenate(
            [a + sigma * rng.normal(size=(k - m, d)), b + sigma * rng.normal(size=(m, d))]
        )
        out.append(x[rng.permutation(k)])  # order must not matter
    return unit(np.stack(out)).astype(np.float32)


@pytest.mark.parametrize("k", [20, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_polysemanticity_grows_with_the_minority_share(k: int, seed: int):
    mixed, centres = polysemanticity_both(mixtures(k, seed=seed))
    assert (np.diff(mixed) >= -1e-6).all(), mixed  # monotone in m/k, m = 0 .. k/2
    assert mixed[0] < 0.05  # one concept plus noise: ~0
    assert mixed.argmax() == k // 2 or mixed[k // 2] == pytest.approx(mixed.max(), abs=1e-3)
    assert mixed[k // 2] == pytest.approx(centres[k // 2], abs=1e-6)  # even split: same as SL
    assert 0.9 < mixed[k // 2] < 1.1  # orthogonal concepts
    # the share is what moves it: m images of B among k score 2 m / k times the distance
    np.testing.assert_allclose(mixed[1:], 2 * np.arange(1, k // 2 + 1) / k * centres[1:], rtol=1e-4)
    assert mixed[1] < 0.15 * mixed[k // 2]


@pytest.mark.parametrize("k", [20, 40])
def test_semanticlens_definition_saturates_on_one_outlier(k: int):
    mixed, centres = polysemanticity_both(mixtures(k))
    # SemanticLens: one off-concept image scores (about) as high as an even split ...
    assert centres[1] == pytest.approx(centres[k // 2], abs=0.1)
    assert centres[1] > 0.9
    # ... while the mixing score tells them apart
    assert mixed[1] < 0.15 * mixed[k // 2]
    _, _, share = two_means(mixtures(k))
    minority = np.minimum(share, 1 - share)[1:]  # m = 0: 2-means splits the noise instead
    np.testing.assert_allclose(minority, np.arange(1, k // 2 + 1) / k, atol=1e-6)


def test_polysemanticity_pure_and_identical_sets():
    same = np.repeat(unit(np.arange(1, 9, dtype=float))[None, None], 20, axis=1)
    assert polysemanticity(same).tolist() == [0.0]
    assert polysemanticity_centres(same).tolist() == [0.0]
    assert two_means(same)[2].tolist() == [0.0]


# -- redundancy ---------------------------------------------------------------------------
def test_redundancy_duplicate_neuron_is_one():
    rng = np.random.default_rng(2)
    v = unit(rng.normal(size=(6, 10)))
    v[4] = v[1] * 3.0  # same direction, different scale
    r = redundancy(v)
    assert r[1] == pytest.approx(1.0, abs=1e-6) and r[4] == pytest.approx(1.0, abs=1e-6)
    assert (r[[0, 2, 3, 5]] < 0.999).all()


def test_redundancy_chunked_equals_reference():
    v = unit(np.random.default_rng(4).normal(size=(37, 9)))
    expected = ref_redundancy(v)
    for chunk in (1, 5, 37, 4096):
        np.testing.assert_allclose(redundancy(v, chunk=chunk), expected, atol=1e-5)


def test_redundancy_single_and_invalid():
    assert redundancy(np.ones((1, 4))).tolist() == [0.0]
    with pytest.raises(InvalidArgument):
        redundancy(np.full((3, 2), np.nan))
    with pytest.raises(InvalidArgument):
        redundancy(np.ones((3, 2)), chunk=0)
