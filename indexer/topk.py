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
