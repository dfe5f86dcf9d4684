"""Neuron vectors and quality scores from the embeddings of each neuron's top-k images.

All functions are batched over the N neurons of a layer (numpy, float32), never loop over
neurons in Python, and accept ``topk_emb`` of shape ``(N, k, d)``. Inputs are re-normalised
row-wise, so they need not be unit vectors; zero rows stay zero and never produce NaN.

- ``neuron_vectors``: the (activation-weighted) mean direction -> the neuron's vector;
- ``clarity``: mean pairwise cosine among the k images (1 = all the same picture);
- ``polysemanticity``: how *mixed* the k images are: the distance of the two centres of a
  2-means split weighted by the share of the smaller cluster, ``2 m (1 - cos(c_a, c_b))``
  with ``m <= 1/2`` the minority share (0 = one concept; one outlier among 20 images of a
  second, orthogonal concept = 0.1; an even split of two orthogonal concepts = 1; up to 2);
- ``polysemanticity_centres``: SemanticLens' definition, ``1 - cos(c_a, c_b)`` alone. It
  saturates on a single outlier: one off-concept image among 20 scores as high as a 10/10
  split, so it ranks neurons by "has an outlier" rather than by how mixed they are (kept, and
  stored as ``polysemanticity_sl``, for comparison);
- ``redundancy``: max cosine of a neuron's vector to any other neuron of the same set.
"""

from __future__ import annotations

import numpy as np

from neuronatlas.core.errors import InvalidArgument

_EPS = 1e-12


def _unit(x: np.ndarray) -> np.ndarray:
    unit: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)
    return unit


def _check_topk(topk_emb: np.ndarray) -> np.ndarray:
    e = np.asarray(topk_emb, dtype=np.float32)
    if e.ndim != 3 or e.shape[1] < 1 or e.shape[2] < 1:
        raise InvalidArgument(
            f"top-k embeddings have shape {e.shape}, expected (N, k>=1, d)", field="topk_emb"
        )
    if not np.isfinite(e).all():
        raise InvalidArgument("top-k embeddings contain NaN or infinite values", field="topk_emb")
    return _unit(e)


def neuron_vectors(topk_emb: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``(N, k, d)`` -> ``(N, d)`` unit vectors: the mean of the normalised embeddings, weighted
    by ``weights`` ``(N, k)`` when given (negative weights count as 0; a row of zero weights
    counts as uniform). If the mean cancels out, the top-1 embedding is used."""
    e = _check_topk(topk_emb)
    n, k, _ = e.shape
    if weights is None:
        w = np.ones((n, k), np.float32)
    else:
        w = np.asarray(weights, dtype=np.float32)
        if w.shape != (n, k) or not np.isfinite(w).all():
            raise InvalidArgument(
                f"weights have shape {w.shape}, expected finite ({n}, {k})", field="weights"
            )
        w = np.clip(w, 0.0, None)
        w[w.sum(axis=1) <= 0] = 1.0
    mean = np.einsum("nk,nkd->nd", w, e) / w.sum(axis=1, keepdims=True)
    norms = np.linalg.norm(mean, axis=1)
    degenerate = norms < 1e-6
    mean[degenerate] = e[degenerate, 0]
    return _unit(mean).astype(np.float32, copy=False)


def clarity(topk_emb: np.ndarray) -> np.ndarray:
    """``(N, k, d)`` -> ``(N,)`` mean cosine over the k(k-1) ordered pairs (diagonal excluded).
    Computed as ``(|sum e|^2 - sum |e|^2) / (k (k-1))``; k = 1 gives 1."""
    e = _check_topk(topk_emb)
    n, k, _ = e.shape
    if k == 1:
        return np.ones(n, np.float32)
    total: np.ndarray = np.einsum("nd,nd->n", e.sum(axis=1), e.sum(axis=1))
    diag: np.ndarray = np.einsum("nkd,nkd->n", e, e)
    mean_cos: np.ndarray = np.clip((total - diag) / (k * (k - 1)), -1.0, 1.0)
    return mean_cos.astype(np.float32)


def two_means(
    topk_emb: np.ndarray, iters: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spherical 2-means on each neuron's k embeddings, all neurons at once.

    Returns ``(centre_a, centre_b, share_b)``: ``(N, d)`` unit centres and ``(N,)`` the share
    of the k images assigned to b. Deterministic farthest-point init: centre a = embedding
    ``seed % k`` (0 = the top-activating image), centre b = the embedding least similar to it.
    Ties go to a; a cluster that empties keeps its previous centre. Identical embeddings give
    ``centre_a == centre_b`` and ``share_b == 0``.
    """
    e = _check_topk(topk_emb)
    n, k, _ = e.shape
    if k == 1 or n == 0:
        return e[:, 0], e[:, 0], np.zeros(n, np.float32)
    rows = np.arange(n)
    ca = e[:, seed % k]
    far = np.argmin(np.einsum("nkd,nd->nk", e, ca), axis=1)
    cb = e[rows, far]
    assign = np.zeros((n, k), bool)
    for it in range(max(1, iters)):
        sim_a = np.einsum("nkd,nd->nk", e, ca)
        sim_b = np.einsum("nkd,nd->nk", e, cb)
        new = sim_b > sim_a  # True: cluster b
        if it > 0 and np.array_equal(new, assign):
            break
        assign = new
        ca = _update_centre(e, ~assign, ca)
        cb = _update_centre(e, assign, cb)
    share_b: np.ndarray = assign.mean(axis=1).astype(np.float32)
    return ca, cb, share_b


def polysemanticity_centres(topk_emb: np.ndarray, iters: int = 20, seed: int = 0) -> np.ndarray:
    """``(N, k, d)`` -> ``(N,)``: SemanticLens' polysemanticity, ``1 - cos(centre_a, centre_b)``
    of :func:`two_means` (0 = one concept, up to 2). Blind to the cluster sizes: one outlier
    image scores like an even split of two concepts."""
    return polysemanticity_both(topk_emb, iters, seed)[1]


def polysemanticity(topk_emb: np.ndarray, iters: int = 20, seed: int = 0) -> np.ndarray:
    """``(N, k, d)`` -> ``(N,)``: how mixed a neuron's top-k images are, in [0, 2].

    ``2 m (1 - cos(c_a, c_b))`` over the :func:`two_means` split, ``m = min(p, 1 - p)`` the
    share of the images in the smaller cluster. Why this form: ``m`` is the misclassification
    impurity of the split (the share of the top-k that is *not* the main concept), so the score
    reads as "how much of the top-k is off-concept, times how far off": it is proportional to
    the minority share (one outlier among 20 scores a tenth of a 10/10 split), 0 for identical
    embeddings, near 0 for one concept plus noise (2-means then splits the noise, whose
    centres are close together), and highest at an even split of two distant concepts, where
    it equals SemanticLens' ``1 - cos``. A linear weight rather than the Gini ``4 p (1 - p)``
    (the between-cluster dispersion): Gini is flat near an even split, so there the noise in
    the centre distance decides the ranking; a constant slope keeps the score monotone in the
    share on noisy mixtures (``tests/test_scores.py``). See :func:`polysemanticity_centres`
    for the unweighted distance, which saturates; ``bench/bench_polysemanticity.py`` compares
    both against class impurity on real data.
    """
    return polysemanticity_both(topk_emb, iters, seed)[0]


def polysemanticity_both(
    topk_emb: np.ndarray, iters: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(polysemanticity, polysemanticity_centres)`` from one 2-means run (k = 1: zeros)."""
    ca, cb, share_b = two_means(topk_emb, iters, seed)
    if ca.shape[0] == 0 or np.shape(topk_emb)[1] == 1:
        zeros = np.zeros(ca.shape[0], np.float32)
        return zeros, zeros.copy()
    dist = np.clip(1.0 - np.einsum("nd,nd->n", ca, cb), 0.0, 2.0)
    minority = np.minimum(share_b, 1.0 - share_b)
    mixed = np.clip(2.0 * minority * dist, 0.0, 2.0)
    return mixed.astype(np.float32), dist.astype(np.float32)


def _update_centre(e: np.ndarray, members: np.ndarray, previous: np.ndarray) -> np.ndarray:
    total = np.einsum("nk,nkd->nd", members.astype(np.float32), e)
    norms = np.linalg.norm(total, axis=1)
    keep = (members.sum(axis=1) == 0) | (norms < 1e-6)
    centre: np.ndarray = total / np.maximum(norms, _EPS)[:, None]
    centre[keep] = previous[keep]
    return centre


def redundancy(vectors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``(N, d)`` -> ``(N,)`` max cosine of each vector to any *other* vector of the set,
    computed ``chunk`` rows at a time (memory O(chunk * N)). A set of one gives 0."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise InvalidArgument(f"vectors have shape {v.shape}, expected (N, d)", field="vectors")
    if not np.isfinite(v).all():
        raise InvalidArgument("vectors contain NaN or infinite values", field="vectors")
    if chunk < 1:
        raise InvalidArgument(f"chunk must be >= 1, not {chunk}", field="chunk")
    n = v.shape[0]
    out = np.zeros(n, np.float32)
    if n < 2:
        return out
    v = _unit(v)
    for start in range(0, n, chunk):
        block = v[start : start + chunk] @ v.T  # (c, N)
        c = block.shape[0]
        block[np.arange(c), start + np.arange(c)] = -np.inf
        out[start : start + c] = block.max(axis=1)
    return np.clip(out, -1.0, 1.0)
