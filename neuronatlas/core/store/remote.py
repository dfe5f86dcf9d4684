"""``RemoteStore``: the knowledge store on a Qdrant server or cluster via qdrant-client.

Two collections: ``{prefix}_neurons`` (created when the embedder is bound) and
``{prefix}_models`` (catalogue entries, plus one ``kind="meta"`` point holding the embedder
identity). ``QdrantClient(":memory:")`` works as a brute-force test double.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from qdrant_client import QdrantClient, models

from neuronatlas.core.config import Settings
from neuronatlas.core.errors import FailedPrecondition, StoreCorrupted, StoreUnavailable
from neuronatlas.core.records import EmbedderInfo, model_point_id
from neuronatlas.core.store._common import (
    FACET_LIMIT,
    FLOAT_FIELDS,
    FULL_SCAN_THRESHOLD_KB,
    KEYWORD_FIELDS,
    Cond,
    Point,
    QdrantStoreBase,
    QuerySpec,
)

T = TypeVar("T")
META_ID = model_point_id("__meta__")  # model ids start with a letter or digit: no clash
FORMAT_VERSION = 1
OPTIMIZE_TIMEOUT_S = 600.0


def _filter(conds: list[Cond]) -> models.Filter | None:
    if not conds:
        return None
    must: list[Any] = []
    for c in conds:
        if c.any is not None:
            values = list(c.any)
            match = (
                models.MatchValue(value=values[0])
                if len(values) == 1
                else models.MatchAny(any=values)
            )
            must.append(models.FieldCondition(key=c.key, match=match))
        else:
            must.append(models.FieldCondition(key=c.key, range=models.Range(gte=c.gte, lte=c.lte)))
    return models.Filter(must=must)


def _point(p: Any) -> Point:
    vec = p.vector
    if isinstance(vec, dict):
        vec = vec.get("")
    return Point(str(p.id), dict(p.payload or {}), vec, float(getattr(p, "score", 0.0) or 0.0))


def _is_local(client: QdrantClient) -> bool:
    """True for the in-process test double, which has no payload indexes nor HNSW."""
    from qdrant_client.local.qdrant_local import QdrantLocal

    return isinstance(getattr(client, "_client", None), QdrantLocal)


def _is_connection_error(e: Exception) -> bool:
    from qdrant_client.http.exceptions import ResponseHandlingException

    if isinstance(e, (ResponseHandlingException, ConnectionError, TimeoutError)):
        return True
    try:
        import grpc

        if isinstance(e, grpc.RpcError):
            return e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    except ImportError:  # pragma: no cover - grpcio is a dependency
        pass
    try:
        import httpx

        return isinstance(e, httpx.TransportError)
    except ImportError:  # pragma: no cover
        return False


class RemoteStore(QdrantStoreBase):
    """Store on a Qdrant server; other processes may write too, so the catalogue snapshot
    used for visibility is re-read when older than ``visibility_ttl`` seconds."""

    visibility_ttl = 2.0

    def __init__(
        self,
        client: QdrantClient,
        prefix: str = "neuronatlas",
        shard_number: int = 1,
        replication_factor: int = 1,
        url: str = "",
    ):
        super().__init__()
        self.client = client
        self.url = url or "the configured Qdrant"
        self.neurons_collection = f"{prefix}_neurons"
        self.models_collection = f"{prefix}_models"
        self.shard_number, self.replication_factor = int(shard_number), int(replication_factor)
        self._info: EmbedderInfo | None = None
        self._closed = False
        self._local = _is_local(client)
        self._ensure_collection(self.models_collection, 1, models.Distance.DOT, ["kind"], [])
        self._load_embedder()
        # Deletes and flips another process left half done. No count check on open here:
        # other processes may be writing; ``verify`` checks a remote store on demand.
        self._recover()

    @classmethod
    def from_settings(cls, settings: Settings) -> RemoteStore:
        if settings.url == ":memory:":
            client = QdrantClient(":memory:")
        else:
            try:
                client = QdrantClient(
                    url=settings.url,
                    api_key=settings.api_key or None,
                    prefer_grpc=settings.prefer_grpc,
                    https=True if settings.tls else None,
                    timeout=30,
                    check_compatibility=False,  # our first request reports an unreachable server
                )
            except Exception as e:  # noqa: BLE001 - a bad URL raises anything
                raise StoreUnavailable(f"cannot connect to Qdrant at {settings.url}: {e}") from None
        return cls(
            client,
            prefix=settings.collection_prefix,
            shard_number=settings.shard_number,
            replication_factor=settings.replication_factor,
            url=settings.url,
        )

    # -- plumbing ------------------------------------------------------------------------------
    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:
            raise FailedPrecondition(f"the store at {self.url} is closed")
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if _is_connection_error(e):
                raise StoreUnavailable(f"cannot reach Qdrant at {self.url}: {e}") from None
            raise

    def _ensure_collection(
        self, name: str, dim: int, distance: models.Distance, keywords: list[str], floats: list[str]
    ) -> None:
        from qdrant_client.http.exceptions import UnexpectedResponse

        if self._call(self.client.collection_exists, name):
            self._add_missing_indexes(name, keywords, floats)
            return
        try:
            self._call(
                self.client.create_collection,
                name,
                vectors_config=models.VectorParams(size=dim, distance=distance),
                hnsw_config=models.HnswConfigDiff(
                    m=self.hnsw_m,
                    ef_construct=self.hnsw_ef_construct,
                    full_scan_threshold=FULL_SCAN_THRESHOLD_KB,
                ),
                shard_number=self.shard_number,
                replication_factor=self.replication_factor,
            )
        except (UnexpectedResponse, ValueError) as e:  # created meanwhile by another process
            if not self._call(self.client.collection_exists, name):
                raise StoreUnavailable(
                    f"cannot create collection {name} at {self.url}: {e}"
                ) from None
        self._add_missing_indexes(name, keywords, floats)

    def _add_missing_indexes(self, name: str, keywords: list[str], floats: list[str]) -> None:
        """Create the payload indexes the collection lacks: all of them for a new collection,
        e.g. ``label_set`` / ``top_label`` (label scopes filter and facet on them) for one
        written by an older version. The in-process ``:memory:`` double has no indexes."""
        if self._local:
            return
        info = self._call(self.client.get_collection, name)
        have = set(info.payload_schema or {})
        wanted = [(k, models.PayloadSchemaType.KEYWORD) for k in keywords]
        wanted += [(k, models.PayloadSchemaType.FLOAT) for k in floats]
        for key, schema in wanted:
            if key not in have:
                self._call(self.client.create_payload_index, name, key, schema, wait=True)

    # -- primitives ------------------------------------------------------------------------------
    def _load_embedder(self) -> EmbedderInfo | None:
        if self._info is None:
            meta = self._m_get(META_ID)
            if meta is not None:
                try:
                    self._info = EmbedderInfo.from_dict(meta["embedder"])
                except (KeyError, TypeError, ValueError) as e:
                    raise StoreCorrupted(
                        f"the embedder record in {self.models_collection} is unreadable: {e}"
                    ) from None
                if not self._call(self.client.collection_exists, self.neurons_collection):
                    self._info = None
                    raise StoreCorrupted(
                        f"{self.models_collection} names an embedder but "
                        f"{self.neurons_collection} is missing"
                    )
                # once per process: a collection written by an older version lacks some.
                # Best effort: a read-only key cannot add them, and every read still works
                # except a prefix label lookup (a facet) on a field without an index.
                try:
                    self._add_missing_indexes(
                        self.neurons_collection, list(KEYWORD_FIELDS), list(FLOAT_FIELDS)
                    )
                except StoreUnavailable:
                    raise
                except Exception as e:  # noqa: BLE001 - any refusal of the server
                    logging.getLogger(__name__).warning(
                        "could not add payload indexes to %s: %s", self.neurons_collection, e
                    )
        return self._info

    def _save_embedder(self, info: EmbedderInfo) -> None:
        if self._call(self.client.collection_exists, self.neurons_collection):
            vectors = self._call(
                self.client.get_collection, self.neurons_collection
            ).config.params.vectors
            size = vectors.size if isinstance(vectors, models.VectorParams) else None
            if size != info.dim:
                raise StoreCorrupted(
                    f"{self.neurons_collection} exists with {size}-d vectors but no embedder "
                    "record; delete it or use another collection prefix"
                )
        self._ensure_collection(
            self.neurons_collection,
            info.dim,
            models.Distance.COSINE,
            list(KEYWORD_FIELDS),
            list(FLOAT_FIELDS),
        )
        payload = {"kind": "meta", "format_version": FORMAT_VERSION, "embedder": info.to_dict()}
        self._m_put(META_ID, payload)
        self._info = info

    def _n_upsert(self, points: list[Point]) -> None:
        structs = [models.PointStruct(id=p.id, vector=p.dense(), payload=p.payload) for p in points]
        self._call(self.client.upsert, self.neurons_collection, points=structs, wait=True)

    def _n_query(
        self, specs: list[QuerySpec], with_payload: bool | list[str] = True
    ) -> list[list[Point]]:
        def params(s: QuerySpec) -> models.SearchParams | None:
            return None if self._local else models.SearchParams(hnsw_ef=s.hnsw_ef, exact=s.exact)

        if len(specs) == 1:
            s = specs[0]
            one = self._call(
                self.client.query_points,
                self.neurons_collection,
                query=s.vector,
                query_filter=_filter(s.conds),
                limit=s.limit,
                offset=s.offset or None,
                with_payload=with_payload,
                with_vectors=s.with_vector,
                search_params=params(s),
            )
            return [[_point(p) for p in one.points]]
        reqs = [
            models.QueryRequest(
                query=s.vector,
                filter=_filter(s.conds),
                limit=s.limit,
                offset=s.offset or None,
                with_payload=with_payload,
                with_vector=s.with_vector,
                params=params(s),
            )
            for s in specs
        ]
        batch = self._call(self.client.query_batch_points, self.neurons_collection, requests=reqs)
        return [[_point(p) for p in r.points] for r in batch]

    def _n_scroll(
        self,
        conds: list[Cond],
        limit: int,
        offset: Any,
        with_payload: bool | list[str],
        with_vector: bool,
    ) -> tuple[list[Point], Any]:
        points, nxt = self._call(
            self.client.scroll,
            self.neurons_collection,
            scroll_filter=_filter(conds),
            limit=limit,
            offset=offset,
            with_payload=with_payload,
            with_vectors=with_vector,
        )
        return [_point(p) for p in points], nxt

    def _n_count(self, conds: list[Cond]) -> int:
        return int(
            self._call(
                self.client.count, self.neurons_collection, count_filter=_filter(conds), exact=True
            ).count
        )

    def _n_count_vectors(self, conds: list[Cond]) -> int:
        flt = _filter(conds) or models.Filter(must=[])
        flt.must = [*(flt.must or []), models.HasVectorCondition(has_vector="")]
        return int(
            self._call(
                self.client.count, self.neurons_collection, count_filter=flt, exact=True
            ).count
        )

    def _n_facet(self, key: str, conds: list[Cond]) -> dict[Any, int]:
        res = self._call(
            self.client.facet,
            self.neurons_collection,
            key,
            facet_filter=_filter(conds),
            limit=FACET_LIMIT,
            exact=True,
        )
        return {h.value: int(h.count) for h in res.hits}

    def _n_retrieve(self, ids: list[str], with_vector: bool) -> list[Point]:
        if not ids:
            return []
        found = self._call(
            self.client.retrieve,
            self.neurons_collection,
            ids,
            with_payload=True,
            with_vectors=with_vector,
        )
        return [_point(p) for p in found]

    def _n_delete(self, conds: list[Cond]) -> None:
        flt = _filter(conds)
        if flt is None:  # never "delete everything" by accident
            raise ValueError("a neuron delete needs at least one condition")
        selector = models.FilterSelector(filter=flt)
        self._call(self.client.delete, self.neurons_collection, points_selector=selector, wait=True)

    def _m_put(self, point_id: str, payload: dict[str, Any]) -> None:
        point = models.PointStruct(id=point_id, vector=[1.0], payload=payload)
        self._call(self.client.upsert, self.models_collection, points=[point], wait=True)

    def _m_get(self, point_id: str) -> dict[str, Any] | None:
        found = self._call(
            self.client.retrieve, self.models_collection, [point_id], with_payload=True
        )
        return dict(found[0].payload or {}) if found else None

    def _m_all(self, kind: str = "model") -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = None
        flt = _filter([Cond("kind", any=(kind,))])
        while True:
            points, offset = self._call(
                self.client.scroll,
                self.models_collection,
                scroll_filter=flt,
                limit=1000,
                offset=offset,
                with_payload=True,
            )
            out.extend(dict(p.payload or {}) for p in points)
            if offset is None:
                return out

    def _m_delete(self, point_id: str) -> None:
        selector = models.PointIdsList(points=[point_id])
        self._call(self.client.delete, self.models_collection, points_selector=selector, wait=True)

    # -- maintenance -----------------------------------------------------------------------------
    def optimize(self) -> None:
        """The server builds indexes in the background; wait until it reports green."""
        if self._load_embedder() is None:
            return
        deadline = time.monotonic() + OPTIMIZE_TIMEOUT_S
        while True:
            info = self._call(self.client.get_collection, self.neurons_collection)
            if info.status == models.CollectionStatus.GREEN or time.monotonic() > deadline:
                return
            time.sleep(0.5)

    def size_bytes(self) -> int:
        return 0  # the server does not expose its disk footprint per collection

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.client.close()

    def __repr__(self) -> str:
        return f"RemoteStore({self.url!r}, {self.neurons_collection!r})"
