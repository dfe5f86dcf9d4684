"""Model-to-model comparison, in two views, every score beside its noise floor.

**Semantic view** (stored CLIP-space neuron vectors): cosine similarities between the neurons of
A and B, computed one block of A rows against a few B layers at a time and reduced on the fly
(memory: one ~8 MiB block); the layer x layer matrix of mean best-match similarity; the
relative-depth alignment (for each layer of A, the depth in B of its best-matching layer) with its
Spearman rho; a one-to-one neuron matching; coverage (share of neurons with a match >= tau on the
other side); concepts shared by matched neurons and unique to unmatched ones.

Noise floor of the semantic view: the same statistics with one side's vectors randomly rotated
about the common mean direction (each vector keeps its cosine to the mean, i.e. how "typical" it
is, but loses its content). Small problems use every neuron; large ones a layer-stratified
sample of each side against all of the other model (the matching floor is then an upper bound,
since sampled neurons compete for partners less).

**Activation view** (activation sketches saved at index time, ``core.sketches``): linear CKA layer
x layer on the same probe samples, and its depth alignment. Noise floor: CKA with B's samples
permuted.

Results are cached per (model pair, index generations, options) under ``home/cache/compare/``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from neuronatlas.core.atomic import atomic_save_npz
from neuronatlas.core.config import Home, HomeLike
from neuronatlas.core.errors import FailedPrecondition, InvalidArgument, NotFound, NotIndexed
from neuronatlas.core.records import NEURON_KIND, ModelEntry, ModelStatus
from neuronatlas.core.sketches import load_sketch
from neuronatlas.core.store.base import KnowledgeStore

COMPARE_VERSION = 1
DENSE_LIMIT = 4_000_000  # N_A * N_B up to which the exact Hungarian runs on the full matrix
MIN_BLOCK_ROWS = 256  # block_stats: A rows per BLAS call even when one B layer is very wide


# ---------------------------------------------------------------------------------------------
# result types (plain dataclasses of numbers, lists and numpy arrays)


@dataclass
class Score:
    """A score and the same score under the noise-floor baseline."""

    value: float
    baseline: float

    @property
    def margin(self) -> float:
        return self.value - self.baseline


@dataclass
class Alignment:
    """For each layer of one model, the relative depth of its best-matching layer in the other."""

    depth: np.ndarray  # (L,) relative depth of each layer of the "from" model
    matched_depth: np.ndarray  # (L,) relative depth of its best layer in the "to" model
    rho: Score  # Spearman rho(depth, matched_depth); baseline: rho on the noise-floor matrix
    p_value: float  # share of random depth assignments with rho >= the observed one


@dataclass
class ModelSide:
    """One compared model: its layers and a per-neuron table (rows sorted by layer, unit)."""

    model_id: str
    generation: int
    layers: list[str]
    depths: np.ndarray  # (L,)
    sizes: np.ndarray  # (L,) neurons per layer (semantic view)
    layer_of: np.ndarray  # (N,) layer position of each neuron
    units: np.ndarray  # (N,)
    labels: list[str]  # (N,) top label ("" if unlabelled)


@dataclass
class ConceptCount:
    label: str
    count_a: int
    count_b: int


@dataclass
class MatchedPair:
    a_layer: str
    a_unit: int
    b_layer: str
    b_unit: int
    similarity: float
    a_label: str
    b_label: str


@dataclass
class SemanticView:
    layer_similarity: np.ndarray  # (L_A, L_B) mean best-match cosine
    layer_similarity_baseline: np.ndarray  # (L_A, L_B) the same under the rotation null
    alignment: Alignment  # A -> B
    alignment_b: Alignment  # B -> A
    best_match: Score  # mean over A's neurons of the best cosine in B
    matching: Score  # mean cosine of the one-to-one matched pairs
    coverage_a: Score  # share of A's neurons with a match >= tau in B
    coverage_b: Score
    tau: float
    matching_method: str  # "hungarian" (exact, full matrix) or "sparse-assignment"
    null_exact: bool  # floor computed on every neuron (else on a layer-stratified sample; the
    #                   matching floor is then an upper bound: sampled rows compete less)
    match_a: np.ndarray  # (P,) rows of A, pairs sorted by similarity, best first
    match_b: np.ndarray  # (P,) rows of B
    match_sim: np.ndarray  # (P,)
    shared: list[ConceptCount] = field(default_factory=list)
    unique_a: list[ConceptCount] = field(default_factory=list)
    unique_b: list[ConceptCount] = field(default_factory=list)


@dataclass
class ActivationView:
    cka: np.ndarray  # (L_A, L_B) linear CKA
    cka_baseline: np.ndarray  # (L_A, L_B) CKA with B's samples permuted
    layers_a: list[str]
    layers_b: list[str]
    alignment: Alignment
    alignment_b: Alignment
    n_samples: int


@dataclass
class Comparison:
    a: ModelSide
    b: ModelSide
    semantic: SemanticView
    activation: ActivationView | None
    timings: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    # one page of matched pairs (best first), see compare_models(offset, limit)
    pairs: list[MatchedPair] = field(default_factory=list)
    pairs_total: int = 0
    kind: str = NEURON_KIND  # the record kind compared (neurons, or one component kind)

    def page(self, offset: int = 0, limit: int = 50) -> list[MatchedPair]:
        """Matched pairs ``offset .. offset+limit`` (best first)."""
        if offset < 0 or limit < 0:
            raise InvalidArgument("offset and limit must be >= 0", field="offset")
        s = self.semantic
        out = []
        for k in range(offset, min(offset + limit, len(s.match_sim))):
            ia, ib = int(s.match_a[k]), int(s.match_b[k])
            out.append(
                MatchedPair(
                    a_layer=self.a.layers[self.a.layer_of[ia]],
                    a_unit=int(self.a.units[ia]),
                    b_layer=self.b.layers[self.b.layer_of[ib]],
                    b_unit=int(self.b.units[ib]),
                    similarity=float(s.match_sim[k]),
                    a_label=self.a.labels[ia],
                    b_label=self.b.labels[ib],
                )
            )
        return out


# ---------------------------------------------------------------------------------------------
# loading


@dataclass
class ModelVectors:
    entry: ModelEntry
    side: ModelSide
    vectors: np.ndarray  # (N, d) float32, rows sorted by (layer, unit)
    bounds: np.ndarray  # (L+1,) row offsets of each layer


def indexed_entry(store: KnowledgeStore, model_id: str) -> ModelEntry:
    """The catalogue entry of an indexed model (NotFound / NotIndexed otherwise)."""
    entry = store.get_model(model_id)
    if entry.status != ModelStatus.INDEXED:
        raise NotIndexed(
            f"model {model_id!r} is {entry.status.value}, not indexed"
            + (f" ({entry.status_reason})" if entry.status_reason else "")
        )
    return entry


def load_model_vectors(
    store: KnowledgeStore, model_id: str, layers: list[str] | None = None, kind: str = NEURON_KIND
) -> ModelVectors:
    """Read a model's live neuron vectors (or its components of ``kind``), grouped by layer in
    depth order."""
    entry = indexed_entry(store, model_id)
    by_layer: dict[str, list[tuple[int, np.ndarray, str]]] = {}
    meta: dict[str, tuple[int, float]] = {}
    for rec in store.scroll_neurons(
        model_id, generation=entry.generation, with_vectors=True, kinds=[kind]
    ):
        if layers is not None and rec.layer not in layers:
            continue
        top = rec.top_label
        by_layer.setdefault(rec.layer, []).append((rec.unit, rec.vector, top.label if top else ""))
        meta[rec.layer] = (rec.layer_index, rec.depth)
    if not by_layer:
        what = f" in layers {layers}" if layers is not None else ""
        records = "neurons" if kind == NEURON_KIND else f"{kind} components"
        raise NotIndexed(f"model {model_id!r} has no stored {records}{what}")
    names = sorted(by_layer, key=lambda n: (meta[n][0], n))
    vecs, layer_of, units, labels, sizes = [], [], [], [], []
    for li, name in enumerate(names):
        rows = sorted(by_layer[name], key=lambda r: r[0])
        sizes.append(len(rows))
        for unit, vec, lab in rows:
            vecs.append(vec)
            layer_of.append(li)
            units.append(unit)
            labels.append(lab)
    v = np.asarray(np.stack(vecs), dtype=np.float32)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    side = ModelSide(
        model_id=model_id,
        generation=entry.generation,
        layers=names,
        depths=np.array([meta[n][1] for n in names], dtype=np.float64),
        sizes=np.array(sizes, dtype=np.int64),
        layer_of=np.array(layer_of, dtype=np.int64),
        units=np.array(units, dtype=np.int64),
        labels=labels,
    )
    return ModelVectors(
        entry=entry, side=side, vectors=v, bounds=np.concatenate([[0], np.cumsum(sizes)])
    )


# ---------------------------------------------------------------------------------------------
# semantic view maths


@dataclass
class BlockStats:
    """What one pass over all (A row, B row) cosines keeps."""

    best_ab: np.ndarray  # (n_rows, L_B) best cosine of each A row within each B layer
    arg_ab: np.ndarray  # (n_rows, L_B) the B row achieving it
    best_ba: np.ndarray  # (N_B, L_rows) best cosine of each B row within each group of A rows
    full: np.ndarray | None  # (n_rows, N_B) when asked for (small problems only)


def _column_blocks(bounds: np.ndarray, max_cols: int) -> list[list[tuple[int, int, int, int]]]:
    """B's layers (segments ``bounds[j]:bounds[j+1]``) in consecutive column blocks of at most
    ``max_cols`` columns (a wider layer: a block of its own). Each block is a list of runs of
    consecutive equal-width layers (first layer, layers, first column, width): a run is one
    (rows, layers, width) view of the block, whose per-layer argmax is one numpy call."""
    blocks: list[list[tuple[int, int, int, int]]] = []
    cur: list[tuple[int, int, int, int]] = []
    used = 0
    for j, w in enumerate(np.diff(bounds).tolist()):
        if w == 0:
            continue
        if cur and used + w > max_cols:
            blocks.append(cur)
            cur, used = [], 0
        if cur and cur[-1][0] + cur[-1][1] == j and cur[-1][3] == w:
            cur[-1] = (cur[-1][0], cur[-1][1] + 1, cur[-1][2], w)
        else:
            cur.append((j, 1, int(bounds[j]), int(w)))
        used += w
    if cur:
        blocks.append(cur)
    return blocks


def block_stats(
    va: np.ndarray,
    groups_a: np.ndarray,
    vb: np.ndarray,
    bounds_b: np.ndarray,
    chunk: int = 1024,
    keep_full: bool = False,
    max_block_floats: int = 2 << 20,
) -> BlockStats:
    """Reduce the cosine matrix ``va @ vb.T`` block by block (never all of it at once).

    ``groups_a`` (L_rows+1,) are row offsets of A's groups (layers); ``bounds_b`` B's layer offsets.
    Each block (up to ``chunk`` A rows of one group x whole B layers, about
    ``max_block_floats`` floats = 8 MiB; more for a B layer too wide for ``MIN_BLOCK_ROWS``
    rows in that, as BLAS slows down on fewer rows) is one float32 BLAS matmul
    (multi-threaded) into one reused buffer, reduced right away by the calling thread ~1 MiB of
    rows at a time: per run of consecutive equal-width B layers one argmax over a
    (rows, layers, width) view and a gather of the maxima it points at, then the max per B row.
    No Python work per row or per layer of a run.

    Why these shapes: the reductions are bound by memory traffic, and an 8 MiB block is still
    in the last-level cache when they read it (a 1000 x 10000 block, 40 MiB, came back from
    RAM: 3.4 ms to reduce, ~2 ms as five 1000 x 2000 blocks); BLAS runs as fast on 1000 x 2000
    blocks as on 1000 x 10000 ones. And sequential on purpose: the matmul keeps every core
    busy and OpenBLAS splits it statically, so reductions overlapped with the next block in a
    helper thread (or split over two threads) only slowed BLAS down (10k x 10k x 512 on 2
    cores: 0.46-0.47 s that way, 0.43-0.45 s now, the bare matmul 0.40-0.42 s).
    """
    va = np.ascontiguousarray(va, dtype=np.float32)
    vb = np.ascontiguousarray(vb, dtype=np.float32)
    n_a, n_b, lb, lg = va.shape[0], vb.shape[0], len(bounds_b) - 1, len(groups_a) - 1
    best_ab = np.full((n_a, lb), -np.inf, np.float32)
    arg_ab = np.zeros((n_a, lb), np.int64)
    best_ba_t = np.full((lg, n_b), -np.inf, np.float32)  # one contiguous row per group of A
    full = np.empty((n_a, n_b), np.float32) if keep_full else None
    rows = max(1, min(chunk, n_a))
    col_blocks = []  # (first column, width, A rows per block, runs with each layer's first column)
    for runs in _column_blocks(bounds_b, max(1, max_block_floats // rows)):
        c0, c1 = runs[0][2], runs[-1][2] + runs[-1][1] * runs[-1][3]
        per = min(rows, max(MIN_BLOCK_ROWS, max_block_floats // (c1 - c0)))
        starts = [lo + w * np.arange(k) for _, k, lo, w in runs]
        col_blocks.append((c0, c1 - c0, per, list(zip(runs, starts, strict=True))))
    buf = np.empty(max((per * w for _, w, per, _ in col_blocks), default=0), np.float32)
    for g in range(lg):
        lo_g, hi_g = int(groups_a[g]), int(groups_a[g + 1])
        for c0, w, per, runs_starts in col_blocks:
            best_g = best_ba_t[g, c0 : c0 + w]
            step = max(16, (1 << 18) // w)  # rows per ~1 MiB
            for r0 in range(lo_g, hi_g, per):
                r1 = min(r0 + per, hi_g)
                s = buf[: (r1 - r0) * w].reshape(r1 - r0, w)
                np.matmul(va[r0:r1], vb[c0 : c0 + w].T, out=s)
                if full is not None:
                    full[r0:r1, c0 : c0 + w] = s
                for q0 in range(r0, r1, step):
                    q1 = min(q0 + step, r1)
                    x = s[q0 - r0 : q1 - r0]
                    for (j, k, lo, wj), first in runs_starts:
                        xr = x[:, lo - c0 : lo - c0 + k * wj].reshape(q1 - q0, k, wj)
                        am = xr.argmax(axis=2)
                        top = np.take_along_axis(xr, am[:, :, None], axis=2)
                        best_ab[q0:q1, j : j + k] = top[:, :, 0]
                        arg_ab[q0:q1, j : j + k] = am + first
                    np.maximum(best_g, x.max(axis=0), out=best_g)
    return BlockStats(best_ab, arg_ab, np.ascontiguousarray(best_ba_t.T), full)


def segment_mean(x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Mean of the rows of ``x`` within each segment ``bounds[i]:bounds[i+1]``."""
    sums = np.add.reduceat(x.astype(np.float64), bounds[:-1], axis=0)
    mean: np.ndarray = sums / np.diff(bounds)[:, None]
    return mean


def layer_similarity(
    st_ab: np.ndarray, bounds_a: np.ndarray, st_ba: np.ndarray, bounds_b: np.ndarray
) -> np.ndarray:
    """(L_A, L_B): mean best-match cosine, averaged over both directions."""
    both: np.ndarray = segment_mean(st_ab, bounds_a) + segment_mean(st_ba, bounds_b).T
    return 0.5 * both


def _rng(seed: int, stream: int) -> np.random.Generator:
    """Noise-floor randomness: a stream of its own per use, never equal to default_rng(seed)."""
    return np.random.default_rng([0x4E41, stream, seed])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(1, len(x) + 1)
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ranks)
    return sums[inv] / counts[inv]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); 0.0 when either side is constant."""
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def _permutation_p(x: np.ndarray, y: np.ndarray, rho: float, n_perm: int, seed: int) -> float:
    """Share of random reassignments of ``y`` to ``x`` whose Spearman rho reaches ``rho``."""
    rx, ry = _ranks(x), _ranks(y)
    if len(x) < 3 or rx.std() == 0 or ry.std() == 0:
        return 1.0
    rng = _rng(seed, 1)
    perms = rng.permuted(np.tile(ry, (n_perm, 1)), axis=1)
    zx = (rx - rx.mean()) / rx.std()
    zp = (perms - ry.mean()) / ry.std()
    rhos = zp @ zx / len(x)
    return float((1 + np.sum(rhos >= rho - 1e-9)) / (n_perm + 1))


def depth_alignment(
    sim: np.ndarray,
    depth_a: np.ndarray,
    depth_b: np.ndarray,
    baseline: np.ndarray,
    n_perm: int = 2000,
    seed: int = 0,
) -> Alignment:
    """For each row layer the depth of its best column layer; rho against depth, with floors."""
    matched = depth_b[sim.argmax(axis=1)]
    rho = spearman(depth_a, matched)
    rho0 = spearman(depth_a, depth_b[baseline.argmax(axis=1)])
    p = _permutation_p(depth_a, matched, rho, n_perm, seed)
    return Alignment(
        depth=np.asarray(depth_a, float),
        matched_depth=matched,
        rho=Score(rho, rho0),
        p_value=float(p),
    )


def match_neurons(stats: BlockStats, n_b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One-to-one matching maximising the summed cosine.

    Exact Hungarian (``scipy.optimize.linear_sum_assignment``) on the full matrix when it was
    kept; otherwise the same assignment problem restricted to each A neuron's best candidate in
    every B layer (sparse Jonker-Volgenant, see ``sparse_assignment``), where a neuron may stay
    unmatched at a cost worse than any real edge.
    """
    if stats.full is not None:
        from scipy.optimize import linear_sum_assignment

        ra, rb = linear_sum_assignment(stats.full, maximize=True)
        sim = stats.full[ra, rb]
        method = "hungarian"
    else:
        n_a, lb = stats.arg_ab.shape
        ok = np.isfinite(stats.best_ab)  # an empty B layer has no candidate (-inf)
        rows = np.repeat(np.arange(n_a), lb)[ok.ravel()]
        ra, rb = sparse_assignment(rows, stats.arg_ab[ok], stats.best_ab[ok], n_a, n_b)
        # the similarity of each matched pair: its candidate slot in A's row (one per B layer;
        # the B layers are disjoint, so exactly one finite slot holds rb)
        slot = ((stats.arg_ab[ra] == rb[:, None]) & ok[ra]).argmax(axis=1)
        sim = stats.best_ab[ra, slot]
        method = "sparse-assignment"
    order = np.argsort(-sim, kind="stable")
    return (
        ra[order].astype(np.int64),
        rb[order].astype(np.int64),
        sim[order].astype(np.float32),
        method,
    )


def _stable_order(keys: np.ndarray, n: int) -> np.ndarray:
    """``np.argsort(keys, kind="stable")`` for integer keys in [0, n): as uint16 when they fit,
    where numpy's stable sort is a radix sort (~20x faster on 100k keys)."""
    if n <= 1 << 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    return np.argsort(keys, kind="stable")


def sparse_assignment(
    rows: np.ndarray, cols: np.ndarray, sims: np.ndarray, n_rows: int, n_cols: int
) -> tuple[np.ndarray, np.ndarray]:
    """The one-to-one matching of a sparse bipartite graph maximising the sum of ``2 + sim`` over
    its pairs (cosine ``sims`` in [-1, 1]; any vertex may stay unmatched). Edges (``rows[k]``,
    ``cols[k]``) must be distinct. Returns the matched (row, col) pairs sorted by row.

    This is the problem "every row matched to one of its edges (cost ``2 - sim``) or to a dummy
    column of its own (cost 4)", solved exactly by ``scipy``'s sparse Jonker-Volgenant
    (``min_weight_full_bipartite_matching``). Posed like that (n_rows x (n_cols + n_rows)), the
    solver skips its initialisation on non-square inputs and runs one shortest-augmenting-path
    search per row. Here it gets the equivalent square problem instead (rows R + C', columns
    C + R'): row r to column c (cost ``2 - sim``) or to its own dummy R'_r (cost 4); the twin C'_c
    of column c to c itself (c unmatched) or to R'_r for any edge (r, c) (c matched to some
    row, r's dummy free), both at cost 1 <= any edge cost. Every full matching of the square
    graph is a matching of the original plus a constant (C'_c's cost 1 each) and conversely, so
    the optimum is the same; the solver's column reduction now seeds it with a near-optimal
    start. Only vertices with edges take part, and the side with fewer of them is put first
    (ties: the rows), which was the faster orientation on both related (near-permutation) and
    unrelated (a few hub columns) models.

    Shortcut before the solver: no matching weighs more than every row along its heaviest edge
    (all weights ``2 + sim`` are positive). When each row has a single heaviest edge and no two
    of them share a column, those edges are a matching reaching that bound, so they are the
    (unique) optimum, found in ~1 ms instead of the solver's ~30 ms at 10k x 10k: the usual case
    for two related models (a fine-tuned copy, near-identical neurons).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    sims = np.asarray(sims, np.float64)
    used_r = np.flatnonzero(np.bincount(rows, minlength=n_rows))
    used_c = np.flatnonzero(np.bincount(cols, minlength=n_cols))
    if len(rows) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    top = np.full(n_rows, -np.inf)
    np.maximum.at(top, rows, sims)
    at_top = sims == top[rows]
    if np.count_nonzero(at_top) == len(used_r) and np.bincount(cols[at_top]).max() <= 1:
        order = np.argsort(rows[at_top], kind="stable")
        return rows[at_top][order], cols[at_top][order]
    ids_r = np.zeros(n_rows, np.int64)
    ids_r[used_r] = np.arange(len(used_r))
    ids_c = np.zeros(n_cols, np.int64)
    ids_c[used_c] = np.arange(len(used_c))
    r, c = ids_r[rows], ids_c[cols]
    flip = len(used_c) < len(used_r)
    if flip:  # the same problem from the other side: unmatched costs differ by a constant
        r, c, used_r, used_c = c, r, used_c, used_r
    nr, nc, ne = len(used_r), len(used_c), len(r)
    # square CSR, built directly: row r holds its edges then R'_r; row C'_c holds c then R'_r
    # for every edge (r, c)
    deg_r = np.bincount(r, minlength=nr)
    deg_c = np.bincount(c, minlength=nc)
    indptr = np.zeros(nr + nc + 1, np.int64)
    np.cumsum(np.concatenate([deg_r + 1, deg_c + 1]), out=indptr[1:])
    indices = np.empty(indptr[-1], np.int64)
    data = np.empty(indptr[-1], np.float64)
    by_r = _stable_order(r, nr)
    start_r = np.cumsum(deg_r) - deg_r
    pos = indptr[r[by_r]] + np.arange(ne) - np.repeat(start_r, deg_r)
    indices[pos], data[pos] = c[by_r], 2.0 - sims[by_r]
    indices[indptr[1 : nr + 1] - 1], data[indptr[1 : nr + 1] - 1] = nc + np.arange(nr), 4.0
    by_c = _stable_order(c, nc)
    start_c = np.cumsum(deg_c) - deg_c
    twin = indptr[nr : nr + nc]
    indices[twin], data[twin] = np.arange(nc), 1.0
    pos = twin[c[by_c]] + 1 + np.arange(ne) - np.repeat(start_c, deg_c)
    indices[pos], data[pos] = nc + r[by_c], 1.0
    n = nr + nc
    graph = csr_matrix((data, indices, indptr), shape=(n, n))
    mr, mc = min_weight_full_bipartite_matching(graph)
    real = (mr < nr) & (mc < nc)
    pr, pc = used_r[mr[real]], used_c[mc[real]]
    if flip:
        pr, pc = pc, pr
    order = np.argsort(pr, kind="stable")
    return pr[order], pc[order]


def rotation_null(x: np.ndarray, mean_dir: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Randomly rotate unit vectors about ``mean_dir``: each keeps its cosine to the mean
    direction (how typical it is) but points in a uniformly random direction around it."""
    u = mean_dir / max(np.linalg.norm(mean_dir), 1e-12)
    alpha = x @ u
    pnorm = np.sqrt(np.clip(1.0 - alpha**2, 0.0, None))
    g = rng.standard_normal(x.shape).astype(np.float32)
    g -= (g @ u)[:, None] * u
    g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    out = alpha[:, None] * u + pnorm[:, None] * g
    rotated: np.ndarray = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return rotated.astype(np.float32)


def stratified_rows(
    bounds: np.ndarray, total: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``total`` rows spread evenly over layers; returns (rows, per-layer offsets)."""
    n_layers = len(bounds) - 1
    per = max(1, math.ceil(total / n_layers))
    rows, offs = [], [0]
    for i in range(n_layers):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        pick = (
            np.arange(lo, hi)
            if hi - lo <= per
            else np.sort(rng.choice(np.arange(lo, hi), per, replace=False))
        )
        rows.append(pick)
        offs.append(offs[-1] + len(pick))
    return np.concatenate(rows), np.array(offs, dtype=np.int64)


def _concepts(
    a: ModelSide,
    b: ModelSide,
    best_a: np.ndarray,
    best_b: np.ndarray,
    ma: np.ndarray,
    mb: np.ndarray,
    ms: np.ndarray,
    tau: float,
    top: int = 25,
) -> tuple[list[ConceptCount], list[ConceptCount], list[ConceptCount]]:
    ok = ms >= tau
    lab_a = Counter(a.labels[i] for i in ma[ok] if a.labels[i])
    lab_b = Counter(b.labels[i] for i in mb[ok] if b.labels[i])
    shared_names = set(lab_a) & set(lab_b)
    shared = sorted(
        (ConceptCount(n, lab_a[n], lab_b[n]) for n in shared_names),
        key=lambda c: (-min(c.count_a, c.count_b), c.label),
    )[:top]
    un_a = Counter(
        a.labels[i]
        for i in np.flatnonzero(best_a < tau)
        if a.labels[i] and a.labels[i] not in shared_names
    )
    un_b = Counter(
        b.labels[i]
        for i in np.flatnonzero(best_b < tau)
        if b.labels[i] and b.labels[i] not in shared_names
    )
    unique_a = [
        ConceptCount(n, c, 0) for n, c in sorted(un_a.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    ]
    unique_b = [
        ConceptCount(n, 0, c) for n, c in sorted(un_b.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    ]
    return shared, unique_a, unique_b


def semantic_view(
    a: ModelVectors,
    b: ModelVectors,
    tau: float | None = None,
    null_samples: int = 512,
    seed: int = 0,
    chunk: int = 1024,
    dense_limit: int = DENSE_LIMIT,
) -> SemanticView:
    """The semantic view of A against B (see module docstring). ``tau=None``: the 95th
    percentile of best-match cosines under the noise floor."""
    if a.vectors.shape[1] != b.vectors.shape[1]:
        raise FailedPrecondition(
            f"models were embedded with different dimensions "
            f"({a.vectors.shape[1]} vs {b.vectors.shape[1]})"
        )
    rng = _rng(seed, 2)
    n_a, n_b = len(a.vectors), len(b.vectors)
    st = block_stats(
        a.vectors, a.bounds, b.vectors, b.bounds, chunk=chunk, keep_full=n_a * n_b <= dense_limit
    )
    best_a, best_b = st.best_ab.max(axis=1), st.best_ba.max(axis=1)
    sim = layer_similarity(st.best_ab, a.bounds, st.best_ba, b.bounds)

    # noise floor: rotated samples of each side against all of the other side
    # (the two sides' column sums: no 40 MiB concatenated copy of both models at 10k x 10k)
    mean_dir = (a.vectors.sum(axis=0) + b.vectors.sum(axis=0)) / max(n_a + n_b, 1)
    null_exact = n_a * n_b <= dense_limit  # small enough: the floor on every neuron, like for like
    if null_exact:
        rows_a, offs_a, rows_b, offs_b = np.arange(n_a), a.bounds, np.arange(n_b), b.bounds
    else:
        rows_a, offs_a = stratified_rows(a.bounds, null_samples, rng)
        rows_b, offs_b = stratified_rows(b.bounds, null_samples, rng)
    # only best_ab / arg_ab (and full) of the null passes are used, not their per-group best_ba:
    # so one group of rows each, i.e. one block of all the sampled rows instead of one block per
    # sampled layer (~52 rows, where BLAS runs far below its peak: ~3x slower passes)
    na = block_stats(
        rotation_null(a.vectors[rows_a], mean_dir, rng),
        np.array([0, len(rows_a)]),
        b.vectors,
        b.bounds,
        chunk=chunk,
        keep_full=len(rows_a) * n_b <= dense_limit,
    )
    nb = block_stats(
        rotation_null(b.vectors[rows_b], mean_dir, rng),
        np.array([0, len(rows_b)]),
        a.vectors,
        a.bounds,
        chunk=chunk,
    )
    null_a, null_b = na.best_ab.max(axis=1), nb.best_ab.max(axis=1)
    sim0 = 0.5 * (segment_mean(na.best_ab, offs_a) + segment_mean(nb.best_ab, offs_b).T)
    if tau is None:
        tau = float(np.quantile(np.concatenate([null_a, null_b]), 0.95))

    ma, mb, ms, method = match_neurons(st, n_b)
    _, _, ms0, _ = match_neurons(na, n_b)
    shared, unique_a, unique_b = _concepts(a.side, b.side, best_a, best_b, ma, mb, ms, tau)
    return SemanticView(
        layer_similarity=sim,
        layer_similarity_baseline=sim0,
        alignment=depth_alignment(sim, a.side.depths, b.side.depths, sim0, seed=seed),
        alignment_b=depth_alignment(sim.T, b.side.depths, a.side.depths, sim0.T, seed=seed),
        best_match=Score(float(best_a.mean()), float(null_a.mean())),
        matching=Score(
            float(ms.mean()) if len(ms) else 0.0, float(ms0.mean()) if len(ms0) else 0.0
        ),
        coverage_a=Score(float((best_a >= tau).mean()), float((null_a >= tau).mean())),
        coverage_b=Score(float((best_b >= tau).mean()), float((null_b >= tau).mean())),
        tau=float(tau),
        matching_method=method,
        null_exact=bool(null_exact),
        match_a=ma,
        match_b=mb,
        match_sim=ms,
        shared=shared,
        unique_a=unique_a,
        unique_b=unique_b,
    )


# ---------------------------------------------------------------------------------------------
# activation view maths


def _unit_gram(x: np.ndarray) -> np.ndarray:
    """The Frobenius-normalised Gram matrix of column-centred ``x`` (n, p), flattened."""
    xc = x.astype(np.float64) - x.mean(axis=0, dtype=np.float64)
    g = xc @ xc.T
    norm = np.linalg.norm(g)
    unit: np.ndarray = g / norm if norm > 0 else g
    return unit.ravel().astype(np.float32)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two (n, p) / (n, q) activation matrices on the same n samples."""
    if x.shape[0] != y.shape[0]:
        raise InvalidArgument("CKA needs the same samples on both sides", field="samples")
    return float(np.dot(_unit_gram(x).astype(np.float64), _unit_gram(y).astype(np.float64)))


def cka_matrix(
    acts_a: list[np.ndarray], acts_b: list[np.ndarray], perm: np.ndarray | None = None
) -> np.ndarray:
    """(L_A, L_B) linear CKA between every pair of layers; ``perm`` reorders B's samples."""
    ga = np.stack([_unit_gram(x) for x in acts_a])
    gb = np.stack([_unit_gram(x if perm is None else x[perm]) for x in acts_b])
    cka: np.ndarray = ga @ gb.T
    return cka.astype(np.float64)


def activation_view(
    home: Home, a: ModelEntry, b: ModelEntry, layers: list[str] | None = None, seed: int = 0
) -> ActivationView:
    """Linear CKA layer x layer from the two models' activation sketches."""
    sk = []
    for entry in (a, b):
        try:
            sk.append(load_sketch(home, entry.model_id, entry.generation))
        except NotFound:
            raise FailedPrecondition(
                f"model {entry.model_id!r} has no activation sketch for its live index "
                f"(generation {entry.generation}) under {home}; re-index it, or compare the "
                "semantic view only"
            ) from None
    sa, sb = sk
    if not np.array_equal(sa.sample_indices, sb.sample_indices) or (
        sa.probe_set and sb.probe_set and sa.probe_set != sb.probe_set
    ):
        raise FailedPrecondition(
            f"the activation sketches of {a.model_id!r} and {b.model_id!r} were taken on "
            f"different probe samples ({sa.probe_set or '?'}: {sa.n_samples}, "
            f"{sb.probe_set or '?'}: {sb.n_samples}); "
            "index both models on the same probe set"
        )
    names_a = [n for n in sa.layer_names if layers is None or n in layers]
    names_b = [n for n in sb.layer_names if layers is None or n in layers]
    if not names_a or not names_b:
        raise InvalidArgument(
            f"no sketched layer left after the layer filter {layers}", field="layers"
        )
    da, db = _depths(a, names_a), _depths(b, names_b)
    cka = cka_matrix([sa.layers[n] for n in names_a], [sb.layers[n] for n in names_b])
    perm = _rng(seed, 3).permutation(sa.n_samples)
    cka0 = cka_matrix([sa.layers[n] for n in names_a], [sb.layers[n] for n in names_b], perm=perm)
    return ActivationView(
        cka=cka,
        cka_baseline=cka0,
        layers_a=names_a,
        layers_b=names_b,
        alignment=depth_alignment(cka, da, db, cka0, seed=seed),
        alignment_b=depth_alignment(cka.T, db, da, cka0.T, seed=seed),
        n_samples=sa.n_samples,
    )


def _depths(entry: ModelEntry, names: list[str]) -> np.ndarray:
    known = {l.name: l.depth for l in entry.layers}
    n = len(names)
    return np.array(
        [known.get(nm, i / max(n - 1, 1)) for i, nm in enumerate(names)], dtype=np.float64
    )


# ---------------------------------------------------------------------------------------------
# the entry point, with its cache


def compare_models(
    store: KnowledgeStore,
    model_a: str,
    model_b: str,
    layers: list[str] | None = None,
    *,
    home: HomeLike,
    tau: float | None = None,
    activation: bool = True,
    offset: int = 0,
    limit: int = 50,
    null_samples: int = 512,
    seed: int = 0,
    use_cache: bool = True,
    kind: str = NEURON_KIND,
) -> Comparison:
    """Compare two indexed models (semantic view, and activation view unless ``activation=False``).

    ``layers`` keeps only the named layers (of either model). ``tau`` is the coverage threshold
    (default: calibrated on the noise floor). ``offset``/``limit`` select the page of matched
    pairs put in ``Comparison.pairs``. Raises NotFound (unknown model), NotIndexed,
    FailedPrecondition (no or incompatible activation sketches).
    """
    if offset < 0 or limit < 0:
        raise InvalidArgument("offset and limit must be >= 0", field="offset")
    if tau is not None and not -1.0 <= tau <= 1.0:
        raise InvalidArgument(f"tau must be a cosine in [-1, 1], not {tau}", field="tau")
    t0 = time.perf_counter()
    ea, eb = indexed_entry(store, model_a), indexed_entry(store, model_b)
    if layers is not None:
        known = {l.name for l in ea.layers} | {l.name for l in eb.layers}
        missing = [n for n in layers if known and n not in known]
        if missing:
            raise InvalidArgument(
                f"unknown layers {missing} (neither model has them)", field="layers"
            )
    key = _cache_key(ea, eb, layers, tau, activation, null_samples, seed, kind)
    home = Home.of(home)
    path = home.compare_dir(model_a, model_b) / f"{key}.npz"
    if use_cache and path.exists():
        try:
            cmp = _load(path)
            cmp.cached, cmp.kind = True, kind
            cmp.timings = {"load_cache_s": time.perf_counter() - t0}
            return _paged(cmp, offset, limit)
        except (OSError, KeyError, ValueError, TypeError):
            path.unlink(missing_ok=True)  # unreadable cache entry: recompute
    va = load_model_vectors(store, model_a, layers, kind)
    vb = load_model_vectors(store, model_b, layers, kind)
    t1 = time.perf_counter()
    sem = semantic_view(va, vb, tau=tau, null_samples=null_samples, seed=seed)
    t2 = time.perf_counter()
    act = activation_view(home, ea, eb, layers, seed=seed) if activation else None
    t3 = time.perf_counter()
    cmp = Comparison(
        a=va.side,
        b=vb.side,
        semantic=sem,
        activation=act,
        timings={"load_s": t1 - t0, "semantic_s": t2 - t1, "activation_s": t3 - t2},
        kind=kind,
    )
    if use_cache:
        _save(path, cmp)
    return _paged(cmp, offset, limit)


def _paged(cmp: Comparison, offset: int, limit: int) -> Comparison:
    cmp.pairs = cmp.page(offset, limit)
    cmp.pairs_total = len(cmp.semantic.match_sim)
    return cmp


def _cache_key(
    ea: ModelEntry,
    eb: ModelEntry,
    layers: list[str] | None,
    tau: float | None,
    activation: bool,
    null_samples: int,
    seed: int,
    kind: str = NEURON_KIND,
) -> str:
    ident: list[Any] = [
        COMPARE_VERSION,
        [ea.model_id, ea.generation, ea.indexed_at, ea.embedder],
        [eb.model_id, eb.generation, eb.indexed_at, eb.embedder],
        sorted(layers) if layers is not None else None,
        tau,
        bool(activation),
        null_samples,
        seed,
    ]
    if kind != NEURON_KIND:  # neuron comparisons keep the cache keys they had
        ident.append(kind)
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]


# Cache format: one .npz; arrays stored by path, everything else as JSON with type tags.
_TYPES = {
    c.__name__: c
    for c in (
        Score,
        Alignment,
        ModelSide,
        ConceptCount,
        SemanticView,
        ActivationView,
        Comparison,
        MatchedPair,
    )
}


def _encode(obj: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    if isinstance(obj, np.ndarray):
        arrays[path] = obj
        return {"__array__": path}
    if is_dataclass(obj):
        return {
            "__type__": type(obj).__name__,
            **{
                f.name: _encode(getattr(obj, f.name), arrays, f"{path}.{f.name}")
                for f in fields(obj)
            },
        }
    if isinstance(obj, dict):
        return {k: _encode(v, arrays, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def _decode(obj: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    if isinstance(obj, dict):
        if "__array__" in obj:
            return arrays[obj["__array__"]]
        if "__type__" in obj:
            cls = _TYPES[obj["__type__"]]
            return cls(**{k: _decode(v, arrays) for k, v in obj.items() if k != "__type__"})
        return {k: _decode(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, arrays) for v in obj]
    return obj


def _save(path: Path, cmp: Comparison) -> None:
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(
        Comparison(
            a=cmp.a, b=cmp.b, semantic=cmp.semantic, activation=cmp.activation, timings=cmp.timings
        ),
        arrays,
        "c",
    )
    arrays["__tree__"] = np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8)
    atomic_save_npz(path, arrays)


def _load(path: Path) -> Comparison:
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    tree = json.loads(arrays.pop("__tree__").tobytes().decode())
    cmp = _decode(tree, arrays)
    if not isinstance(cmp, Comparison):
        raise TypeError(f"{path} does not hold a comparison")
    return cmp


# ---------------------------------------------------------------------------------------------
# text report


def _score(name: str, s: Score, fmt: str = "{:.3f}") -> str:
    return f"{name:34s} {fmt.format(s.value):>8s}   noise floor {fmt.format(s.baseline):>8s}"


def comparison_summary(cmp: Comparison, pairs: int = 15) -> str:
    """A plain-text report of a comparison (scores beside their noise floors)."""
    s = cmp.semantic
    al = s.alignment
    what = "neurons" if cmp.kind == NEURON_KIND else f"{cmp.kind} components"
    lines = [
        f"Comparison {cmp.a.model_id} (gen {cmp.a.generation}, {len(cmp.a.layer_of)} {what}, "
        f"{len(cmp.a.layers)} layers) vs {cmp.b.model_id} (gen {cmp.b.generation}, "
        f"{len(cmp.b.layer_of)} {what}, {len(cmp.b.layers)} layers)",
        "",
        "Semantic view (neuron vectors in embedding space)",
        _score("depth alignment rho (A->B)", al.rho) + f"   permutation p {al.p_value:.4f}",
        _score("depth alignment rho (B->A)", s.alignment_b.rho)
        + f"   permutation p {s.alignment_b.p_value:.4f}",
        _score("mean best-match cosine (A->B)", s.best_match),
        _score(f"one-to-one matching ({s.matching_method})", s.matching)
        + ("" if s.null_exact else "   (floor from a sample: upper bound)"),
        _score(f"coverage of A (tau {s.tau:.3f})", s.coverage_a, "{:.1%}"),
        _score(f"coverage of B (tau {s.tau:.3f})", s.coverage_b, "{:.1%}"),
    ]
    if cmp.activation is not None:
        act = cmp.activation
        diag = act.cka.max(axis=1).mean()
        diag0 = act.cka_baseline.max(axis=1).mean()
        lines += [
            "",
            f"Activation view (linear CKA on {act.n_samples} probe samples)",
            _score("depth alignment rho (A->B)", act.alignment.rho)
            + f"   permutation p {act.alignment.p_value:.4f}",
            _score("depth alignment rho (B->A)", act.alignment_b.rho)
            + f"   permutation p {act.alignment_b.p_value:.4f}",
            _score("mean best-layer CKA (A->B)", Score(float(diag), float(diag0))),
        ]
    lines += [
        "",
        "Relative-depth alignment A->B (semantic"
        + (", CKA" if cmp.activation is not None else "")
        + ")",
    ]
    for i, name in enumerate(cmp.a.layers):
        row = f"  {name:24s} {al.depth[i]:.2f} -> {al.matched_depth[i]:.2f}"
        if cmp.activation is not None and name in cmp.activation.layers_a:
            k = cmp.activation.layers_a.index(name)
            row += f"   {cmp.activation.alignment.matched_depth[k]:.2f}"
        lines.append(row)
    for title, group in (
        ("Concepts shared by matched neurons (A, B)", s.shared),
        (f"Concepts only in unmatched neurons of {cmp.a.model_id}", s.unique_a),
        (f"Concepts only in unmatched neurons of {cmp.b.model_id}", s.unique_b),
    ):
        if group:
            lines += [
                "",
                title,
                "  "
                + ", ".join(
                    f"{c.label} ({c.count_a}, {c.count_b})"
                    if c.count_a and c.count_b
                    else f"{c.label} ({c.count_a or c.count_b})"
                    for c in group
                ),
            ]
    top = cmp.page(0, pairs)
    lines += ["", f"Best matched pairs ({len(top)} of {len(s.match_sim)})"]
    for p in top:
        lines.append(
            f"  {p.similarity:.3f}  {p.a_layer}/{p.a_unit} [{p.a_label}]  <->  "
            f"{p.b_layer}/{p.b_unit} [{p.b_label}]"
        )
    return "\n".join(lines) + "\n"
