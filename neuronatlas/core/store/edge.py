"""``EdgeStore``: the knowledge store embedded in-process with Qdrant Edge (the default).

Layout of a store directory::

    store.json   format marker + embedder identity (written atomically, last at creation)
    .lock        exclusive flock while a process has the store open
    models/      Edge shard: the model catalogue (1-d dummy vectors)
    neurons/     Edge shard: neuron vectors + payloads (created when the embedder is bound)
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import qdrant_edge as qe

from neuronatlas.core.atomic import atomic_write_json
from neuronatlas.core.diskspace import ensure_free, unfilled_mapped_bytes
from neuronatlas.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NeuronAtlasError,
    NotAStore,
    StoreCorrupted,
    StoreLocked,
)
from neuronatlas.core.records import EmbedderInfo
from neuronatlas.core.store._common import (
    FACET_LIMIT,
    FLOAT_FIELDS,
    FULL_SCAN_THRESHOLD_KB,
    HNSW_KEYWORD_FIELDS,
    KEYWORD_FIELDS,
    Cond,
    Point,
    QdrantStoreBase,
    QuerySpec,
)

FORMAT = "neuronatlas-edge-store"
FORMAT_VERSION = 1
MARKER = "store.json"
LOCK = ".lock"
_OWN_ENTRIES = {MARKER, MARKER + ".tmp", LOCK, "models", "neurons"}
QUANTIZATIONS = ("int8", "turbo4", "none")
VECTOR_DATATYPES = ("float32", "float16")
VECTOR_MEMORY = ("cached", "cold")
RESCORE_MIN = 32  # candidates a quantized query rescores on the original vectors, at least
# Threads of each shard's search pool (Edge runs per-segment reads there). One: a server
# already runs many queries at once, and a bigger pool's idle threads spin between queries,
# which cost 0.15-0.35 ms of CPU per query on the 2-core machine (bench/results/grpc.md).
SEARCH_THREADS = 1
_DISTANCES = {"Cosine": qe.Distance.Cosine, "Dot": qe.Distance.Dot}
_DATATYPES = {
    "float32": qe.VectorStorageDatatype.Float32,
    "float16": qe.VectorStorageDatatype.Float16,
}
_MEMORY = {"cached": qe.Memory.Cached, "cold": qe.Memory.Cold}


def _marker_temp(name: str) -> bool:
    """A temp file of a marker write (``atomic_write_json``; older versions: store.json.tmp)."""
    return name == MARKER + ".tmp" or (name.startswith(f".{MARKER}.") and name.endswith(".tmp"))


def _own_entry(name: str) -> bool:
    """An entry the store itself creates (incl. a temp file left by an interrupted marker write)."""
    return name in _OWN_ENTRIES or _marker_temp(name)


log = logging.getLogger("neuronatlas.store")


class _Guarded:
    """An Edge shard whose every call turns an engine error into ``StoreCorrupted``.

    The binding raises plain ``Exception`` for whatever goes wrong below it (a segment that
    cannot be decoded, a vector file shorter than its index, ...). Our requests are validated
    before they get here, so such an error means the files are damaged: the caller gets one
    clear NeuronAtlas error instead of a raw engine exception.
    """

    def __init__(self, shard: qe.EdgeShard, what: str):
        self._shard, self._what = shard, what

    def __getattr__(self, op: str) -> Callable[..., Any]:
        fn = getattr(self._shard, op)

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except NeuronAtlasError:
                raise
            except Exception as e:  # noqa: BLE001 - the binding raises plain Exception
                detail = " ".join(str(e).split())[:300]
                raise StoreCorrupted(
                    f"{self._what} failed ({op}): {detail}. The store may be damaged: run "
                    "`neuronatlas verify`, then re-index the damaged models or restore a backup"
                ) from None

        return call


def _edge_filter(conds: list[Cond], has_vector: bool = False) -> qe.Filter | None:
    if not conds and not has_vector:
        return None
    must: list[qe.ConditionType] = []
    if has_vector:
        must.append(qe.HasVectorCondition(""))
    for c in conds:
        if c.any is not None:
            values = list(c.any)
            match = qe.MatchValue(values[0]) if len(values) == 1 else qe.MatchAny(values)
            must.append(qe.FieldCondition(c.key, match=match))
        else:
            must.append(qe.FieldCondition(c.key, range=qe.RangeFloat(gte=c.gte, lte=c.lte)))
    return qe.Filter(must=must)


def _point(p: Any) -> Point:
    vec = p.vector
    if isinstance(vec, dict):  # unnamed vector may come back as {"": [...]}
        vec = vec.get("")
    # (the binding builds a new dict at each ``payload`` read: nothing to copy)
    return Point.read(p, p.payload or {}, vec, float(getattr(p, "score", 0.0) or 0.0))


class EdgeStore(QdrantStoreBase):
    """A store directory opened by one process at a time (``StoreLocked`` otherwise)."""

    skip_full_visibility_filter = True  # we hold the only writer lock
    exclusive = True
    #: segment size (KiB of vectors) from which ``optimize()`` builds an HNSW segment for a new
    #: neuron shard; None: the engine's default (~10 MB). Tests set a small one so that a few
    #: thousand points get real optimised segments.
    indexing_threshold_kb: int | None = None
    #: how a NEW neuron shard keeps its vectors (an existing shard keeps what it was created
    #: with; see bench/results/store.md for the measurements behind the defaults):
    #: quantization "turbo4" = TurboQuant 4-bit codes (the default: at 1M, p50 0.73 vs 1.31 ms
    #: for int8 at the same recall) or "int8" = scalar int8 copies in RAM; either is used to
    #: build the HNSW graph and to walk it, then the best ``limit * quantization_oversampling``
    #: (at least RESCORE_MIN) candidates are rescored on the original vectors ("none": float
    #: vectors only); vector_datatype "float32" or "float16" (half the vector memory and disk,
    #: scores rounded to ~3 decimals; not offered by the settings: at 1M neurons the engine
    #: answered most one-model filtered searches of a float16 store with too few hits, see
    #: bench/results/store.md; kept here to open such stores and to re-measure);
    #: vector_memory "cached" (the original vectors' files are read into the page cache when
    #: the shard opens) or "cold" (mapped, read on first use: with quantization only
    #: rescoring reads them, so the process maps far fewer pages).
    quantization: str = "turbo4"
    vector_datatype: str = "float32"
    vector_memory: str = "cached"
    quantization_oversampling: float = 8.0

    def __init__(self, path: str | os.PathLike[str], search_threads: int = SEARCH_THREADS):
        """Open (or create) the store at ``path``. ``search_threads``: threads of each shard's
        search pool (0: one per CPU)."""
        super().__init__()
        self.path = Path(path).expanduser()
        if isinstance(search_threads, bool) or not isinstance(search_threads, int):
            raise InvalidArgument("search_threads must be an integer", field="search_threads")
        if not 0 <= search_threads <= 1024:
            raise InvalidArgument(
                f"search_threads must be 0..1024, not {search_threads}", field="search_threads"
            )
        self.search_threads = search_threads
        self._lock_fd: int | None = None
        self._models: qe.EdgeShard | None = None
        self._neurons: qe.EdgeShard | None = None
        self._info: EmbedderInfo | None = None
        self._closed = False
        if self.path.exists() and not self.path.is_dir():
            raise NotAStore(f"{self.path} is a file, not a NeuronAtlas store directory")
        self.path.mkdir(parents=True, exist_ok=True)
        entries = {p.name for p in self.path.iterdir()}
        if MARKER not in entries and not all(_own_entry(name) for name in entries):
            raise NotAStore(
                f"{self.path} holds other files and no {MARKER}: not a NeuronAtlas store"
            )
        self._lock()
        try:
            for name in entries:  # leftovers of an interrupted marker write; we hold the lock
                if _marker_temp(name):
                    (self.path / name).unlink(missing_ok=True)
            # Opening maps fresh write-ahead-log pages, and on tmpfs gives every mapped chunk's
            # holes real pages: on a full disk either is a SIGBUS.
            ensure_free(self.path, unfilled_mapped_bytes(self.path), what="open the store")
            if MARKER in entries:
                self._open_existing()
            else:
                self._refuse_if_holding_data(entries)
                self._create()
        except BaseException:
            self._release()
            raise

    # -- opening -----------------------------------------------------------------------------
    def _lock(self) -> None:
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(
                f"the store {self.path} is open in another process (or another EdgeStore)"
            ) from None
        self._lock_fd = fd

    def _refuse_if_holding_data(self, entries: set[str]) -> None:
        """A directory with shards but no marker is never recreated unless provably empty.

        Creation writes ``models/`` (empty) and then ``store.json``; ``neurons/`` only appears
        after the marker exists. So the one state without a marker that holds no data is an
        empty ``models/`` shard and no ``neurons/``: that is an interrupted creation and is
        redone. Anything else (the marker deleted by hand, a partial copy) is refused, so the
        next command cannot wipe a user's data.
        """
        if "neurons" in entries:
            raise StoreCorrupted(self._missing_marker_message("it has a neurons/ shard"))
        if "models" not in entries:
            return
        try:
            shard = qe.EdgeShard.load(str(self.path / "models"))
        except Exception:  # noqa: BLE001 - the binding raises plain Exception
            raise StoreCorrupted(
                self._missing_marker_message("its models/ shard cannot be read")
            ) from None
        try:
            n_points = int(shard.count(qe.CountRequest(exact=True)))
        finally:
            shard.close()
        if n_points:
            raise StoreCorrupted(
                self._missing_marker_message(f"its models/ shard holds {n_points} entries")
            )

    def _missing_marker_message(self, why: str) -> str:
        return (
            f"{self.path} has no {MARKER} but {why}; refusing to open it so that nothing is "
            f"overwritten. Restore {MARKER} from a backup or copy, or move the directory away "
            "to start a new store"
        )

    def _create(self) -> None:
        # Only reached for an empty directory or an interrupted creation (an empty models/
        # shard, see _refuse_if_holding_data): nothing in it holds data, so start over.
        shutil.rmtree(self.path / "models", ignore_errors=True)
        self._models = qe.EdgeShard.create(
            str(self.path / "models"),
            qe.EdgeConfig(
                vectors=qe.EdgeVectorParams(size=1, distance=qe.Distance.Dot),
                max_search_threads=self._pool_size(),
            ),
        )
        self._models.update(
            qe.UpdateOperation.create_field_index("kind", qe.PayloadSchemaType.Keyword)
        )
        self._models.flush()
        self._write_marker()

    def _write_marker(self) -> None:
        atomic_write_json(
            self.path / MARKER,
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "embedder": self._info.to_dict() if self._info else None,
            },
        )

    def _open_existing(self) -> None:
        marker = self.path / MARKER
        try:
            meta = json.loads(marker.read_text())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(
                    f"format is {meta.get('format') if isinstance(meta, dict) else meta!r}"
                )
            if meta.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported format version {meta.get('version')!r}")
            emb = meta.get("embedder")
            self._info = EmbedderInfo.from_dict(emb) if emb is not None else None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StoreCorrupted(f"{marker} cannot be read: {e}") from None
        self._models = self._load_shard("models")
        if self._info is not None:
            self._neurons = self._load_shard("neurons")
            # a store made by an older version (engine errors: StoreCorrupted, see _Guarded)
            self._add_missing_indexes(_Guarded(self._neurons, f"the neurons shard of {self.path}"))
        self._recover()  # deletes and flips an interrupted process left half done
        self._check_on_open()  # a damaged model is marked failed, never served partially

    @staticmethod
    def _add_missing_indexes(shard: qe.EdgeShard | _Guarded) -> None:
        """Create the payload indexes of KEYWORD_FIELDS / FLOAT_FIELDS the shard lacks (all of
        them for a new shard; e.g. ``label_set`` and ``top_label``, which label scopes filter
        and facet on, for a shard written before they were indexed)."""
        have = set(shard.info().payload_schema)
        added = False
        for name in KEYWORD_FIELDS:
            if name not in have:
                params = qe.KeywordIndexParams(enable_hnsw=name in HNSW_KEYWORD_FIELDS)
                shard.update(qe.UpdateOperation.create_field_index(name, params))
                added = True
        for name in FLOAT_FIELDS:
            if name not in have:
                shard.update(
                    qe.UpdateOperation.create_field_index(
                        name, qe.FloatIndexParams(enable_hnsw=False)
                    )
                )
                added = True
        if added:
            shard.flush()

    def _load_shard(self, name: str) -> qe.EdgeShard:
        shard_dir = self.path / name
        if not shard_dir.is_dir():
            raise StoreCorrupted(f"the store {self.path} has no {name}/ shard")
        try:
            return qe.EdgeShard.load(str(shard_dir), self._load_config(shard_dir))
        except Exception as e:  # noqa: BLE001 - the binding raises plain Exception
            raise StoreCorrupted(f"the {name} shard of {self.path} cannot be loaded: {e}") from None

    def _load_config(self, shard_dir: Path) -> qe.EdgeConfig | None:
        """What an existing shard is loaded with: its own vector parameters (Edge checks them
        against the segments; they come from the shard's persisted config) and this store's
        search-pool size. None (load as persisted) when the persisted config is not one this
        code wrote."""
        try:
            saved = json.loads((shard_dir / "edge_config.json").read_text())
            vec = saved["vectors"][""]
            params = qe.EdgeVectorParams(
                size=int(vec["size"]),
                distance=_DISTANCES[vec["distance"]],
                datatype=_DATATYPES[vec.get("datatype", "float32")],
                memory=_MEMORY.get(vec.get("memory", "cached"), qe.Memory.Cached),
            )
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.debug("%s: loading with its persisted config (%s)", shard_dir, e)
            return None
        return qe.EdgeConfig(vectors=params, max_search_threads=self._pool_size())

    def _pool_size(self) -> int:
        return self.search_threads or os.cpu_count() or 1

    def _neuron_config(self, dim: int) -> qe.EdgeConfig:
        if self.quantization not in QUANTIZATIONS:
            raise InvalidArgument(
                f"quantization must be one of {QUANTIZATIONS}", field="quantization"
            )
        if self.vector_datatype not in VECTOR_DATATYPES:
            raise InvalidArgument(
                f"vector_datatype must be one of {VECTOR_DATATYPES}", field="vector_datatype"
            )
        if self.vector_memory not in VECTOR_MEMORY:
            raise InvalidArgument(
                f"vector_memory must be one of {VECTOR_MEMORY}", field="vector_memory"
            )
        return qe.EdgeConfig(
            vectors=qe.EdgeVectorParams(
                size=dim,
                distance=qe.Distance.Cosine,
                datatype=_DATATYPES[self.vector_datatype],
                memory=_MEMORY[self.vector_memory],
            ),
            quantization_config=self._quantization_config(),
            payload_memory=qe.Memory.Cached,
            max_search_threads=self._pool_size(),
            hnsw_config=qe.HnswIndexConfig(
                m=self.hnsw_m,
                ef_construct=self.hnsw_ef_construct,
                full_scan_threshold=FULL_SCAN_THRESHOLD_KB,
            ),
            optimizers=(
                qe.EdgeOptimizersConfig(indexing_threshold=self.indexing_threshold_kb)
                if self.indexing_threshold_kb is not None
                else None
            ),
        )

    def _quantization_config(
        self,
    ) -> qe.ScalarQuantizationConfig | qe.TurboQuantQuantizationConfig | None:
        if self.quantization == "int8":
            return qe.ScalarQuantizationConfig(qe.ScalarType.Int8, quantile=0.99, always_ram=True)
        if self.quantization == "turbo4":  # TurboQuant, 4-bit codes (measured: store.md)
            return qe.TurboQuantQuantizationConfig(
                bits=qe.TurboQuantBitSize.Bits4, memory=qe.Memory.Cached
            )
        return None

    # -- primitives ----------------------------------------------------------------------------
    def _shard(self, which: str) -> _Guarded:
        """Every engine call of the store goes through here (see ``_Guarded``)."""
        if self._closed:
            raise FailedPrecondition(f"the store {self.path} is closed")
        shard = self._neurons if which == "neurons" else self._models
        assert shard is not None, which
        return _Guarded(shard, f"the {which} shard of {self.path}")

    def _load_embedder(self) -> EmbedderInfo | None:
        return self._info

    def _save_embedder(self, info: EmbedderInfo) -> None:
        self._shard("models")
        ensure_free(self.path, 64 << 20, what="create the neuron shard")
        shutil.rmtree(self.path / "neurons", ignore_errors=True)  # orphan of an interrupted bind
        shard = qe.EdgeShard.create(str(self.path / "neurons"), self._neuron_config(info.dim))
        self._add_missing_indexes(shard)
        self._neurons, self._info = shard, info
        try:
            self._write_marker()
        except BaseException:
            self._neurons, self._info = None, None
            shard.close()
            raise

    def _reserve_space(self, points: list[Point]) -> None:
        # WAL + segment + index, generously: vector bytes + ~2 KiB of payload, twice over.
        need = 2 * sum(4 * len(p.dense()) + 2048 for p in points)
        ensure_free(self.path, need, what=f"write {len(points)} neurons")

    def _n_upsert(self, points: list[Point]) -> None:
        self._reserve_space(points)  # per batch too: a long write can fill the disk midway
        ops = [qe.Point(p.id, p.dense(), p.payload) for p in points]
        self._shard("neurons").update(qe.UpdateOperation.upsert_points(ops))

    def _n_query(
        self, specs: list[QuerySpec], with_payload: bool | list[str] = True
    ) -> list[list[Point]]:
        wp = (
            qe.PayloadSelector.Include(with_payload)
            if isinstance(with_payload, list)
            else with_payload
        )

        def qparams(s: QuerySpec) -> qe.QuantizationSearchParams:
            # rescoring on the original vectors (ignored by a shard without quantization), of
            # at least RESCORE_MIN candidates: int8 scores alone mis-rank near ties, which
            # matters most for a model's single best neuron (per-model search, limit 1)
            want = max(s.limit + s.offset, 1)
            return qe.QuantizationSearchParams(
                ignore=s.exact,  # exact search: the original vectors only
                rescore=True,
                oversampling=max(self.quantization_oversampling, RESCORE_MIN / want),
            )

        reqs = [
            qe.QueryRequest(
                limit=s.limit,
                offset=s.offset or None,
                query=qe.Query.Nearest(s.vector),
                filter=_edge_filter(s.conds),
                with_vector=s.with_vector,
                with_payload=wp,
                params=qe.SearchParams(hnsw_ef=s.hnsw_ef, exact=s.exact, quantization=qparams(s)),
            )
            for s in specs
        ]
        shard = self._shard("neurons")
        if len(reqs) == 1:
            return [[_point(p) for p in shard.query(reqs[0])]]
        return [[_point(p) for p in res] for res in shard.query_batch(qe.QueryBatchRequest(reqs))]

    def _n_scroll(
        self,
        conds: list[Cond],
        limit: int,
        offset: Any,
        with_payload: bool | list[str],
        with_vector: bool,
    ) -> tuple[list[Point], Any]:
        wp = (
            qe.PayloadSelector.Include(with_payload)
            if isinstance(with_payload, list)
            else with_payload
        )
        req = qe.ScrollRequest(
            offset=offset,
            limit=limit,
            filter=_edge_filter(conds),
            with_payload=wp,
            with_vector=with_vector,
        )
        points, nxt = self._shard("neurons").scroll(req)
        return [_point(p) for p in points], nxt

    def _n_count(self, conds: list[Cond]) -> int:
        return int(
            self._shard("neurons").count(qe.CountRequest(exact=True, filter=_edge_filter(conds)))
        )

    def _n_count_vectors(self, conds: list[Cond]) -> int:
        flt = _edge_filter(conds, has_vector=True)
        return int(self._shard("neurons").count(qe.CountRequest(exact=True, filter=flt)))

    def _n_facet(self, key: str, conds: list[Cond]) -> dict[Any, int]:
        res = self._shard("neurons").facet(
            qe.FacetRequest(key, limit=FACET_LIMIT, exact=True, filter=_edge_filter(conds))
        )
        return {h.value: int(h.count) for h in res.hits}

    def _n_retrieve(self, ids: list[str], with_vector: bool) -> list[Point]:
        if not ids:
            return []
        point_ids: list[qe.PointId] = list(ids)
        return [
            _point(p)
            for p in self._shard("neurons").retrieve(
                point_ids, with_payload=True, with_vector=with_vector
            )
        ]

    def _n_delete(self, conds: list[Cond]) -> None:
        flt = _edge_filter(conds)
        if flt is None:  # never "delete everything" by accident
            raise ValueError("a neuron delete needs at least one condition")
        self._shard("neurons").update(qe.UpdateOperation.delete_points_by_filter(flt))

    def _m_put(self, point_id: str, payload: dict[str, Any]) -> None:
        shard = self._shard("models")
        ensure_free(self.path, what="write the catalogue")
        shard.update(qe.UpdateOperation.upsert_points([qe.Point(point_id, [1.0], payload)]))
        shard.flush()

    def _m_get(self, point_id: str) -> dict[str, Any] | None:
        found = self._shard("models").retrieve([point_id], with_payload=True, with_vector=False)
        return dict(found[0].payload or {}) if found else None

    def _m_all(self, kind: str = "model") -> list[dict[str, Any]]:
        shard, offset = self._shard("models"), None
        out: list[dict[str, Any]] = []
        flt = _edge_filter([Cond("kind", any=(kind,))])
        while True:
            points, offset = shard.scroll(
                qe.ScrollRequest(offset=offset, limit=1000, filter=flt, with_payload=True)
            )
            out.extend(dict(p.payload or {}) for p in points)
            if offset is None:
                return out

    def _m_delete(self, point_id: str) -> None:
        shard = self._shard("models")
        shard.update(qe.UpdateOperation.delete_points([point_id]))
        shard.flush()

    # -- maintenance ---------------------------------------------------------------------------
    def optimize(self) -> None:
        if self._neurons is not None and self._info is not None:
            # optimisation rewrites segments (vectors, payloads, graph) before dropping the old
            need = self._n_count([]) * (8 * self._info.dim + 2048)
            ensure_free(self.path, need, what="optimise the store")
        for which in ("models", "neurons"):
            if which == "neurons" and self._neurons is None:
                continue
            shard = self._shard(which)
            shard.optimize()
            shard.flush()

    def size_bytes(self) -> int:
        # allocated blocks, not apparent sizes: Edge preallocates sparse WAL / mmap files
        return sum(f.stat().st_blocks * 512 for f in self.path.rglob("*") if f.is_file())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release()

    def _release(self) -> None:
        shards, self._neurons, self._models = (self._neurons, self._models), None, None
        try:
            for name, shard in zip(("neurons", "models"), shards, strict=True):
                if shard is not None:
                    try:
                        _Guarded(shard, f"the {name} shard of {self.path}").flush()
                    finally:
                        _Guarded(shard, f"the {name} shard of {self.path}").close()
        finally:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
                self._lock_fd = None

    def __repr__(self) -> str:
        return f"EdgeStore({str(self.path)!r})"
