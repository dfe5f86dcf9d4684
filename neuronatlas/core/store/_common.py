"""Store semantics shared by both Qdrant backends.

``QdrantStoreBase`` implements the whole ``KnowledgeStore`` contract (validation, the
visibility rule, filters, per-model grouping, label lookups) on top of a handful of
primitive point operations that each backend maps to its own client (``edge.py`` to Qdrant
Edge, ``remote.py`` to qdrant-client). Filters travel as backend-neutral ``Cond`` lists.
"""

from __future__ import annotations

import math
import threading
import time
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuronatlas.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotIndexed,
)
from neuronatlas.core.records import (
    EmbedderInfo,
    ModelEntry,
    ModelStatus,
    NeuronRecord,
    check_vectors,
    model_point_id,
    neuron_point_id,
    slot_key,
    validate_model_id,
)
from neuronatlas.core.store.base import Hit, KnowledgeStore, SearchFilter
from neuronatlas.core.validate import check_embedder, check_filter, check_label, check_page

# HNSW parameters (both backends). Tuned with bench/bench_store.py: see bench/results/store.md.
HNSW_M = 16
HNSW_EF_CONSTRUCT = 128
SEARCH_HNSW_EF = 128
FULL_SCAN_THRESHOLD_KB = 10_000

# Payload fields with an index. Only ``slot`` (in every read filter) gets payload-aware
# HNSW links; the others are plain lookups, which keeps the graph build cheap.
KEYWORD_FIELDS = ("kind", "model_id", "slot", "layer", "label_all")
HNSW_KEYWORD_FIELDS = ("slot",)
FLOAT_FIELDS = ("depth", "clarity")

WRITE_BATCH = 256  # points per write request
FACET_LIMIT = 1_000_000  # "all values" for facet counts
# Fields read when ranking label matches (full payloads only for the returned page).
LABEL_RANK_FIELDS = ["model_id", "layer", "unit", "labels"]
# search_per_model: the first, unrestricted search fetches per_model * models * OVERFETCH
# hits (models: max_models when given; at least MIN, at most MAX); models it may leave
# incomplete get their own query.
PER_MODEL_OVERFETCH = 4
PER_MODEL_MIN_FETCH = 100
PER_MODEL_MAX_FETCH = 4096
PER_MODEL_RANK_FIELDS = ["slot", "model_id", "layer", "unit"]


@dataclass(frozen=True)
class Cond:
    """One backend-neutral filter condition; all conditions of a list must hold."""

    key: str
    any: tuple[Any, ...] | None = None  # value in this set (a list field: any element)
    gte: float | None = None
    lte: float | None = None


@dataclass
class Point:
    """A point as returned by a backend primitive."""

    id: str
    payload: dict[str, Any]
    vector: list[float] | None = None
    score: float = 0.0

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
        if int(r.unit) < 0 or int(r.generation) < 0:
            raise InvalidArgument(f"neuron {r.key}: unit and generation must be >= 0", field="unit")
        for name in ("depth", "clarity", "polysemanticity", "redundancy"):
            if not math.isfinite(float(getattr(r, name))):
                raise InvalidArgument(f"neuron {r.key}: {name} is not finite", field=name)
        points.append(Point(r.point_id, r.to_payload(), (v / np.linalg.norm(v)).tolist()))
    return points


def label_score(payload: dict[str, Any], labels: set[str]) -> float:
    """Best score any of ``labels`` has in a neuron's payload (0 if only in the label set)."""
    best = None
    for entries in payload.get("labels", {}).values():
        for e in entries:
            if e["label"] in labels and (best is None or e["score"] > best):
                best = float(e["score"])
    return best if best is not None else 0.0


_Rank = tuple[float, str, str, int]  # (-score, model_id, layer, unit)


def _hit_order(h: Hit) -> _Rank:
    return (-h.score, h.record.model_id, h.record.layer, h.record.unit)


def _point_order(p: Point) -> _Rank:
    """``_hit_order`` of a point read with (at least) PER_MODEL_RANK_FIELDS."""
    return (-p.score, p.payload["model_id"], p.payload["layer"], int(p.payload["unit"]))


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
    def _m_all(self) -> list[dict[str, Any]]:
        """Payloads of every catalogue entry (kind == "model")."""

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
        raise NotFound(f"unknown model {model_id!r}")

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
        if self.skip_full_visibility_filter and (flt is None or flt.model_ids is None):
            if vis.stored_slots is None:
                vis.stored_slots = frozenset(str(v) for v in self._n_facet("slot", []))
            if vis.stored_slots <= set(live.values()):
                return []
        return [Cond("slot", any=tuple(sorted(live.values())))]

    @staticmethod
    def _filter_conds(flt: SearchFilter | None) -> list[Cond]:
        """Conditions of a SearchFilter other than the model restriction. The filter is checked
        by the one request validator (``core.validate``) first, so a bad one gets the same
        refusal here as through the queries and the service."""
        flt = check_filter(flt)
        if flt is None:
            return []
        conds = []
        if flt.layers is not None:
            conds.append(Cond("layer", any=tuple(flt.layers)))
        if flt.depth_min is not None or flt.depth_max is not None:
            conds.append(Cond("depth", gte=flt.depth_min, lte=flt.depth_max))
        if flt.min_clarity is not None:
            conds.append(Cond("clarity", gte=flt.min_clarity))
        if flt.label is not None:
            conds.append(Cond("label_all", any=(flt.label,)))
        return conds

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
        return Hit(
            NeuronRecord.from_payload(p.payload, p.vector if with_vector else None), float(p.score)
        )

    # -- neurons -----------------------------------------------------------------------------
    def upsert_neurons(self, records: Sequence[NeuronRecord]) -> int:
        points = records_to_points(records, self._bound_dim(for_write=True))
        self._reserve_space(points)  # a batch that cannot fit is refused before any write
        vis = self._vis
        new_slots = {p.payload["slot"] for p in points}
        if vis is not None and vis.stored_slots is not None and not new_slots <= vis.stored_slots:
            vis.stored_slots = None
        for i in range(0, len(points), WRITE_BATCH):
            self._n_upsert(points[i : i + WRITE_BATCH])
        return len(points)

    def _reserve_space(self, points: list[Point]) -> None:
        """Backends that write to local disk refuse a batch that would not fit (no-op here)."""

    def get_neuron(
        self, model_id: str, layer: str, unit: int, with_vector: bool = True
    ) -> NeuronRecord:
        slot = self._live_slot(model_id)
        generation = int(slot.rsplit("#", 1)[1])
        found = self._n_retrieve(
            [neuron_point_id(model_id, layer, int(unit), generation)], with_vector
        )
        if not found:
            raise NotFound(f"no neuron {model_id}/{layer}/{unit}")
        p = found[0]
        return NeuronRecord.from_payload(p.payload, p.vector if with_vector else None)

    def search(
        self,
        vector: np.ndarray,
        limit: int = 10,
        flt: SearchFilter | None = None,
        offset: int = 0,
        with_vectors: bool = False,
        exact: bool = False,
    ) -> list[Hit]:
        self._check_page(limit, offset)
        q = self._query_vector(vector)
        conds = [*self._slot_conds(flt), *self._filter_conds(flt)]
        spec = QuerySpec(q, conds, int(limit), int(offset), with_vectors, exact, self.search_ef)
        return [self._hit(p, with_vectors) for p in self._n_query([spec])[0]]

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

    def find_by_label(
        self,
        label: str,
        prefix: bool = False,
        limit: int = 10,
        offset: int = 0,
        flt: SearchFilter | None = None,
    ) -> list[Hit]:
        check_label(label, "label")
        self._check_page(limit, offset)
        base = [*self._slot_conds(flt), *self._filter_conds(flt)]
        if prefix:
            values = {
                v
                for v in self._n_facet("label_all", base)
                if isinstance(v, str) and v.startswith(label)
            }
        else:
            values = {label}
        if not values:
            return []
        conds = [*base, Cond("label_all", any=tuple(sorted(values)))]
        ranked: list[tuple[_Rank, str]] = []
        for p in self._scroll_all(conds, with_payload=LABEL_RANK_FIELDS, with_vector=False):
            s = label_score(p.payload, values)
            ranked.append(
                ((-s, p.payload["model_id"], p.payload["layer"], int(p.payload["unit"])), p.id)
            )
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
    ) -> Iterator[NeuronRecord]:
        self._check_page(batch_size)
        if generation is None:
            generation = self.get_model(model_id).generation
        elif int(generation) < 0:
            raise InvalidArgument("generation must be >= 0", field="generation")
        if self._load_embedder() is None:
            return iter(())
        conds = [Cond("slot", any=(slot_key(model_id, int(generation)),))]
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
            facet = self._n_facet("layer", [Cond("slot", any=(slot,))])
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
            self._vis.stored_slots = None

    # -- catalogue ---------------------------------------------------------------------------
    def put_model(self, entry: ModelEntry) -> None:
        validate_model_id(entry.model_id)
        if int(entry.generation) < 0:
            raise InvalidArgument("generation must be >= 0", field="generation")
        with self._mutex:
            self._m_put(model_point_id(entry.model_id), entry.to_payload())
            self._refresh_visibility()

    def get_model(self, model_id: str) -> ModelEntry:
        validate_model_id(model_id)
        payload = self._m_get(model_point_id(model_id))
        if payload is None or payload.get("kind") != "model":
            raise NotFound(f"unknown model {model_id!r}")
        return ModelEntry.from_payload(payload)

    def list_models(self) -> list[ModelEntry]:
        return sorted((ModelEntry.from_payload(p) for p in self._m_all()), key=lambda e: e.model_id)

    def _delete_model_entry(self, model_id: str) -> None:
        with self._mutex:
            self._m_delete(model_point_id(model_id))
            self._refresh_visibility()
