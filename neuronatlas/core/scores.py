"""Neuron vectors and quality scores from the embeddings of each neuron's top-k images.

All functions are batched over the N neurons of a layer (numpy, float32), never loop over
neurons in Python, and accept ``topk_emb`` of shape ``(N, k, d)``. Inputs are re-normalised
row-wise, so they need not be unit vectors; zero rows stay zero and never produce NaN.

- ``neuron_vectors``: the (activation-weighted) mean direction -> the neuron's vector;
- ``clarity``: mean pairwise cosine among the k images (1 = all the same picture);
- ``polysemanticity``: 1 - cos between the two centres of a 2-means split of the k images
  (0 = one concept, up to 2 = two opposite concepts);
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


def polysemanticity(topk_emb: np.ndarray, iters: int = 20, seed: int = 0) -> np.ndarray:
    """``(N, k, d)`` -> ``(N,)``: spherical 2-means on each neuron's k embeddings, all neurons
    at once; score = 1 - cos(centre_a, centre_b).

    Deterministic farthest-point init: centre a = embedding ``seed % k`` (0 = the
    top-activating image), centre b = the embedding least similar to it. Ties go to a; a
    cluster that empties keeps its previous centre. Identical embeddings give 0.
    """
    e = _check_topk(topk_emb)
    n, k, _ = e.shape
    if k == 1 or n == 0:
        return np.zeros(n, np.float32)
    rows = np.arange(n)
    ca = e[:, seed % k]
    far = np.argmin(np.einsum("nkd,nd->nk", e, ca), axis=1)
    cb = e[rows, far]
    assign = None
    for _ in range(max(1, iters)):
        sim_a = np.einsum("nkd,nd->nk", e, ca)
        sim_b = np.einsum("nkd,nd->nk", e, cb)
        new = sim_b > sim_a  # True: cluster b
        if assign is not None and np.array_equal(new, assign):
            break
        assign = new
        ca = _update_centre(e, ~assign, ca)
        cb = _update_centre(e, assign, cb)
    cos: np.ndarray = np.einsum("nd,nd->n", ca, cb)
    return np.clip(1.0 - cos, 0.0, 2.0).astype(np.float32)


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
