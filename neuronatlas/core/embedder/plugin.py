"""Bring-your-own embedder: ``--embedder py:package.module:factory`` (modules are also found
in the current directory) or ``--embedder py:path/to/file.py:factory``.

The interface a plug-in provides:

- ``factory(device: str) -> Embedder`` — a callable named by one of those references,
  called with the keyword argument ``device`` (``"auto"``, ``"cpu"``, ``"cuda"``...);
- the object it returns is a :class:`neuronatlas.core.embedder.base.Embedder` subclass, or any
  object with the same four members:

  - ``info``: :class:`neuronatlas.core.records.EmbedderInfo` (name, weights identity, dim) —
    stores remember it and refuse vectors from a different one;
  - ``preprocess``: PIL image -> ``(C, H, W)`` tensor;
  - ``encode_images(images, batch_size=64)``: PIL images or a preprocessed ``(n, C, H, W)``
    tensor -> ``(n, dim)``;
  - ``encode_text(texts)``: list of strings -> ``(n, dim)``.

  Outputs should be L2-normalised float32; objects that are not ``Embedder`` subclasses are
  wrapped so their outputs are converted and normalised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import InvalidArgument, NeuronAtlasError
from neuronatlas.core.imports import load_object
from neuronatlas.core.records import EmbedderInfo

_MEMBERS = ("info", "preprocess", "encode_images", "encode_text")


def _normalised(arr: Any, dim: int, what: str) -> np.ndarray:
    out = np.asarray(arr, dtype=np.float32)
    if out.ndim != 2 or out.shape[1] != dim:
        raise InvalidArgument(
            f"plug-in {what} returned shape {out.shape}, expected (n, {dim})", field="embedder"
        )
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    normalised: np.ndarray = out / np.maximum(norms, 1e-12)
    return normalised


class DuckEmbedder(Embedder):
    """Wraps a duck-typed plug-in object as an :class:`Embedder` with checked outputs."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.info = inner.info
        self.preprocess = inner.preprocess

    def encode_images(self, images: Sequence[Any] | Any, batch_size: int = 64) -> np.ndarray:
        return _normalised(
            self.inner.encode_images(images, batch_size=batch_size), self.dim, "encode_images"
        )

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return _normalised(self.inner.encode_text(list(texts)), self.dim, "encode_text")


def load_plugin(target: str, device: str = "auto") -> Embedder:
    """Load ``package.module:factory`` or ``path/to/file.py:factory`` (the loader of
    :mod:`neuronatlas.core.imports`: modules are also found in the current directory), call
    ``factory(device=device)``, check the result."""
    factory: Any = load_object(
        target,
        field="embedder",
        usage="py:package.module:factory or py:path/to/file.py:factory",
    )
    if not callable(factory):
        raise InvalidArgument(
            f"plug-in {target!r} is not callable (expected factory(device=...))", field="embedder"
        )
    try:
        emb = factory(device=device)
    except NeuronAtlasError:
        raise
    except Exception as e:
        raise InvalidArgument(
            f"plug-in factory {target!r} failed: {type(e).__name__}: {e}", field="embedder"
        ) from e
    if isinstance(emb, Embedder):
        if not isinstance(getattr(emb, "info", None), EmbedderInfo):
            raise InvalidArgument(
                f"plug-in {target!r} returned an Embedder without an EmbedderInfo 'info'",
                field="embedder",
            )
        return emb
    missing = [m for m in _MEMBERS if not hasattr(emb, m)]
    if missing:
        raise InvalidArgument(
            f"plug-in {target!r} returned {type(emb).__name__}, not an Embedder "
            f"(missing {', '.join(missing)}); "
            "see neuronatlas.core.embedder.plugin for the interface",
            field="embedder",
        )
    if not isinstance(emb.info, EmbedderInfo):
        raise InvalidArgument(
            f"plug-in {target!r}: 'info' must be an EmbedderInfo, not {type(emb.info).__name__}",
            field="embedder",
        )
    not_callable = [m for m in _MEMBERS[1:] if not callable(getattr(emb, m))]
    if not_callable:
        raise InvalidArgument(
            f"plug-in {target!r}: {', '.join(not_callable)} must be callable", field="embedder"
        )
    return DuckEmbedder(emb)
