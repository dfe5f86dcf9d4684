"""A small thread-safe LRU cache of text embeddings (one row per string).

The gRPC service encodes the same query strings over and over from many threads; a hit
costs a dict lookup instead of a text-tower forward pass.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np


class TextCache:
    """LRU map ``str -> (dim,) float32`` with hit/miss counters. Stored rows are read-only."""

    def __init__(self, maxsize: int = 4096):
        self.maxsize = max(0, int(maxsize))
        self._rows: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def lookup(self, texts: Iterable[str]) -> list[np.ndarray | None]:
        """Cached rows for ``texts`` (None where missing); counts one hit or miss per text."""
        out: list[np.ndarray | None] = []
        with self._lock:
            for t in texts:
                row = self._rows.get(t)
                if row is None:
                    self.misses += 1
                else:
                    self._rows.move_to_end(t)
                    self.hits += 1
                out.append(row)
        return out

    def store(self, texts: Iterable[str], rows: np.ndarray) -> None:
        if self.maxsize == 0:
            return
        with self._lock:
            for t, row in zip(texts, rows, strict=False):
                frozen = np.array(row, dtype=np.float32, copy=True)
                frozen.setflags(write=False)
                self._rows[t] = frozen
                self._rows.move_to_end(t)
            while len(self._rows) > self.maxsize:
                self._rows.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._rows.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def info(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "size": len(self._rows),
                "maxsize": self.maxsize,
            }
