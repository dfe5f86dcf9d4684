"""Store semantics shared by both Qdrant backends.

``QdrantStoreBase`` implements the whole ``KnowledgeStore`` contract (validation, the
visibility rule, filters, per-model grouping, label lookups) on top of a handful of
primitive point operations that each backend maps to its own client (``edge.py`` to Qdrant
Edge, ``remote.py`` to qdrant-client). Filters travel as backend-neutral ``Cond`` lists.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
import uuid
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from neuronatlas.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotIndexed,
    StoreCorrupted,
    StoreError,
)
from neuronatlas.core.records import (
    KINDS,
    NEURON_KIND,
    EmbedderInfo,
    ModelEntry,
    ModelStatus,
    NeuronRecord,
    check_vectors,
    model_point_id,
    neuron_key,
    neuron_point_id,
    slot_key,
    validate_model_id,
)
from neuronatlas.core.store.base import Hit, KnowledgeStore, LabelScope, SearchFilter
from neuronatlas.core.store.integrity import (
    INTEGRITY_KEY,
    RETIRE_KEY,
    TOMBSTONE_KIND,
    ModelCheck,
    SlotTally,
    StoreReport,
    seal_of,
)
from neuronatlas.core.validate import (
    check_embedder,
    check_filter,
    check_kinds,
    check_label,
    check_label_scope,
    check_page,
)

log = logging.getLogger("neuronatlas.store")

# HNSW parameters (both backends). Tuned with bench/bench_store.py: see bench/results/store.md.
# 16 -> 32: recall@10 at 300k 0.954 -> 0.991 for +10% build time (bench/results/store.md)
HNSW_M = 32
HNSW_EF_CONSTRUCT = 128
SEARCH_HNSW_EF = 128
FULL_SCAN_THRESHOLD_KB = 10_000

# Payload fields with an index. Only ``slot`` (in every read filter) gets payload-aware
# HNSW links; the others are plain lookups, which keeps the graph build cheap. The three label
# fields serve the three label scopes (``LabelScope.payload_field``): top_label (top-1),
# label_set (the adaptive set, the default), label_all (top-5 of each vocabulary + the set).
KEYWORD_FIELDS = ("kind", "model_id", "slot", "layer", "label_all", "label_set", "top_label")
HNSW_KEYWORD_FIELDS = ("slot",)
FLOAT_FIELDS = ("depth", "clarity")

# Job records (``neuronatlas.core.jobs``) are catalogue points of this kind, ids in their own
# uuid5 namespace (never a model's point id).
JOB_KIND = "job"
_JOB_NAMESPACE = uuid.UUID("5f0c6f55-0b7e-4f4e-8a53-4a6f2b9c7d21")


def job_point_id(job_id: str) -> str:
    return str(uuid.uuid5(_JOB_NAMESPACE, job_id))


WRITE_BATCH = 256  # points per write request
VERIFY_BATCH = 512  # points per read when sealing or verifying (with vectors and payloads)
FACET_LIMIT = 1_000_000  # "all values" for facet counts
# Fields read when ranking label matches (full payloads only for the returned page).
LABEL_RANK_FIELDS = ["model_id", "layer", "unit", "kind", "labels"]
# search_per_model: the first, unrestricted search fetches per_model * models * OVERFETCH
# hits (models: max_models when given; at least MIN, at most MAX); models it may leave
# incomplete get their own query.
PER_MODEL_OVERFETCH = 4
PER_MODEL_MIN_FETCH = 100
PER_MODEL_MAX_FETCH = 4096
PER_MODEL_RANK_FIELDS = ["slot", "model_id", "layer", "unit", "kind"]


@dataclass(frozen=True)
class Cond:
    """One backend-neutral filter condition; all conditions of a list must hold."""

    key: str
    any: tuple[Any, ...] | None = None  # value in this set (a list field: any element)
    gte: float | None = None
    lte: float | None = None


class Point:
    """A point as returned by a backend primitive."""

    __slots__ = ("_id", "_source", "payload", "score", "vector")

    def __init__(
        self,
        id: str,
        payload: dict[str, Any],
        vector: list[float] | None = None,
        score: float = 0.0,
    ):
        self._id: str | None = id
        self._source: Any = None
        self.payload, self.vector, self.score = payload, vector, score

    @classmethod
    def read(
        cls, source: Any, payload: dict[str, Any], vector: list[float] | None, score: float
    ) -> Point:
        """A point read from an engine whose point ``source`` has an ``id``: read and turned
        into a string only when asked for (1.6 us a point with Qdrant Edge, whose ids are
        ``uuid.UUID`` objects), which a search answer never does."""
        point = cls("", payload, vector, score)
        point._id, point._source = None, source
        return point

    @property
    def id(self) -> str:
        if self._id is None:
            self._id, self._source = str(self._source.id), None
        return self._id

    def __repr__(self) -> str:
        return f"Point(id={self.id!r}, payload={self.payload!r}, score={self.score!r})"

    def dense(self) -> list[float]:
        """The vector of a point that must carry one (points to write)."""
        if self.vector is None:
            raise FailedPrecondition(f"point {self.id} has no vector")
        return self.vector


@dataclass
class QuerySpec:
    vector: list[float]
    conds: list[Cond]
    limit: int
    offset: int = 0
    with_vector: bool = False
    exact: bool = False
    hnsw_ef: int | None = None


@dataclass
class _Visibility:
    """Catalogue snapshot: live slot of each indexed model, and all known model ids."""

    live: dict[str, str] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)
    at: float = 0.0
    stored_slots: frozenset[str] | None = None  # slots present in the neuron store (lazy)
    stored_kinds: frozenset[str] | None = None  # record kinds present in the store (lazy)


def records_to_points(records: Sequence[NeuronRecord], dim: int) -> list[Point]:
    """Validate a whole batch and turn it into points; raises before anything is written."""
    if not isinstance(records, Sequence) or len(records) == 0:
        raise InvalidArgument("empty neuron batch", field="records")
    vecs = []
    for r in records:
        v = np.asarray(r.vector, dtype=np.float32).reshape(-1)
        if v.shape[0] != dim:
            raise InvalidArgument(
                f"neuron {r.key} has a {v.shape[0]}-d vector, the store's embedder gives {dim}-d",
                field="vector",
            )
        vecs.append(v)
    arr = check_vectors(np.stack(vecs), dim, what="vector")
    points = []
    for r, v in zip(records, arr, strict=False):
        validate_model_id(r.model_id)
        if not isinstance(r.layer, str) or not r.layer:
            raise InvalidArgument(f"neuron of {r.model_id} has an empty layer name", field="layer")
        if r.kind not in KINDS:
            raise InvalidArgument(
                f"neuron {r.key}: kind must be one of {', '.join(KINDS)}", field="kind"
            )
        if int(r.unit) < 0 or int(r.generation) < 0:
            raise InvalidArgument(f"neuron {r.key}: unit and generation must be >= 0", field="unit")
        for name in ("depth", "clarity", "polysemanticity", "polysemanticity_sl", "redundancy"):
            if not math.isfinite(float(getattr(r, name))):
                raise InvalidArgument(f"neuron {r.key}: {name} is not finite", field=name)
        points.append(Point(r.point_id, r.to_payload(), (v / np.linalg.norm(v)).tolist()))
    return points


def _vector(p: Point, with_vector: bool) -> list[float] | None:
    """The vector of a point read with its vector; a point stored without one is damage."""
    if not with_vector:
        return None
    if p.vector is None:
        raise StoreCorrupted(
            f"neuron point {p.id} has no vector: the store's vector storage is damaged "
            "(run `neuronatlas verify`)"
        )
    return p.vector


def label_score(payload: dict[str, Any], labels: set[str]) -> float:
    """Best score any of ``labels`` has in a neuron's payload (0 if only in the label set)."""
    best = None
    for entries in payload.get("labels", {}).values():
        for e in entries:
            if e["label"] in labels and (best is None or e["score"] > best):
                best = float(e["score"])
    return best if best is not None else 0.0


_Rank = tuple[float, str, str, int, str]  # (-score, model_id, layer, unit, kind)


def _hit_order(h: Hit) -> _Rank:
    return (-h.score, h.record.model_id, h.record.layer, h.record.unit, h.record.kind)


def _point_order(p: Point) -> _Rank:
    """``_hit_order`` of a point read with (at least) PER_MODEL_RANK_FIELDS."""
    return (
        -p.score,
        p.payload["model_id"],
        p.payload["layer"],
        int(p.payload["unit"]),
        str(p.payload.get("kind", NEURON_KIND)),
    )


class _ReadGate:
    """Keeps reads that leave out the visibility filters (``_slot_conds``, ``_kind_conds``:
    "every stored slot / kind is visible anyway") apart from neuron writes, which may add a
    slot or kind readers must not see (a model being indexed while the store serves). A read
    may skip the filters only while no write is in flight, and a write waits for the reads
    that skip them to finish; the cached stored slots / kinds are computed by such reads, so
    they are never older than the last write."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writers = 0
        self._local = threading.local()

    @property
    def may_skip(self) -> bool:
        """Whether this thread's current read may leave the visibility filters out."""
        return bool(getattr(self._local, "skip", False))

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        if getattr(self._local, "skip", None) is not None:  # nested: the outer read decides
            yield
            return
        with self._cond:
            skip = self._writers == 0
            if skip:
                self._readers += 1
        self._local.skip = skip
        try:
            yield
        finally:
            self._local.skip = None
            if skip:
                with self._cond:
                    self._readers -= 1
                    if not self._readers:
                        self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers += 1
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._writers -= 1


_F = TypeVar("_F", bound=Callable[..., Any])


def _gated_read(method: _F) -> _F:
    """A read that may leave the visibility filters out (see ``_ReadGate``)."""

    @functools.wraps(method)
    def wrapper(self: QdrantStoreBase, *args: Any, **kwargs: Any) -> Any:
        with self._gate.read():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class QdrantStoreBase(KnowledgeStore):
    """The contract, written once over backend primitives (``_n_*`` neurons, ``_m_*`` catalogue)."""

    #: seconds a catalogue snapshot stays valid (None: only refreshed by our own writes)
    visibility_ttl: float | None = None
    #: HNSW build parameters of a new neuron collection, and the search-time ef
    hnsw_m: int = HNSW_M
    hnsw_ef_construct: int = HNSW_EF_CONSTRUCT
    search_ef: int = SEARCH_HNSW_EF
    #: drop the visibility filter when every stored slot is live; only safe when no other
    #: process can write behind our back (the embedded store holds an exclusive lock)
    skip_full_visibility_filter: bool = False

    def __init__(self) -> None:
        self._vis: _Visibility | None = None
        self._mutex = threading.RLock()
        self._gate = _ReadGate()

    # -- backend primitives ----------------------------------------------------------------
    @abstractmethod
    def _load_embedder(self) -> EmbedderInfo | None: ...

    @abstractmethod
    def _save_embedder(self, info: EmbedderInfo) -> None:
        """Persist the identity and create the neuron collection/shard for ``info.dim``."""

    @abstractmethod
    def _n_upsert(self, points: list[Point]) -> None: ...

    @abstractmethod
    def _n_query(
        self, specs: list[QuerySpec], with_payload: bool | list[str] = True
    ) -> list[list[Point]]:
        """One result list per spec; ``with_payload`` a list: only those payload fields."""

    @abstractmethod
    def _n_scroll(
        self,
        conds: list[Cond],
        limit: int,
        offset: Any,
        with_payload: bool | list[str],
        with_vector: bool,
    ) -> tuple[list[Point], Any]: ...

    @abstractmethod
    def _n_count(self, conds: list[Cond]) -> int: ...

    @abstractmethod
    def _n_facet(self, key: str, conds: list[Cond]) -> dict[Any, int]: ...

    @abstractmethod
    def _n_retrieve(self, ids: list[str], with_vector: bool) -> list[Point]: ...

    @abstractmethod
    def _n_delete(self, conds: list[Cond]) -> None: ...

    @abstractmethod
    def _m_put(self, point_id: str, payload: dict[str, Any]) -> None: ...

    @abstractmethod
    def _m_get(self, point_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def _n_count_vectors(self, conds: list[Cond]) -> int:
        """Like ``_n_count``, counting only points that have their vector."""

    @abstractmethod
    def _m_all(self, kind: str = "model") -> list[dict[str, Any]]:
        """Payloads of every catalogue point of ``kind`` ("model": the entries; TOMBSTONE_KIND:
        models whose delete is in progress)."""

    @abstractmethod
    def _m_delete(self, point_id: str) -> None: ...

    # -- embedder identity -----------------------------------------------------------------
    @property
    def embedder(self) -> EmbedderInfo | None:
        return self._load_embedder()

    def bind_embedder(self, info: EmbedderInfo) -> None:
        if not isinstance(info, EmbedderInfo) or int(info.dim) <= 0 or not info.name:
            raise InvalidArgument(f"not a valid embedder identity: {info!r}", field="embedder")
        with self._mutex:
            current = self._load_embedder()
            check_embedder(current, info)
            if current is None:
                self._save_embedder(info)

    def _bound_dim(self, for_write: bool) -> int:
        info = self._load_embedder()
        if info is None:
            if for_write:
                raise FailedPrecondition(
                    "no embedder bound to the store: call bind_embedder() first"
                )
            raise NotIndexed("the store is empty: no model has been indexed yet")
        return info.dim

    # -- visibility --------------------------------------------------------------------------
    def _visibility(self) -> _Visibility:
        vis = self._vis
        stale = (
            self.visibility_ttl is not None
            and vis is not None
            and time.monotonic() - vis.at > self.visibility_ttl
        )
        if vis is None or stale:
            vis = self._refresh_visibility()
        return vis

    def _refresh_visibility(self) -> _Visibility:
        entries = [ModelEntry.from_payload(p) for p in self._m_all()]
        vis = _Visibility(
            live={
                e.model_id: slot_key(e.model_id, e.generation)
                for e in entries
                if e.status == ModelStatus.INDEXED
            },
            known={e.model_id for e in entries},
            at=time.monotonic(),
        )
        self._vis = vis
        return vis

    def _live_slot(self, model_id: str) -> str:
        vis = self._visibility()
        if model_id not in vis.live:
            vis = self._refresh_visibility()  # another writer may have flipped it meanwhile
        if model_id in vis.live:
            return vis.live[model_id]
        if model_id in vis.known:
            raise NotIndexed(f"model {model_id!r} is registered but not indexed")
        raise NotFound(f"unknown model {model_id!r}", resource_type="model", resource_name=model_id)

    def _live_models(self, flt: SearchFilter | None) -> dict[str, str]:
        """{model_id: live slot} the filter allows; NotFound/NotIndexed as the contract says."""
        if flt is not None and flt.model_ids is not None:
            check_filter(flt)  # e.g. an empty model list
            return {m: self._live_slot(m) for m in dict.fromkeys(flt.model_ids)}
        live = dict(self._visibility().live)
        if not live:
            live = dict(self._refresh_visibility().live)
        if not live:
            raise NotIndexed("no model is indexed yet")
        return live

    def _slot_conds(self, flt: SearchFilter | None) -> list[Cond]:
        """The visibility condition. Left out when every stored slot is live anyway (the
        common case), which saves a payload check per visited graph node."""
        live = self._live_models(flt)
        self._bound_dim(for_write=False)
        vis = self._visibility()
        if (
            self.skip_full_visibility_filter
            and (flt is None or flt.model_ids is None)
            and self._gate.may_skip
        ):
            if vis.stored_slots is None:
                vis.stored_slots = frozenset(str(v) for v in self._n_facet("slot", []))
            if vis.stored_slots <= set(live.values()):
                return []
        return [Cond("slot", any=tuple(sorted(live.values())))]

    def _filter_conds(self, flt: SearchFilter | None) -> list[Cond]:
        """Conditions of a SearchFilter other than the model restriction. The filter is checked
        by the one request validator (``core.validate``) first, so a bad one gets the same
        refusal here as through the queries and the service."""
        flt = check_filter(flt)
        conds = self._kind_conds(flt.kinds if flt is not None else None)
        if flt is None:
            return conds
        if flt.layers is not None:
            conds.append(Cond("layer", any=tuple(flt.layers)))
        if flt.depth_min is not None or flt.depth_max is not None:
            conds.append(Cond("depth", gte=flt.depth_min, lte=flt.depth_max))
        if flt.min_clarity is not None:
            conds.append(Cond("clarity", gte=flt.min_clarity))
        if flt.label is not None:
            scope = flt.label_scope or LabelScope.SET
            conds.append(Cond(scope.payload_field, any=(flt.label,)))
        return conds

    def _kind_conds(self, kinds: Sequence[str] | None) -> list[Cond]:
        """The kind restriction (None: neurons only). Left out when it keeps every stored kind
        (a store without components), on a store no other process writes to, like the slot
        condition in ``_slot_conds``."""
        wanted = tuple(sorted(set(kinds))) if kinds else (NEURON_KIND,)
        if (
            self.skip_full_visibility_filter
            and self._gate.may_skip
            and self._load_embedder() is not None
        ):
            vis = self._visibility()
            if vis.stored_kinds is None:
                vis.stored_kinds = frozenset(str(v) for v in self._n_facet("kind", []))
            if vis.stored_kinds <= set(wanted):
                return []
        return [Cond("kind", any=wanted)]

    @staticmethod
    def _check_page(limit: int, offset: int = 0) -> None:
        check_page(offset, limit)

    def _query_vector(self, vector: np.ndarray) -> list[float]:
        dim = self._bound_dim(for_write=False)
        q = check_vectors(np.asarray(vector, dtype=np.float32).reshape(-1), dim, what="query")[0]
        out: list[float] = q.tolist()
        return out

    @staticmethod
    def _hit(p: Point, with_vector: bool) -> Hit:
        return Hit(NeuronRecord.from_payload(p.payload, _vector(p, with_vector)), float(p.score))

    # -- neurons -----------------------------------------------------------------------------
    def upsert_neurons(self, records: Sequence[NeuronRecord]) -> int:
        points = records_to_points(records, self._bound_dim(for_write=True))
        self._reserve_space(points)  # a batch that cannot fit is refused before any write
        new_slots = {p.payload["slot"] for p in points}
        new_kinds = {p.payload["kind"] for p in points}
        with self._gate.write():  # no read leaves the filters out while points land
            vis = self._vis
            if vis is not None and vis.stored_slots is not None:
                if not new_slots <= vis.stored_slots:
                    vis.stored_slots = None
            if vis is not None and vis.stored_kinds is not None:
                if not new_kinds <= vis.stored_kinds:
                    vis.stored_kinds = None
            for i in range(0, len(points), WRITE_BATCH):
                self._n_upsert(points[i : i + WRITE_BATCH])
        # Writing into a live generation bypasses the flip (the indexer never does): its seal
        # is recomputed so that the next open does not take the change for damage.
        live = self._visibility().live
        for model_id in {p.payload["model_id"] for p in points}:
            if live.get(model_id) in new_slots:
                self._reseal(model_id)
        return len(points)

    def _reserve_space(self, points: list[Point]) -> None:
        """Backends that write to local disk refuse a batch that would not fit (no-op here)."""

    def get_neuron(
        self,
        model_id: str,
        layer: str,
        unit: int,
        with_vector: bool = True,
        kind: str = NEURON_KIND,
    ) -> NeuronRecord:
        slot = self._live_slot(model_id)
        generation = int(slot.rsplit("#", 1)[1])
        if kind == NEURON_KIND:
            found = self._n_retrieve(
                [neuron_point_id(model_id, layer, int(unit), generation)], with_vector
            )
        else:  # a component's id names its extraction settings: looked up by its fields
            conds = [
                Cond("slot", any=(slot,)),
                Cond("kind", any=(kind,)),
                Cond("layer", any=(layer,)),
                Cond("unit", any=(int(unit),)),
            ]
            found = self._n_scroll(conds, 1, None, True, with_vector)[0]
        if not found:
            key = neuron_key(model_id, layer, unit, kind)
            raise NotFound(
                f"no {'neuron' if kind == NEURON_KIND else kind + ' component'} {key}",
                resource_type="neuron",
                resource_name=key,
            )
        p = found[0]
        return NeuronRecord.from_payload(p.payload, _vector(p, with_vector))

    @_gated_read
    def search(
        self,
        vector: np.ndarray,
        limit: int = 10,
        flt: SearchFilter | None = None,
        offset: int = 0,
        with_vectors: bool = False,
        exact: bool = False,
        fields: Sequence[str] | None = None,
    ) -> list[Hit]:
        self._check_page(limit, offset)
        q = self._query_vector(vector)
        conds = [*self._slot_conds(flt), *self._filter_conds(flt)]
        spec = QuerySpec(q, conds, int(limit), int(offset), with_vectors, exact, self.search_ef)
        wp: bool | list[str] = True if fields is None else list(fields)
        points = self._n_query([spec], with_payload=wp)[0]
        if (
            conds
            and not exact
            and len(points) < limit
            and self._n_count(conds) > offset + len(points)
        ):
            # A filtered graph walk came back short although more points match (measured: a
            # float16 Edge shard of 1M neurons, bench/results/store.md): search the filtered
            # points exactly instead, so a filter never silently loses hits.
            log.warning(
                "a filtered search returned %d of %d hits; searching the filtered points exactly",
                len(points),
                limit,
            )
            spec.exact = True
            points = self._n_query([spec], with_payload=wp)[0]
        return [self._hit(p, with_vectors) for p in points]

    @_gated_read
    def search_per_model(
        self,
        vector: np.ndarray,
        per_model: int = 1,
        flt: SearchFilter | None = None,
        max_models: int | None = None,
    ) -> list[Hit]:
        self._check_page(per_model)
        if max_models is not None and int(max_models) < 1:
            raise InvalidArgument(f"max_models must be >= 1, not {max_models}", field="max_models")
        q = self._query_vector(vector)
        conds = self._filter_conds(flt)
        models = sorted(self._live_models(flt).items())
        per_model = int(per_model)
        top = None if max_models is None else int(max_models)
        slot_model = {slot: model for model, slot in models}

        # 1. One search over every visible model, over-fetched. Restricted to one model, a
        #    top-L list is that model's top-per_model whenever it holds >= per_model of the
        #    model's hits (or the list is not full, i.e. it holds every matching point). This
        #    is exact for exact search; with HNSW both this and a per-model filtered search are
        #    approximate (a graph walk may miss a model's best neighbours either way).
        if len(models) == 1:
            limit = per_model
        else:
            wanted = len(models) if top is None else min(top, len(models))
            limit = min(
                max(per_model * wanted * PER_MODEL_OVERFETCH, PER_MODEL_MIN_FETCH),
                PER_MODEL_MAX_FETCH,
            )
            limit = max(limit, per_model)
        spec = QuerySpec(q, [*self._slot_conds(flt), *conds], limit, hnsw_ef=self.search_ef)
        # Ranking needs a few payload fields only; full payloads are read for the answer.
        found = self._n_query([spec], with_payload=PER_MODEL_RANK_FIELDS)[0]
        exhausted = len(found) < limit  # every matching point is in the list
        by_model: dict[str, list[Point]] = {}
        for p in found:
            model = slot_model.get(str(p.payload.get("slot")))
            if model is not None:
                by_model.setdefault(model, []).append(p)
        groups: dict[str, list[Point]] = {}
        pending: list[tuple[str, str]] = []
        for model, slot in models:
            points = sorted(by_model.get(model, []), key=_point_order)
            if len(points) >= per_model or exhausted:
                if points:
                    groups[model] = points[:per_model]
            else:
                pending.append((model, slot))

        # 2. Models the list may hold incompletely. With max_models, a model whose best hit is
        #    known ranks exactly by it, and a model absent from the list ranks below every
        #    model whose best hit scores above the list's last score: when max_models of
        #    those exist, only the incomplete ones among the first max_models need a query.
        if pending and top is not None:
            floor = found[-1].score if found else -math.inf
            best = {m: min(ps, key=_point_order) for m, ps in by_model.items()}
            ranked = sorted(best, key=lambda m: _point_order(best[m]))
            ahead = [m for m in ranked if best[m].score > floor]
            if len(ahead) >= top:
                keep = set(ahead[:top])
                pending = [(m, s) for m, s in pending if m in keep]
        if pending:
            specs = [
                QuerySpec(q, [Cond("slot", any=(slot,)), *conds], per_model, hnsw_ef=self.search_ef)
                for _, slot in pending
            ]
            results = self._n_query(specs, with_payload=PER_MODEL_RANK_FIELDS)
            for (model, _), res in zip(pending, results, strict=False):
                if res:
                    groups[model] = sorted(res, key=_point_order)

        ordered = sorted(groups.values(), key=lambda g: _point_order(g[0]))
        if top is not None:
            ordered = ordered[:top]
        chosen = [p for g in ordered for p in g]
        full = {
            p.id: p.payload for p in self._n_retrieve([p.id for p in chosen], with_vector=False)
        }
        return [
            Hit(NeuronRecord.from_payload(full[p.id]), float(p.score))
            for p in chosen
            if p.id in full
        ]

    @_gated_read
    def find_by_label(
        self,
        label: str,
        prefix: bool = False,
        limit: int = 10,
        offset: int = 0,
        flt: SearchFilter | None = None,
        scope: LabelScope = LabelScope.SET,
    ) -> list[Hit]:
        check_label(label, "label")
        key = check_label_scope(scope).payload_field
        self._check_page(limit, offset)
        base = [*self._slot_conds(flt), *self._filter_conds(flt)]
        if prefix:
            values = {
                v for v in self._n_facet(key, base) if isinstance(v, str) and v.startswith(label)
            }
        else:
            values = {label}
        if not values:
            return []
        conds = [*base, Cond(key, any=tuple(sorted(values)))]
        ranked: list[tuple[_Rank, str]] = []
        for p in self._scroll_all(conds, with_payload=LABEL_RANK_FIELDS, with_vector=False):
            s = label_score(p.payload, values)
            rank = (
                -s,
                p.payload["model_id"],
                p.payload["layer"],
                int(p.payload["unit"]),
                str(p.payload.get("kind", NEURON_KIND)),
            )
            ranked.append((rank, p.id))
        ranked.sort()
        page = ranked[offset : offset + limit]
        full = {p.id: p for p in self._n_retrieve([pid for _, pid in page], with_vector=False)}
        return [
            Hit(NeuronRecord.from_payload(full[pid].payload), -key[0])
            for key, pid in page
            if pid in full
        ]

    def _scroll_all(
        self,
        conds: list[Cond],
        with_payload: bool | list[str],
        with_vector: bool,
        batch_size: int = 1024,
    ) -> Iterator[Point]:
        offset = None
        while True:
            points, offset = self._n_scroll(conds, batch_size, offset, with_payload, with_vector)
            yield from points
            if offset is None:
                return

    def scroll_neurons(
        self,
        model_id: str,
        generation: int | None = None,
        with_vectors: bool = True,
        batch_size: int = 1024,
        kinds: Sequence[str] | None = None,
    ) -> Iterator[NeuronRecord]:
        self._check_page(batch_size)
        if generation is None:
            generation = self.get_model(model_id).generation
        elif int(generation) < 0:
            raise InvalidArgument("generation must be >= 0", field="generation")
        if self._load_embedder() is None:
            return iter(())
        conds = [Cond("slot", any=(slot_key(model_id, int(generation)),))]
        if kinds is not None:
            conds.append(Cond("kind", any=tuple(check_kinds(kinds) or ())))
        return (
            NeuronRecord.from_payload(p.payload, p.vector if with_vectors else None)
            for p in self._scroll_all(conds, True, with_vectors, int(batch_size))
        )

    def count(self, model_id: str | None = None, generation: int | None = None) -> int:
        if self._load_embedder() is None:
            return 0
        conds: list[Cond] = []
        if model_id is not None and generation is not None:
            conds.append(Cond("slot", any=(slot_key(model_id, int(generation)),)))
        elif model_id is not None:
            conds.append(Cond("model_id", any=(model_id,)))
        elif generation is not None:
            conds.append(Cond("generation", any=(int(generation),)))
        return self._n_count(conds)

    def counts_by_layer(self) -> dict[str, dict[str, int]]:
        if self._load_embedder() is None:
            return {}
        out = {}
        for model_id, slot in sorted(self._visibility().live.items()):
            # neurons only: a model's components are counted in its catalogue entry
            conds = [Cond("slot", any=(slot,)), *self._kind_conds(None)]
            facet = self._n_facet("layer", conds)
            out[model_id] = {str(k): int(v) for k, v in sorted(facet.items())}
        return out

    def delete_neurons(self, model_id: str, generation: int | None = None) -> None:
        validate_model_id(model_id)
        if self._load_embedder() is None:
            return
        if generation is None:
            self._n_delete([Cond("model_id", any=(model_id,))])
        else:
            self._n_delete([Cond("slot", any=(slot_key(model_id, int(generation)),))])
        if self._vis is not None:
            self._vis.stored_slots = self._vis.stored_kinds = None
        with self._mutex:
            pid = model_point_id(model_id)
            payload = self._m_get(pid)
            if payload is None or payload.get("kind") != "model":
                return
            changed = False
            retire = payload.get(RETIRE_KEY)
            if retire is not None and (generation is None or retire == int(generation)):
                payload.pop(RETIRE_KEY)  # the flip's old generation is gone now
                changed = True
            live = int(payload.get("generation", 0))
            if payload.get("status") == ModelStatus.INDEXED.value and (
                generation is None or int(generation) == live
            ):
                payload[INTEGRITY_KEY] = self._tally_slot(model_id, live).seal(live)
                changed = True
            if changed:
                self._m_put(pid, payload)
                self._refresh_visibility()

    # -- catalogue ---------------------------------------------------------------------------
    def put_model(self, entry: ModelEntry) -> None:
        """One point write. An entry that makes a generation live (status ``indexed``) carries
        that generation's seal (``integrity.py``; computed here unless the stored entry already
        has it) and, after a flip, the previous live generation (``RETIRE_KEY``) until
        ``delete_neurons`` removes it or the next open does."""
        validate_model_id(entry.model_id)
        if int(entry.generation) < 0:
            raise InvalidArgument("generation must be >= 0", field="generation")
        with self._mutex:
            pid = model_point_id(entry.model_id)
            old = self._m_get(pid)
            if old is not None and old.get("kind") == TOMBSTONE_KIND:
                self._finish_delete(entry.model_id)  # an interrupted delete of this id
                old = None
            payload = entry.to_payload()
            payload.update(self._integrity_fields(entry, old))
            self._m_put(pid, payload)
            self._refresh_visibility()

    def get_model(self, model_id: str) -> ModelEntry:
        validate_model_id(model_id)
        payload = self._m_get(model_point_id(model_id))
        if payload is None or payload.get("kind") != "model":
            raise NotFound(
                f"unknown model {model_id!r}", resource_type="model", resource_name=model_id
            )
        return ModelEntry.from_payload(payload)

    def list_models(self) -> list[ModelEntry]:
        return sorted((ModelEntry.from_payload(p) for p in self._m_all()), key=lambda e: e.model_id)

    def delete_model(self, model_id: str) -> int:
        """Atomic for readers and across crashes: (1) one point write turns the entry into a
        tombstone (kind ``deleting``), so no read sees the model any more; (2) its neurons are
        deleted; (3) the tombstone. A process killed in between leaves a tombstone, and the
        next open (``_recover``) finishes the delete. Returns the neuron records removed."""
        validate_model_id(model_id)
        with self._mutex:
            pid = model_point_id(model_id)
            payload = self._m_get(pid)
            kind = payload.get("kind") if payload is not None else None
            if payload is None or kind not in ("model", TOMBSTONE_KIND):
                raise NotFound(
                    f"unknown model {model_id!r}", resource_type="model", resource_name=model_id
                )
            if kind == "model":
                self._m_put(pid, {**payload, "kind": TOMBSTONE_KIND, "deleting_at": time.time()})
                self._refresh_visibility()
            return self._finish_delete(model_id)

    def _finish_delete(self, model_id: str) -> int:
        """Steps 2 and 3 of ``delete_model`` (idempotent)."""
        n = 0
        if self._load_embedder() is not None:
            conds = [Cond("model_id", any=(model_id,))]
            n = self._n_count(conds)
            if n:
                self._n_delete(conds)
            if self._vis is not None:
                self._vis.stored_slots = self._vis.stored_kinds = None
        self._m_delete(model_point_id(model_id))
        self._refresh_visibility()
        return n

    def refresh(self) -> None:
        with self._mutex:
            self._refresh_visibility()  # a new snapshot: its stored slots are read again

    # -- jobs: catalogue points of kind JOB_KIND ---------------------------------------------
    def put_job(self, job_id: str, record: dict[str, Any]) -> None:
        self._m_put(job_point_id(job_id), {"kind": JOB_KIND, "job_id": job_id, "job": record})

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        payload = self._m_get(job_point_id(job_id))
        if payload is None or payload.get("kind") != JOB_KIND:
            return None
        record = payload.get("job")
        return dict(record) if isinstance(record, dict) else None

    def all_jobs(self) -> list[dict[str, Any]]:
        return [dict(p["job"]) for p in self._m_all(JOB_KIND) if isinstance(p.get("job"), dict)]

    # -- integrity: seals, recovery on open, the open-time check, verify ------------------------
    def _tally_slot(self, model_id: str, generation: int) -> SlotTally:
        """Count and digest of one generation, read back from the store."""
        tally = SlotTally()
        if self._load_embedder() is None:
            return tally
        conds = [Cond("slot", any=(slot_key(model_id, int(generation)),))]
        for p in self._scroll_all(conds, True, True, VERIFY_BATCH):
            tally.add(p.id, p.vector, p.payload)
        return tally

    def _integrity_fields(self, entry: ModelEntry, old: dict[str, Any] | None) -> dict[str, Any]:
        """The reserved payload keys of an entry about to be written over ``old``."""
        out: dict[str, Any] = {}
        g = int(entry.generation)
        old_live = None
        if old is not None and old.get("status") == ModelStatus.INDEXED.value:
            old_live = int(old.get("generation", 0))
        retire = old.get(RETIRE_KEY) if old is not None else None
        if entry.status == ModelStatus.INDEXED:
            seal = seal_of(old, g) if old_live == g else None
            if seal is None or seal.get("failure"):
                seal = self._tally_slot(entry.model_id, g).seal(g)
            out[INTEGRITY_KEY] = seal
            if old_live is not None and old_live != g:
                retire = old_live
        if isinstance(retire, int) and retire != g:
            out[RETIRE_KEY] = retire
        return out

    def _reseal(self, model_id: str) -> None:
        with self._mutex:
            pid = model_point_id(model_id)
            payload = self._m_get(pid)
            if payload is None or payload.get("kind") != "model":
                return
            if payload.get("status") != ModelStatus.INDEXED.value:
                return
            g = int(payload.get("generation", 0))
            payload[INTEGRITY_KEY] = self._tally_slot(model_id, g).seal(g)
            self._m_put(pid, payload)

    def _recover(self) -> list[str]:
        """Finish what an interrupted process left behind (idempotent; run on open): deletes
        in progress (tombstones) and the previous generation of a completed flip."""
        done = []
        with self._mutex:
            for p in self._m_all(TOMBSTONE_KIND):
                model_id = str(p.get("model_id", ""))
                n = self._finish_delete(model_id)
                done.append(f"finished the interrupted delete of model {model_id!r} ({n} neurons)")
            for p in self._m_all():
                retire = p.get(RETIRE_KEY)
                if retire is None:
                    continue
                model_id = str(p["model_id"])
                if isinstance(retire, int) and retire != int(p.get("generation", 0)):
                    n = self.count(model_id, retire)
                    self.delete_neurons(model_id, retire)  # clears RETIRE_KEY
                    if n:
                        done.append(
                            f"deleted generation {retire} of model {model_id!r} ({n} neurons), "
                            "left by an interrupted re-index"
                        )
                else:
                    p.pop(RETIRE_KEY)
                    self._m_put(model_point_id(model_id), p)
        for line in done:
            log.warning("store recovery: %s", line)
        return done

    def _expected_count(self, payload: dict[str, Any]) -> tuple[int | None, str]:
        """What an indexed entry's live generation must hold: its seal's count, or for an entry
        sealed by no version yet the neuron count of its layers (None: nothing to check)."""
        entry = ModelEntry.from_payload(payload)
        seal = seal_of(payload, entry.generation)
        if seal is not None:
            return int(seal["count"]), str(seal["digest"])
        return (entry.neuron_count or None), ""

    def _check_on_open(self) -> list[str]:
        """The cheap check on open: one exact count per indexed model (points of its live
        generation that have their vector) against what was recorded. A model that does not
        match is marked ``failed`` with the reason, so it is never served partially."""
        if self._load_embedder() is None:
            return []
        damaged = []
        with self._mutex:
            for p in self._m_all():
                if p.get("status") != ModelStatus.INDEXED.value:
                    continue
                expected, _ = self._expected_count(p)
                if expected is None:
                    continue
                model_id, g = str(p["model_id"]), int(p.get("generation", 0))
                conds = [Cond("slot", any=(slot_key(model_id, g),))]
                try:
                    found = self._n_count_vectors(conds)
                    if found == expected:
                        continue
                    points = self._n_count(conds)
                except StoreError as e:
                    raise StoreCorrupted(f"checking model {model_id!r} on open: {e}") from None
                reason = (
                    f"store damaged: generation {g} should hold {expected} neurons but "
                    f"{found} are readable ({points} points stored); found when the store was "
                    "opened. Re-index the model or restore the store from a backup"
                )
                self._mark_damaged(p, reason)
                damaged.append(f"model {model_id!r}: {reason}")
        for line in damaged:
            log.error("integrity check: %s", line)
        return damaged

    def _mark_damaged(self, payload: dict[str, Any], reason: str) -> None:
        p = dict(payload)
        p["status"], p["status_reason"], p["updated_at"] = (
            ModelStatus.FAILED.value,
            reason,
            time.time(),
        )
        seal = p.get(INTEGRITY_KEY)
        p[INTEGRITY_KEY] = {**(seal if isinstance(seal, dict) else {}), "failure": reason}
        self._m_put(model_point_id(str(p["model_id"])), p)
        self._refresh_visibility()

    def verify(self) -> StoreReport:
        t0 = time.perf_counter()
        with self._mutex:
            entries = sorted(self._m_all(), key=lambda p: str(p.get("model_id", "")))
            tombstones = self._m_all(TOMBSTONE_KIND)
            report = StoreReport(ok=True, models=[])
            tallies: dict[str, SlotTally] = {}
            errors: dict[str, str] = {}
            if self._load_embedder() is not None:
                try:
                    for pt in self._scroll_all([], True, True, VERIFY_BATCH):
                        report.points_scanned += 1
                        slot = pt.payload.get("slot")
                        key = slot if isinstance(slot, str) else ""
                        tallies.setdefault(key, SlotTally()).add(pt.id, pt.vector, pt.payload)
                except StoreError as e:
                    report.problems.append(f"reading all points failed: {e}")
                    tallies, errors = self._tally_each(entries, report)
            for payload in entries:
                report.models.append(self._check_model(payload, tallies, errors))
            known = {str(payload.get("model_id")) for payload in entries + tombstones}
            for slot, tally in sorted(tallies.items()):
                model_id = slot.rsplit("#", 1)[0]
                if not slot:
                    report.problems.append(
                        f"{tally.points} points carry no slot (model/generation)"
                    )
                elif model_id not in known:
                    report.problems.append(
                        f"{tally.points} points of model {model_id!r} (slot {slot}), which is not "
                        "in the catalogue"
                    )
            for t in tombstones:
                left = sum(
                    tally.points
                    for slot, tally in tallies.items()
                    if slot.rsplit("#", 1)[0] == t.get("model_id")
                )
                report.problems.append(
                    f"the delete of model {t.get('model_id')!r} did not finish ({left} points "
                    "left; the model is not served; the next open of the store finishes it)"
                )
        report.ok = not report.problems and all(m.ok for m in report.models)
        report.elapsed_s = time.perf_counter() - t0
        return report

    def _tally_each(
        self, entries: list[dict[str, Any]], report: StoreReport
    ) -> tuple[dict[str, SlotTally], dict[str, str]]:
        """Fallback of ``verify`` when a full scan fails: each catalogue slot on its own, so
        the damage is pinned to models."""
        tallies: dict[str, SlotTally] = {}
        errors: dict[str, str] = {}
        try:
            slots = {str(v) for v in self._n_facet("slot", [])}
        except StoreError as e:
            report.problems.append(f"listing the stored slots failed: {e}")
            slots = set()
        for p in entries:
            g = int(p.get("generation", 0))
            slots |= {slot_key(str(p["model_id"]), g), slot_key(str(p["model_id"]), g ^ 1)}
        for slot in sorted(slots):
            model_id, gen = slot.rsplit("#", 1)
            try:
                tallies[slot] = self._tally_slot(model_id, int(gen))
                report.points_scanned += tallies[slot].points
            except StoreError as e:
                errors[slot] = str(e)
        return tallies, errors

    def _check_model(
        self, payload: dict[str, Any], tallies: dict[str, SlotTally], errors: dict[str, str]
    ) -> ModelCheck:
        entry = ModelEntry.from_payload(payload)
        model_id, g = entry.model_id, int(entry.generation)
        check = ModelCheck(model_id, entry.status, g)
        live = slot_key(model_id, g)
        seal = payload.get(INTEGRITY_KEY)
        failure = seal.get("failure") if isinstance(seal, dict) else None
        if entry.status == ModelStatus.INDEXED:
            expected, digest = self._expected_count(payload)
            check.expected_neurons, check.expected_digest = expected, digest
            if live in errors:
                check.problem(f"generation {g} cannot be read: {errors[live]}")
            else:
                t = tallies.get(live, SlotTally())
                check.found_neurons, check.found_digest = t.count, t.digest_hex
                if expected is not None and t.count != expected:
                    check.problem(
                        f"generation {g} holds {t.count} neurons, {expected} were recorded"
                    )
                if t.points != t.count:
                    check.problem(f"{t.points - t.count} points of generation {g} have no vector")
                if digest and t.digest_hex != digest:
                    check.problem(
                        "the content digest differs from the one recorded when the model was "
                        "indexed: vectors or payloads changed on disk"
                    )
                if t.bad_vectors:
                    check.problem(f"{t.bad_vectors} vectors are not finite unit vectors")
                if t.bad_ids:
                    check.problem(
                        f"{t.bad_ids} points have an id that does not match their payload"
                    )
                if not digest:
                    check.notes.append(
                        "no integrity record (written before seals existed): only counted "
                        "against the catalogue's layers"
                    )
        elif failure:
            check.problem(f"marked failed: {failure}")
            if isinstance(seal, dict) and isinstance(seal.get("count"), int):
                check.expected_neurons = int(seal["count"])
                check.expected_digest = str(seal.get("digest", ""))
                if live not in errors:
                    check.found_neurons = tallies.get(live, SlotTally()).count
        for slot in sorted(set(tallies) | set(errors)):
            if slot.rsplit("#", 1)[0] != model_id or (
                slot == live and entry.status == ModelStatus.INDEXED
            ):
                continue
            what = errors.get(slot) or f"{tallies[slot].points} points"
            check.notes.append(f"generation {slot.rsplit('#', 1)[1]}: {what}, not served")
        return check
