"""Read queries over a knowledge store, shared by the gRPC servicer and the CLI's direct mode.

An :class:`Atlas` bundles what one process needs to answer queries: the store (opened once),
the embedder (loaded lazily, once) and the caches (text-query embeddings, label scorers, the
catalogue). The module-level functions take an Atlas, validate their arguments (raising
``InvalidArgument`` with the offending field) and return core records. Nothing here knows
about gRPC.
"""

from __future__ import annotations

import io
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from neuronatlas.core.errors import (
    EmbedderMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotIndexed,
)
from neuronatlas.core.records import (
    EmbedderInfo,
    Label,
    ModelEntry,
    ModelStatus,
    NeuronRecord,
    check_vectors,
    validate_model_id,
)
from neuronatlas.core.store.base import Hit, KnowledgeStore, SearchFilter

# Limits (documented in protos/neuronatlas/v1/neuronatlas.proto).
MAX_TOP_K = 1000
DEFAULT_TOP_K = 10
MAX_PER_MODEL = 100
MAX_TEXT_CHARS = 1000
MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_CUSTOM_LABELS = 2000
MAX_LABEL_CHARS = 200
MAX_LAYER_CHARS = 256
MAX_TOP_N = 100
DEFAULT_TOP_N = 5
MAX_FILTER_ITEMS = 1000

T = TypeVar("T")


# -- queries -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TextQuery:
    text: str


@dataclass(frozen=True)
class ImageQuery:
    data: bytes


@dataclass(frozen=True)
class NeuronQuery:
    model_id: str
    layer: str
    unit: int


@dataclass(frozen=True, eq=False)
class VectorQuery:
    values: np.ndarray


Query = TextQuery | ImageQuery | NeuronQuery | VectorQuery


# -- results -----------------------------------------------------------------------------
@dataclass
class Page(Generic[T]):
    """One page of results; ``next_offset`` is None on the last page."""

    items: list[T]
    next_offset: int | None = None


@dataclass
class Description:
    model_id: str
    layer: str
    unit: int
    labels: dict[str, list[Label]]  # vocabulary (or "custom") -> top labels
    label_set: list[str]


@dataclass
class ModelCount:
    model_id: str
    status: ModelStatus
    neurons: int
    layers: dict[str, int] = field(default_factory=dict)


@dataclass
class StoreStats:
    total_neurons: int
    models: list[ModelCount]
    size_bytes: int
    embedder: EmbedderInfo | None
    backend: str = ""


# -- the per-process query context -----------------------------------------------------------
class _LRU:
    """A small thread-safe LRU map with hit/miss counters."""

    def __init__(self, capacity: int):
        self.capacity = max(0, int(capacity))
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Any) -> Any | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: Any, value: Any) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)


class Atlas:
    """Store + embedder + caches for one process. Thread-safe; share one per process.

    ``embedder`` is an ``Embedder``, a zero-argument factory returning one (loaded on first
    text/image query), or None (text and image queries then fail with FailedPrecondition).
    """

    def __init__(
        self,
        store: KnowledgeStore,
        embedder: Any = None,
        *,
        backend: str = "",
        text_cache_size: int = 4096,
        scorer_cache_size: int = 16,
        catalogue_ttl_s: float = 2.0,
    ):
        self.store = store
        self.backend = backend
        self._embedder = (
            None if callable(embedder) and not hasattr(embedder, "encode_text") else embedder
        )
        self._embedder_factory: Callable[[], Any] | None = (
            embedder if self._embedder is None else None
        )
        self._embedder_checked = False
        self._embedder_lock = threading.Lock()
        self.text_cache = _LRU(text_cache_size)
        self._scorers = _LRU(scorer_cache_size)
        self._scorer_lock = threading.Lock()
        self._catalogue_ttl_s = catalogue_ttl_s
        self._catalogue: tuple[float, dict[str, ModelEntry]] | None = None
        self._catalogue_lock = threading.Lock()

    # embedder ---------------------------------------------------------------------------
    def embedder(self) -> Any:
        """The embedder, loaded once and checked against the store's embedder identity."""
        if self._embedder is not None and self._embedder_checked:
            return self._embedder
        with self._embedder_lock:
            if self._embedder is None:
                if self._embedder_factory is None:
                    raise FailedPrecondition(
                        "this server has no embedder: only vector and neuron queries work"
                    )
                self._embedder = self._embedder_factory()
            if not self._embedder_checked:
                bound = self.store.embedder
                info = self._embedder.info
                if bound is not None and (bound.name, bound.weights, bound.dim) != (
                    info.name,
                    info.weights,
                    info.dim,
                ):
                    raise EmbedderMismatch(
                        f"the store was indexed with {bound.name} ({bound.weights}, dim {bound.dim}) but the "
                        f"embedder is {info.name} ({info.weights}, dim {info.dim}); use the store's embedder"
                    )
                self._embedder_checked = True
        return self._embedder

    def embed_text(self, text: str) -> np.ndarray:
        """Embedding of a query text; repeated texts come from the LRU cache (no model call)."""
        vec = self.text_cache.get(text)
        if vec is None:
            vec = np.asarray(self.embedder().encode_text([text])[0], dtype=np.float32)
            vec.setflags(write=False)
            self.text_cache.put(text, vec)
        return vec

    def embed_image(self, data: bytes) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise InvalidArgument(
                        f"image is {img.width}x{img.height}, more than {MAX_IMAGE_PIXELS} pixels",
                        field="image",
                    )
                rgb = img.convert("RGB")
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
            raise InvalidArgument(
                f"image bytes are not a readable image ({e})", field="image"
            ) from None
        return np.asarray(self.embedder().encode_images([rgb])[0], dtype=np.float32)

    def scorer(self, labels: tuple[str, ...]) -> Any:
        """A ``LabelScorer`` for a custom label list (cached: prompt embeddings cost model calls)."""
        from neuronatlas.core.labels import LabelScorer

        scorer = self._scorers.get(labels)
        if scorer is None:
            with self._scorer_lock:
                scorer = self._scorers.get(labels)
                if scorer is None:
                    scorer = LabelScorer(self.embedder(), list(labels), name="custom")
                    self._scorers.put(labels, scorer)
        return scorer

    # catalogue --------------------------------------------------------------------------
    def catalogue(self, fresh: bool = False) -> dict[str, ModelEntry]:
        """Catalogue entries by id, cached for ``catalogue_ttl_s`` seconds."""
        now = time.monotonic()
        cached = self._catalogue
        if not fresh and cached is not None and now - cached[0] < self._catalogue_ttl_s:
            return cached[1]
        with self._catalogue_lock:
            cached = self._catalogue  # another thread may have refreshed it meanwhile
            if (
                not fresh
                and cached is not None
                and time.monotonic() - cached[0] < self._catalogue_ttl_s
            ):
                return cached[1]
            models = {m.model_id: m for m in self.store.list_models()}
            self._catalogue = (time.monotonic(), models)
        return models

    def invalidate_catalogue(self) -> None:
        self._catalogue = None

    def require_indexed(self) -> None:
        """NotIndexed unless at least one model is queryable."""
        if not any(m.status is ModelStatus.INDEXED for m in self.catalogue().values()):
            raise NotIndexed(
                "the store holds no indexed model yet: index one first (`neuronatlas index`)"
            )

    def close(self) -> None:
        self.store.close()


# -- validation helpers -----------------------------------------------------------------------
def check_page(offset: int, limit: int, field_name: str = "page_size") -> None:
    if limit <= 0:
        raise InvalidArgument(f"{field_name} must be positive, not {limit}", field=field_name)
    if offset < 0:
        raise InvalidArgument(f"offset must be >= 0, not {offset}", field="page_token")


def _check_label(label: str, field_name: str) -> str:
    if not isinstance(label, str) or not label.strip():
        raise InvalidArgument("label must not be empty", field=field_name)
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidArgument(
            f"label is longer than {MAX_LABEL_CHARS} characters", field=field_name
        )
    return label


def _check_ref(model_id: str, layer: str, unit: int, field_name: str = "neuron") -> None:
    try:
        validate_model_id(model_id)
    except InvalidArgument as e:
        raise InvalidArgument(str(e), field=f"{field_name}.model_id") from None
    if not layer or len(layer) > MAX_LAYER_CHARS:
        raise InvalidArgument(
            f"layer name must be 1-{MAX_LAYER_CHARS} characters", field=f"{field_name}.layer"
        )
    if unit < 0:
        raise InvalidArgument(f"unit must be >= 0, not {unit}", field=f"{field_name}.unit")


def check_filter(
    atlas: Atlas, flt: SearchFilter | None, field_name: str = "filter"
) -> SearchFilter | None:
    """Validate a filter: sane ranges, and every named model known (NotFound) and indexed."""
    if flt is None:
        return None
    for name in ("model_ids", "layers"):
        items = getattr(flt, name)
        if items is not None and len(items) > MAX_FILTER_ITEMS:
            raise InvalidArgument(
                f"at most {MAX_FILTER_ITEMS} {name}", field=f"{field_name}.{name}"
            )
    for name in ("depth_min", "depth_max"):
        v = getattr(flt, name)
        if v is not None and not (0.0 <= v <= 1.0):
            raise InvalidArgument(
                f"{name} must be in [0, 1], not {v}", field=f"{field_name}.{name}"
            )
    if flt.depth_min is not None and flt.depth_max is not None and flt.depth_min > flt.depth_max:
        raise InvalidArgument("depth_min is above depth_max", field=f"{field_name}.depth_min")
    if flt.min_clarity is not None and not math.isfinite(flt.min_clarity):
        raise InvalidArgument("min_clarity must be finite", field=f"{field_name}.min_clarity")
    if flt.label is not None:
        _check_label(flt.label, f"{field_name}.label")
    if flt.model_ids:
        catalogue = atlas.catalogue()
        for i, model_id in enumerate(flt.model_ids):
            try:
                validate_model_id(model_id)
            except InvalidArgument as e:
                raise InvalidArgument(str(e), field=f"{field_name}.model_ids[{i}]") from None
            entry = catalogue.get(model_id) or atlas.catalogue(fresh=True).get(model_id)
            if entry is None:
                from neuronatlas.core.errors import NotFound

                raise NotFound(f"model {model_id!r} is not in the catalogue")
            if entry.status is not ModelStatus.INDEXED:
                raise NotIndexed(f"model {model_id!r} is {entry.status.value}, not indexed")
    return flt


def _check_query(query: Query) -> None:
    if isinstance(query, TextQuery):
        if not query.text.strip():
            raise InvalidArgument("query text is empty", field="text")
        if len(query.text) > MAX_TEXT_CHARS:
            raise InvalidArgument(
                f"query text is longer than {MAX_TEXT_CHARS} characters", field="text"
            )
    elif isinstance(query, ImageQuery):
        if not query.data:
            raise InvalidArgument("query image is empty", field="image")
        if len(query.data) > MAX_IMAGE_BYTES:
            raise InvalidArgument(
                f"query image is larger than {MAX_IMAGE_BYTES} bytes", field="image"
            )
    elif isinstance(query, NeuronQuery):
        _check_ref(query.model_id, query.layer, query.unit)
    elif isinstance(query, VectorQuery):
        if np.asarray(query.values).size == 0:
            raise InvalidArgument("query vector is empty", field="vector")
    else:
        raise InvalidArgument("a query (text, image, neuron or vector) is required", field="query")


def query_vector(atlas: Atlas, query: Query) -> np.ndarray:
    """The (dim,) unit vector a query searches with."""
    _check_query(query)
    if isinstance(query, TextQuery):
        return atlas.embed_text(query.text)
    if isinstance(query, ImageQuery):
        return atlas.embed_image(query.data)
    if isinstance(query, NeuronQuery):
        return atlas.store.get_neuron(
            query.model_id, query.layer, query.unit, with_vector=True
        ).vector
    info = atlas.store.embedder
    if info is None:
        raise NotIndexed(
            "the store holds no indexed model yet: index one first (`neuronatlas index`)"
        )
    vec = check_vectors(np.asarray(query.values, dtype=np.float32), info.dim, what="vector")[0]
    return vec / np.linalg.norm(vec)


# -- the queries ----------------------------------------------------------------------------
def search_neurons(
    atlas: Atlas,
    query: Query,
    flt: SearchFilter | None = None,
    *,
    top_k: int = DEFAULT_TOP_K,
    per_model: int = 0,
    offset: int = 0,
    limit: int | None = None,
) -> Page[Hit]:
    """Neurons closest to ``query``. Without ``per_model``: hits ``offset..offset+limit`` of the
    best ``top_k``. With ``per_model`` = n: the best n neurons of models ``offset..offset+limit``
    of the best ``top_k`` models, models ordered by their best score."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise InvalidArgument(f"top_k must be in 1..{MAX_TOP_K}, not {top_k}", field="top_k")
    if not 0 <= per_model <= MAX_PER_MODEL:
        raise InvalidArgument(
            f"per_model must be in 0..{MAX_PER_MODEL}, not {per_model}", field="per_model"
        )
    limit = top_k if limit is None else limit
    check_page(offset, limit)
    _check_query(query)
    atlas.require_indexed()
    flt = check_filter(atlas, flt)
    vec = query_vector(atlas, query)
    end = min(offset + limit, top_k)
    if offset >= end:
        return Page([], None)
    if per_model:
        want = min(end + 1, top_k)
        hits = atlas.store.search_per_model(vec, per_model=per_model, flt=flt, max_models=want)
        groups: OrderedDict[str, list[Hit]] = OrderedDict()
        for h in hits:
            groups.setdefault(h.record.model_id, []).append(h)
        chosen = list(groups.values())[offset:end]
        more = len(groups) > end
        return Page([h for g in chosen for h in g], end if more else None)
    fetch = end - offset + (1 if end < top_k else 0)
    hits = atlas.store.search(vec, limit=fetch, flt=flt, offset=offset)
    more = len(hits) > end - offset
    return Page(hits[: end - offset], end if more else None)


def get_neuron(
    atlas: Atlas, model_id: str, layer: str, unit: int, with_vector: bool = False
) -> NeuronRecord:
    _check_ref(model_id, layer, unit)
    return atlas.store.get_neuron(model_id, layer, unit, with_vector=with_vector)


def describe_neuron(
    atlas: Atlas,
    model_id: str,
    layer: str,
    unit: int,
    labels: Sequence[str] | None = None,
    top_n: int = DEFAULT_TOP_N,
) -> Description:
    """Stored labels of a neuron, or ``labels`` scored against its vector (vocabulary "custom")."""
    if not 1 <= top_n <= MAX_TOP_N:
        raise InvalidArgument(f"top_n must be in 1..{MAX_TOP_N}, not {top_n}", field="top_n")
    custom = tuple(labels or ())
    if len(custom) > MAX_CUSTOM_LABELS:
        raise InvalidArgument(f"at most {MAX_CUSTOM_LABELS} labels", field="labels")
    for i, lab in enumerate(custom):
        _check_label(lab, f"labels[{i}]")
    _check_ref(model_id, layer, unit)
    rec = atlas.store.get_neuron(model_id, layer, unit, with_vector=bool(custom))
    if not custom:
        return Description(
            model_id,
            layer,
            unit,
            {v: ls[:top_n] for v, ls in rec.labels.items()},
            list(rec.label_set),
        )
    scorer = atlas.scorer(tuple(dict.fromkeys(custom)))
    x = rec.vector[None, :]
    top = [Label(l.label, float(l.score)) for l in scorer.top(x, n=top_n)[0]]
    return Description(model_id, layer, unit, {"custom": top}, list(scorer.label_sets(x)[0]))


def find_by_label(
    atlas: Atlas,
    label: str,
    *,
    prefix: bool = False,
    flt: SearchFilter | None = None,
    offset: int = 0,
    limit: int = 20,
) -> Page[Hit]:
    """Neurons carrying ``label`` (exact or prefix), ranked by the label's score."""
    _check_label(label, "label")
    check_page(offset, limit)
    if flt is not None and flt.label is not None:
        raise InvalidArgument(
            "filter.label cannot be combined with a label lookup", field="filter.label"
        )
    atlas.require_indexed()
    flt = check_filter(atlas, flt)
    hits = atlas.store.find_by_label(label, prefix=prefix, limit=limit + 1, offset=offset, flt=flt)
    return Page(hits[:limit], offset + limit if len(hits) > limit else None)


def list_models(atlas: Atlas, offset: int = 0, limit: int = 50) -> Page[ModelEntry]:
    check_page(offset, limit)
    models = sorted(atlas.catalogue(fresh=True).values(), key=lambda m: m.model_id)
    return Page(
        models[offset : offset + limit], offset + limit if len(models) > offset + limit else None
    )


def get_model(atlas: Atlas, model_id: str) -> ModelEntry:
    validate_model_id(model_id)
    return atlas.store.get_model(model_id)


def delete_model(atlas: Atlas, model_id: str) -> int:
    """Remove a model and its neurons; returns how many neuron records went with it."""
    validate_model_id(model_id)
    atlas.store.get_model(model_id)
    n = atlas.store.count(model_id)
    try:
        atlas.store.delete_model(model_id)
    finally:
        atlas.invalidate_catalogue()
    return n


def stats(atlas: Atlas) -> StoreStats:
    """Live neuron counts per model and layer, the store size and its embedder."""
    by_layer = atlas.store.counts_by_layer()
    models = []
    for entry in sorted(atlas.catalogue(fresh=True).values(), key=lambda m: m.model_id):
        layers = dict(by_layer.get(entry.model_id, {}))
        models.append(ModelCount(entry.model_id, entry.status, sum(layers.values()), layers))
    return StoreStats(
        total_neurons=sum(m.neurons for m in models),
        models=models,
        size_bytes=int(atlas.store.size_bytes()),
        embedder=atlas.store.embedder,
        backend=atlas.backend,
    )
