"""Streaming per-neuron top-k and activation statistics, O(neurons x k) memory.

Batches arrive in sample order as (batch, neurons) activations. The running state is a
(neurons, k) pair of values/indices, merged with each batch by a *stable* descending sort of
``[running, batch]``: among equal values the running entries (earlier samples, already in
index order) come first, then the batch in index order, so ties always resolve to the lower
sample index and the result equals a full ``argsort`` over all samples.
"""

from __future__ import annotations

import numpy as np
import torch

from neuronatlas.core.errors import InvalidArgument


class StreamingTopK:
    """Running top-k (values desc, ties -> lower sample index) of ``units`` neurons."""

    def __init__(self, units: int, k: int):
        if k < 1:
            raise InvalidArgument(f"k must be >= 1, not {k}", field="k")
        self.units, self.k = units, k
        self.values = torch.full((units, k), float("-inf"), dtype=torch.float32)
        self.indices = torch.full((units, k), -1, dtype=torch.int64)
        self.seen = 0

    def update(self, acts: torch.Tensor, start: int) -> None:
        """Merge a (batch, units) block whose first row is sample ``start``."""
        if acts.ndim != 2 or acts.shape[1] != self.units:
            raise InvalidArgument(
                f"activations of shape {tuple(acts.shape)}, expected (*, {self.units})"
            )
        n = acts.shape[0]
        if start != self.seen:
            raise InvalidArgument(
                f"batches must arrive in order: expected sample {self.seen}, got {start}"
            )
        vals = acts.detach().float().t()
        vals = torch.where(torch.isnan(vals), float("-inf"), vals)  # NaN never wins
        idx = torch.arange(start, start + n, dtype=torch.int64).expand(self.units, n)
        filled = min(self.seen, self.k)  # unfilled (-1) slots never take part in the merge
        cat_v = torch.cat([self.values[:, :filled], vals], dim=1)
        cat_i = torch.cat([self.indices[:, :filled], idx], dim=1)
        keep = min(self.k, filled + n)
        order = torch.sort(cat_v, dim=1, descending=True, stable=True).indices[:, :keep]
        self.values[:, :keep] = torch.gather(cat_v, 1, order)
        self.indices[:, :keep] = torch.gather(cat_i, 1, order)
        self.seen += n

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(values, indices) as numpy; refuses to return unfilled (-1) slots."""
        if self.seen < self.k:
            raise InvalidArgument(f"k={self.k} but only {self.seen} samples were seen", field="k")
        return self.values.numpy().copy(), self.indices.numpy().copy()

    def state(self) -> dict[str, np.ndarray]:
        return {
            "values": self.values.numpy(),
            "indices": self.indices.numpy(),
            "seen": np.array(self.seen),
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> StreamingTopK:
        values = torch.from_numpy(np.array(state["values"], dtype=np.float32))
        obj = cls(values.shape[0], values.shape[1])
        obj.values = values
        obj.indices = torch.from_numpy(np.array(state["indices"], dtype=np.int64))
        obj.seen = int(state["seen"])
        return obj


class RunningStats:
    """Per-neuron mean, std, min, max and fraction > 0, merged batch by batch (Chan et al.)."""

    def __init__(self, units: int):
        self.n = 0
        self.mean = np.zeros(units, np.float64)
        self.m2 = np.zeros(units, np.float64)
        self.min = np.full(units, np.inf)
        self.max = np.full(units, -np.inf)
        self.positive = np.zeros(units, np.int64)

    def update(self, acts: torch.Tensor) -> None:
        x = acts.detach().double()
        nb = x.shape[0]
        if nb == 0:
            return
        b_mean = x.mean(0)
        b_m2 = ((x - b_mean) ** 2).sum(0)
        b_mean_np, b_m2_np = b_mean.numpy(), b_m2.numpy()
        total = self.n + nb
        delta = b_mean_np - self.mean
        self.mean = self.mean + delta * (nb / total)
        self.m2 = self.m2 + b_m2_np + delta**2 * (self.n * nb / total)
        self.n = total
        self.min = np.minimum(self.min, x.min(0).values.numpy())
        self.max = np.maximum(self.max, x.max(0).values.numpy())
        self.positive += (x > 0).sum(0).numpy()

    def result(self) -> dict[str, np.ndarray]:
        n = max(self.n, 1)
        return {
            "mean": self.mean.astype(np.float32),
            "std": np.sqrt(np.maximum(self.m2 / n, 0.0)).astype(np.float32),
            "min": self.min.astype(np.float32),
            "max": self.max.astype(np.float32),
            "frac_active": (self.positive / n).astype(np.float32),
        }

    def state(self) -> dict[str, np.ndarray]:
        return {
            "n": np.array(self.n),
            "mean": self.mean,
            "m2": self.m2,
            "min": self.min,
            "max": self.max,
            "positive": self.positive,
        }

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> RunningStats:
        obj = cls(len(state["mean"]))
        obj.n = int(state["n"])
        obj.mean, obj.m2 = np.array(state["mean"]), np.array(state["m2"])
        obj.min, obj.max = np.array(state["min"]), np.array(state["max"])
        obj.positive = np.array(state["positive"])
        return obj


# -- representative samples (MAMMI-style) -----------------------------------------------------
MAX_RESERVOIR = 4096  # candidates kept per neuron for percentile selection


def reservoir_size(samples: int, percentile: float, cap: int = MAX_RESERVOIR) -> int:
    """How many of a neuron's highest activations percentile selection keeps while streaming:
    ``K = ceil((1 - percentile / 100) * samples)``, at least 1, at most ``cap`` and ``samples``.

    These K are exactly the samples at or above the neuron's ``percentile``-th percentile
    (inverted-CDF definition; ties broken by the lower sample index), so no quantile estimate
    is needed: the streaming top-K *is* the above-percentile set. Memory: 12 bytes (float32
    value + int64 index) x neurons x K, e.g. 17 MB for resnet56's 2,042 neurons with 10,000
    probe images at p = 93 (K = 700); ``cap`` bounds it for large probe sets (then only the
    ``cap`` highest of the above-percentile samples are candidates).
    """
    if samples < 1:
        raise InvalidArgument(f"no samples to select from ({samples})", field="samples")
    if not 0.0 <= percentile < 100.0 or not np.isfinite(percentile):
        raise InvalidArgument(
            f"percentile must be in [0, 100), not {percentile}", field="percentile"
        )
    k = int(np.ceil((1.0 - percentile / 100.0) * samples - 1e-9))
    return max(1, min(k, cap, samples))


def class_ids(files: list[str]) -> np.ndarray | None:
    """Class of each probe sample: its top-level folder (``cat/0001.jpg`` -> ``cat``), as
    integers; None when the probe set is flat or has a single class."""
    if not files or any("/" not in f for f in files):
        return None
    names = [f.split("/", 1)[0] for f in files]
    uniq, inverse = np.unique(np.array(names), return_inverse=True)
    return inverse.astype(np.int64) if len(uniq) > 1 else None


def representative_samples(
    values: np.ndarray,
    indices: np.ndarray,
    k: int,
    classes: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pick up to ``k`` representative samples of each neuron from its above-percentile
    candidates (the ``(units, K)`` reservoir of :class:`StreamingTopK`, see
    :func:`reservoir_size`), class-balanced: ``(units, min(k, K))`` values and indices,
    highest activation first.

    A random sample of the candidates rather than the k most extreme ones (as MAMMI): each
    neuron's candidates are put in a random order (``seed``; deterministic), and with
    ``classes`` (sample -> class id) picked round-robin over classes — every class's first
    candidate (in that order), then every class's second, ... — until ``k`` are picked. So
    no class supplies more than ``ceil(k / C)`` images while C classes still have candidates
    left, and a class with few candidates gives all it has (the per-class cap is the water
    level of the round-robin). Within a round, classes whose pick activates more come first.
    Every neuron gets the same count, ``min(k, K)``, so the downstream arrays stay dense.
    Memory and time O(units x K).
    """
    vals = np.asarray(values, dtype=np.float32)
    idx = np.asarray(indices, dtype=np.int64)
    if vals.ndim != 2 or vals.shape != idx.shape:
        raise InvalidArgument(
            f"values {vals.shape} and indices {idx.shape} must be the same (units, K) shape"
        )
    if k < 1:
        raise InvalidArgument(f"k must be >= 1, not {k}", field="k")
    units, cand = vals.shape
    m = min(k, cand)
    if units == 0 or cand == 0:
        return vals[:, :m].copy(), idx[:, :m].copy()
    if (idx < 0).any():
        raise InvalidArgument("the candidate reservoir has unfilled slots", field="indices")
    key = np.random.default_rng(seed).random((units, cand))
    if classes is None:
        cls = np.zeros((units, cand), np.int64)
    else:
        cls = np.asarray(classes, dtype=np.int64)[idx]
    # rank of each candidate within its class, in random-key order
    by_class = np.lexsort((key, cls), axis=1)
    sorted_cls = np.take_along_axis(cls, by_class, axis=1)
    pos = np.broadcast_to(np.arange(cand), (units, cand))
    starts = np.ones((units, cand), bool)
    starts[:, 1:] = sorted_cls[:, 1:] != sorted_cls[:, :-1]
    group_start = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    rank = np.empty((units, cand), np.int64)
    np.put_along_axis(rank, by_class, pos - group_start, axis=1)
    # round-robin: round first, then the higher activation (then the lower sample index)
    chosen = np.lexsort((idx, -vals, rank), axis=1)[:, :m]
    out_v = np.take_along_axis(vals, chosen, axis=1)
    out_i = np.take_along_axis(idx, chosen, axis=1)
    order = np.lexsort((out_i, -out_v), axis=1)  # highest activation first
    return np.take_along_axis(out_v, order, axis=1), np.take_along_axis(out_i, order, axis=1)
