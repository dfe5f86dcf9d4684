"""Read queries over a knowledge store, shared by the gRPC servicer and the CLI's direct mode.

An :class:`Atlas` bundles what one process needs to answer queries: the store (opened once,
its catalogue snapshot is the one catalogue cache), the embedder (loaded lazily, once, checked
against the store; its text cache is the one text-query cache), the custom-label scorers and the
home directory (activation sketches, comparison and label caches). Its methods are the
in-process :class:`~neuronatlas.core.backend.QueryBackend`: they validate their arguments
(``core/validate.py``, raising ``InvalidArgument`` with the offending field) and return core
records. Nothing here knows about gRPC.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Generic, TypeVar

import numpy as np

from neuronatlas.core import validate as V
from neuronatlas.core.config import Home, HomeLike
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.embedder.text_cache import TextCache
from neuronatlas.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NeuronAtlasError,
    NotIndexed,
)
from neuronatlas.core.records import (
    NEURON_KIND,
    EmbedderInfo,
    Label,
    ModelEntry,
    ModelStatus,
    NeuronRecord,
    check_vectors,
)
from neuronatlas.core.store.base import Hit, KnowledgeStore, LabelScope, SearchFilter
from neuronatlas.core.store.integrity import StoreReport

if TYPE_CHECKING:
    from neuronatlas.core.audit import Audit
    from neuronatlas.core.backend import QueryBackend
    from neuronatlas.core.compare import Comparison
    from neuronatlas.core.explain import Explanation
    from neuronatlas.core.labels import LabelScorer

__all__ = [
    "Atlas",
    "Description",
    "ImageQuery",
    "ModelCount",
    "NeuronQuery",
    "Page",
    "Query",
    "Search",
    "StoreStats",
    "TextQuery",
    "VectorQuery",
    "check_search",
    "naming",
    "top_labels",
    "top_labels_by_vocabulary",
]

T = TypeVar("T")

MAX_TOP_LABELS = 5  # labels a search hit carries (the best of each vocabulary)


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
    kind: str = NEURON_KIND  # a component kind: search with that component's vector


@dataclass(frozen=True, eq=False)
class VectorQuery:
    values: np.ndarray


Query = TextQuery | ImageQuery | NeuronQuery | VectorQuery


@dataclass(frozen=True, eq=False)
class Search:
    """One search of a batch (``Atlas.search_many``): the arguments of ``search_neurons``."""

    query: Query
    flt: SearchFilter | None = None
    top_k: int = V.DEFAULT_TOP_K
    per_model: int = 0
    offset: int = 0
    limit: int | None = None
    fields: Sequence[str] | None = None  # as for search_neurons (the server's hit fields)


# -- results -----------------------------------------------------------------------------
@dataclass
class Page(Generic[T]):
    """One page of results; ``next_offset`` (the offset of the next page) is None on the last."""

    items: list[T]
    next_offset: int | None = None


@dataclass
class Description:
    model_id: str
    layer: str
    unit: int
    labels: dict[str, list[Label]]  # vocabulary (or "custom") -> top labels
    label_set: list[str]
    kind: str = NEURON_KIND


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


def top_labels_by_vocabulary(rec: NeuronRecord, n: int = MAX_TOP_LABELS) -> list[tuple[str, Label]]:
    """(vocabulary, its best label) of at most ``n`` vocabularies, best label first: what a
    search hit reports about a neuron."""
    best = [(vocab, ls[0]) for vocab, ls in rec.labels.items() if ls]
    return sorted(best, key=lambda vl: -vl[1].score)[:n]


def top_labels(rec: NeuronRecord, n: int = MAX_TOP_LABELS) -> list[Label]:
    """Best label of each vocabulary, best first (see :func:`top_labels_by_vocabulary`)."""
    return [lab for _, lab in top_labels_by_vocabulary(rec, n)]


def _check_query(query: object) -> None:
    if isinstance(query, TextQuery):
        V.check_text(query.text)
    elif isinstance(query, ImageQuery):
        V.check_image_bytes(query.data)
    elif isinstance(query, NeuronQuery):
        V.check_ref(query.model_id, query.layer, query.unit, kind=query.kind)
    elif isinstance(query, VectorQuery):
        V.check_vector_size(np.asarray(query.values).size)
    else:
        raise V.no_query()


def check_search(s: Search) -> Search:
    """The checks ``Atlas.search_neurons`` makes before it searches; ``s`` with its filter as
    ``check_filter`` returns it."""
    V.check_range(s.top_k, 1, V.MAX_TOP_K, "top_k")
    V.check_range(s.per_model, 0, V.MAX_PER_MODEL, "per_model")
    V.check_page(s.offset, s.top_k if s.limit is None else s.limit)
    _check_query(s.query)
    flt = V.check_filter(s.flt)
    return s if flt is s.flt else replace(s, flt=flt)


@contextmanager
def naming(item: str) -> Iterator[None]:
    """Errors raised inside name the batch ``item`` they came from."""
    try:
        yield
    except NeuronAtlasError as e:
        e.args = (f"{item}: {e}", *e.args[1:])
        if isinstance(e, InvalidArgument):
            e.field = f"{item}.{e.field}" if e.field else item
        raise


EmbedderSource = Embedder | Callable[[], Embedder] | None


# -- the per-process query context -----------------------------------------------------------
class Atlas:
    """Store + embedder + home for one process; the in-process ``QueryBackend``. Thread-safe;
    share one per process.

    ``embedder``: an ``Embedder``, a zero-argument factory returning one (loaded on the first
    text/image query), or None (text and image queries and audits then fail with
    FailedPrecondition). ``home``: where comparisons find activation sketches and keep their
    cache and audits keep label embeddings; without one, comparisons fail with
    FailedPrecondition. ``compare_cache=False`` recomputes every comparison.
    """

    def __init__(
        self,
        store: KnowledgeStore,
        embedder: EmbedderSource = None,
        *,
        backend: str = "",
        home: HomeLike | None = None,
        text_cache_size: int = 4096,
        scorer_cache_size: int = 16,
        compare_cache: bool = True,
    ):
        self.store = store
        self.backend = backend
        self.home: Home | None = Home.of(home) if home is not None else None
        self.compare_cache = compare_cache
        self._embedder: Embedder | None = None
        self._embedder_factory: Callable[[], Embedder] | None = None
        if isinstance(embedder, Embedder) or hasattr(embedder, "encode_text"):
            self._embedder = embedder  # type: ignore[assignment]
        elif embedder is not None:
            self._embedder_factory = embedder
        self._embedder_checked = False
        self._embedder_lock = threading.Lock()
        # Text queries for an embedder without a text cache of its own (plug-ins, test doubles);
        # open_clip embedders cache texts themselves, and that cache is used instead.
        self._text_cache = TextCache(text_cache_size)
        self._scorers: OrderedDict[tuple[str, ...], LabelScorer] = OrderedDict()
        self._scorer_cache_size = max(0, int(scorer_cache_size))
        self._scorer_lock = threading.Lock()

    # embedder ---------------------------------------------------------------------------
    def embedder(self) -> Embedder:
        """The embedder, loaded once and checked against the store's embedder identity."""
        if self._embedder is not None and self._embedder_checked:
            return self._embedder
        with self._embedder_lock:
            if self._embedder is None:
                if self._embedder_factory is None:
                    raise FailedPrecondition(
                        "no embedder is loaded here: only vector and neuron queries work"
                    )
                self._embedder = self._embedder_factory()
            if not self._embedder_checked:
                V.check_embedder(self.store.embedder, self._embedder.info)
                self._embedder_checked = True
            return self._embedder

    @property
    def text_cache(self) -> TextCache:
        """The one cache text queries are answered from: the embedder's own if it has one."""
        own = getattr(self.embedder(), "text_cache", None)
        return own if isinstance(own, TextCache) else self._text_cache

    def embed_text(self, text: str) -> np.ndarray:
        """Embedding of a query text; a repeated text comes from the text cache (no model call)."""
        row: np.ndarray = self.embed_texts([text])[0]
        return row

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) embeddings of query texts, those not in the text cache in one model call."""
        emb = self.embedder()
        if isinstance(getattr(emb, "text_cache", None), TextCache):
            return np.asarray(emb.encode_text(list(texts)), dtype=np.float32)
        rows = self._text_cache.lookup(texts)
        missing = sorted({t for t, row in zip(texts, rows, strict=True) if row is None})
        if missing:
            fresh = np.asarray(emb.encode_text(missing), dtype=np.float32)
            self._text_cache.store(missing, fresh)
            new = dict(zip(missing, fresh, strict=True))
            rows = [new[t] if row is None else row for t, row in zip(texts, rows, strict=True)]
        return np.stack([np.asarray(r, dtype=np.float32) for r in rows])

    def embed_image(self, data: bytes) -> np.ndarray:
        rgb = V.decode_image(data)  # formats, pixel count and damage checked there
        return np.asarray(self.embedder().encode_images([rgb])[0], dtype=np.float32)

    def scorer(self, labels: tuple[str, ...]) -> LabelScorer:
        """A ``LabelScorer`` for a custom label list (cached: prompt embeddings cost model
        calls)."""
        from neuronatlas.core.labels import LabelScorer

        with self._scorer_lock:
            scorer = self._scorers.get(labels)
            if scorer is None:
                scorer = LabelScorer(self.embedder(), list(labels), name="custom")
                if self._scorer_cache_size:
                    self._scorers[labels] = scorer
                    while len(self._scorers) > self._scorer_cache_size:
                        self._scorers.popitem(last=False)
            else:
                self._scorers.move_to_end(labels)
        return scorer

    def query_vector(self, query: Query) -> np.ndarray:
        """The (dim,) unit vector a query searches with."""
        _check_query(query)
        if isinstance(query, TextQuery):
            return self.embed_text(query.text)
        if isinstance(query, ImageQuery):
            return self.embed_image(query.data)
        if isinstance(query, NeuronQuery):
            return self.store.get_neuron(
                query.model_id,
                query.layer,
                query.unit,
                with_vector=True,
                kind=V.check_kind(query.kind),
            ).vector
        info = self.store.embedder
        if info is None:
            raise NotIndexed(
                "the store holds no indexed model yet: index one first (`neuronatlas index`)"
            )
        vec = check_vectors(np.asarray(query.values, dtype=np.float32), info.dim, what="vector")[0]
        unit: np.ndarray = vec / np.linalg.norm(vec)
        return unit

    # -- the queries (QueryBackend) -------------------------------------------------------------
    def search_neurons(
        self,
        query: Query,
        flt: SearchFilter | None = None,
        *,
        top_k: int = V.DEFAULT_TOP_K,
        per_model: int = 0,
        offset: int = 0,
        limit: int | None = None,
        fields: Sequence[str] | None = None,
    ) -> Page[Hit]:
        """Neurons closest to ``query``. Without ``per_model``: hits ``offset..offset+limit`` of
        the best ``top_k``. With ``per_model`` = n: the best n neurons of models
        ``offset..offset+limit`` of the best ``top_k`` models, models ordered by their best
        score. ``limit`` defaults to ``top_k``. ``fields``: payload keys the hits need (see
        ``KnowledgeStore.search``; the per-model path reads whole payloads)."""
        search = check_search(Search(query, flt, top_k, per_model, offset, limit, fields))
        return self._search(self.query_vector(query), search)

    def _search(self, vec: np.ndarray, s: Search) -> Page[Hit]:
        """``s`` (as ``check_search`` returns it) with its query's vector ``vec``."""
        top_k, per_model, offset, fields, flt = s.top_k, s.per_model, s.offset, s.fields, s.flt
        limit = top_k if s.limit is None else s.limit
        end = min(offset + limit, top_k)
        if offset >= end:
            return Page([], None)
        if per_model:
            want = min(end + 1, top_k)
            hits = self.store.search_per_model(vec, per_model=per_model, flt=flt, max_models=want)
            groups: OrderedDict[str, list[Hit]] = OrderedDict()
            for h in hits:
                groups.setdefault(h.record.model_id, []).append(h)
            chosen = list(groups.values())[offset:end]
            more = len(groups) > end
            return Page([h for g in chosen for h in g], end if more else None)
        fetch = end - offset + (1 if end < top_k else 0)
        hits = self.store.search(vec, limit=fetch, flt=flt, offset=offset, fields=fields)
        more = len(hits) > end - offset
        return Page(hits[: end - offset], end if more else None)

    def search_many(
        self,
        searches: Sequence[Search],
        name: str = "searches",
        before_each: Callable[[int], None] | None = None,
    ) -> list[Page[Hit]]:
        """Several searches, answered in order as ``search_neurons`` answers each; their text
        queries are embedded together (one text-model call for those not cached). All or
        nothing: every search is checked (and its vector, stored neuron or image looked up)
        before any text is embedded or any search runs, and the first one that fails fails the
        batch, its error naming it (``name[i]``: the message is prefixed with it and an
        invalid argument's field becomes e.g. ``searches[3].top_k``). ``before_each(i)`` runs before
        search ``i`` (the server's deadline check: a call past its deadline stops there)."""
        V.check_range(len(searches), 1, V.MAX_BATCH_SEARCHES, name)
        checked: list[Search] = []
        vectors: list[np.ndarray | None] = []
        for i, s in enumerate(searches):
            with naming(f"{name}[{i}]"):
                checked.append(check_search(s))
                # every other query's vector now, in turn (an image decoded and embedded alone:
                # one decoded image held at a time); the texts together below
                text = isinstance(s.query, TextQuery)
                vectors.append(None if text else self.query_vector(s.query))
        texts = [s.query.text for s in searches if isinstance(s.query, TextQuery)]
        embedded = iter(self.embed_texts(texts) if texts else ())
        pages = []
        for i, (s, vec) in enumerate(zip(checked, vectors, strict=True)):
            if before_each is not None:
                before_each(i)
            with naming(f"{name}[{i}]"):
                pages.append(self._search(next(embedded) if vec is None else vec, s))
        return pages

    def get_neuron(
        self,
        model_id: str,
        layer: str,
        unit: int,
        *,
        with_vector: bool = False,
        kind: str = NEURON_KIND,
    ) -> NeuronRecord:
        """One neuron (or the component ``kind:unit`` of the layer)."""
        V.check_ref(model_id, layer, unit, kind=kind)
        return self.store.get_neuron(
            model_id, layer, unit, with_vector=with_vector, kind=V.check_kind(kind)
        )

    def describe_neuron(
        self,
        model_id: str,
        layer: str,
        unit: int,
        *,
        labels: Sequence[str] | None = None,
        top_n: int = V.DEFAULT_TOP_N,
        kind: str = NEURON_KIND,
    ) -> Description:
        """Stored labels of a neuron (or component), or ``labels`` scored against its vector
        (vocabulary "custom")."""
        V.check_range(top_n, 1, V.MAX_TOP_N, "top_n")
        custom = V.check_labels(labels or ())
        V.check_ref(model_id, layer, unit, kind=kind)
        kind = V.check_kind(kind)
        rec = self.store.get_neuron(model_id, layer, unit, with_vector=bool(custom), kind=kind)
        if not custom:
            return Description(
                model_id,
                layer,
                unit,
                {v: ls[:top_n] for v, ls in rec.labels.items()},
                list(rec.label_set),
                kind,
            )
        scorer = self.scorer(tuple(dict.fromkeys(custom)))
        x = rec.vector[None, :]
        top = [Label(lab.label, float(lab.score)) for lab in scorer.top(x, n=top_n)[0]]
        return Description(
            model_id, layer, unit, {"custom": top}, list(scorer.label_sets(x)[0]), kind
        )

    def find_by_label(
        self,
        label: str,
        *,
        prefix: bool = False,
        flt: SearchFilter | None = None,
        offset: int = 0,
        limit: int = 20,
        scope: LabelScope | str = LabelScope.SET,
    ) -> Page[Hit]:
        """Neurons carrying ``label`` (exact or prefix) in ``scope`` (their adaptive label set
        by default; ``top1``: their best label; ``top5``: any vocabulary's top labels),
        ranked by the label's score."""
        V.check_label_lookup(label, flt)
        scope = V.check_label_scope(scope)
        V.check_page(offset, limit)
        flt = V.check_filter(flt)
        hits = self.store.find_by_label(
            label, prefix=prefix, limit=limit + 1, offset=offset, flt=flt, scope=scope
        )
        return Page(hits[:limit], offset + limit if len(hits) > limit else None)

    def list_models(self, *, offset: int = 0, limit: int = 50) -> Page[ModelEntry]:
        """Catalogue entries ordered by model id."""
        V.check_page(offset, limit)
        models = self.store.list_models()
        more = len(models) > offset + limit
        return Page(models[offset : offset + limit], offset + limit if more else None)

    def get_model(self, model_id: str) -> ModelEntry:
        V.check_model_id(model_id)
        return self.store.get_model(model_id)

    def delete_model(self, model_id: str) -> int:
        """Remove a model and its neurons; returns how many neuron records went with it.
        Atomic (``KnowledgeStore.delete_model``): readers never see it half deleted."""
        V.check_model_id(model_id)
        return self.store.delete_model(model_id)

    def update_model(
        self,
        model_id: str,
        *,
        display_name: str | None = None,
        tags: Sequence[str] | None = None,
        notes: str | None = None,
        training_data: str | None = None,
    ) -> ModelEntry:
        """Change a model's metadata (the arguments that are not None) in one catalogue write
        (``core/catalogue.py``); the same signature as ``Client.update_model``."""
        from neuronatlas.core.catalogue import update_metadata

        given = {
            "display_name": display_name,
            "tags": tags,
            "notes": notes,
            "training_data": training_data,
        }
        return update_metadata(
            self.store, model_id, {k: v for k, v in given.items() if v is not None}
        )

    def verify_store(self) -> StoreReport:
        """The full integrity check of the store (admin): every point read back, counts and
        content digests per model against what was recorded at indexing time."""
        return self.store.verify()

    def stats(self) -> StoreStats:
        """Live neuron counts per model and layer, the store size and its embedder."""
        by_layer = self.store.counts_by_layer()
        models = []
        for entry in self.store.list_models():
            layers = dict(by_layer.get(entry.model_id, {}))
            models.append(ModelCount(entry.model_id, entry.status, sum(layers.values()), layers))
        return StoreStats(
            total_neurons=sum(m.neurons for m in models),
            models=models,
            size_bytes=int(self.store.size_bytes()),
            embedder=self.store.embedder,
            backend=self.backend,
        )

    def compare_models(
        self,
        model_a: str,
        model_b: str,
        layers: Sequence[str] | None = None,
        *,
        tau: float | None = None,
        activation: bool = True,
        offset: int = 0,
        limit: int | None = 50,
        kind: str = NEURON_KIND,
    ) -> Comparison:
        """Compare two indexed models (``core.compare``); ``Comparison.pairs`` holds matched
        pairs ``offset..offset+limit`` (every pair from ``offset`` on with ``limit=None``).
        ``kind``: compare their neurons (default) or their components of that kind."""
        from neuronatlas.core.compare import compare_models

        V.check_compare(model_a, model_b, layers, tau, kind)
        V.check_page(offset, sys.maxsize if limit is None else limit)
        if self.home is None:
            raise FailedPrecondition(
                "comparisons need a home directory (activation sketches, result cache); "
                "this one has none"
            )
        return compare_models(
            self.store,
            model_a,
            model_b,
            list(layers) if layers else None,
            home=self.home,
            tau=tau,
            activation=activation,
            offset=offset,
            limit=sys.maxsize if limit is None else limit,
            use_cache=self.compare_cache,
            kind=V.check_kind(kind),
        )

    def audit_model(
        self,
        model_id: str,
        valid: Sequence[str] = (),
        spurious: Sequence[str] = (),
        *,
        threshold: float | None = None,
        kind: str = NEURON_KIND,
        class_name: str | None = None,
    ) -> Audit:
        """Audit a model's neurons (or components of ``kind``) against valid and spurious
        concepts (``core.audit``); with ``class_name`` also weighted by their importance for
        that class."""
        from neuronatlas.core.audit import audit_model

        V.check_audit(model_id, valid, spurious, threshold, kind, class_name)
        return audit_model(
            self.store,
            self.embedder(),
            model_id,
            list(valid),
            list(spurious),
            threshold=threshold,
            cache_dir=self.home.labels_cache if self.home is not None else None,
            kind=V.check_kind(kind),
            class_name=class_name,
        )

    def explain_class(
        self,
        model_id: str,
        class_name: str,
        *,
        kinds: Sequence[str] | None = None,
        top_n: int = 5,
    ) -> Explanation:
        """The neurons and components that drive ``class_name`` most (``core.explain``): the
        ``top_n`` most important of each kind (``kinds``: only those; None: every kind)."""
        from neuronatlas.core.explain import explain_class

        V.check_explain(model_id, class_name, kinds, top_n)
        return explain_class(self.store, model_id, class_name, kinds, top_n)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if TYPE_CHECKING:  # mypy checks that the Atlas is a QueryBackend

    def _is_query_backend(atlas: Atlas) -> QueryBackend:
        return atlas
