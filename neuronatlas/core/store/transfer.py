"""Moving a store's data: migration between stores, backups and restores, exports.

All three work on *raw points*, below the record layer: a neuron point's id, its float32 vector
and its payload, and a catalogue point's id and payload (model entries with their integrity
seals, jobs, and whatever other kinds of record the catalogue holds), so every kind of record
travels, ids are kept and nothing is re-normalised on the way.

**migrate** (:func:`migrate`) copies every point of one store into another (embedded Edge to a
Qdrant server and back, or any pair): the neurons in scroll (id) order, batch by batch, each
batch recorded in a checkpoint file, then the catalogue, last, so an interrupted copy serves
nothing at the destination, and running it again continues after the last recorded batch.
Every written batch is read back: Qdrant Edge and the Qdrant server keep an already unit-norm
vector bit for bit (their cosine preprocessing skips normalised vectors); the in-process
``QdrantClient(":memory:")`` test double re-normalises in float32 (a change of about 1e-7).
When the destination changed vectors, the affected models are re-sealed there (their integrity
digest is recomputed from what it holds), so the destination passes ``verify`` either way; the
result says how many vectors changed and by how much.

**backup** (:func:`backup_stream`) writes a tar archive of the catalogue and the *live*
generation of every indexed model, consistent while the store keeps serving and being written:
a generation is immutable once its catalogue entry is sealed (a re-index writes the other slot
and flips), so each model's points are read, tallied and checked against the seal of the entry
they belong to; a model re-indexed or deleted meanwhile is read again (or left out). Points of
generations nobody serves (a re-index in progress, the remains of a failed one) and tombstones
of deletes in progress are left out. Members:

    neurons/<n>-<batch>.json   [{"id", "payload"}, ...]  one batch of one model
    neurons/<n>-<batch>.f32    the batch's vectors, little-endian float32, row after row
    catalogue.jsonl            one {"id", "payload"} per catalogue point
    manifest.json              written last: format, embedder, models and their members,
                               sha256 of every member (a model read twice has only its last
                               reading listed)

**restore** (:func:`restore`) writes an archive into an empty store (``force`` wipes a
non-empty one first), neurons first, catalogue last, and checks every member's sha256.

**export** (:func:`export_store`, :func:`compare_exports`) reads a store's points into plain
dicts for comparing two stores point by point.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from neuronatlas.core.atomic import atomic_write_json
from neuronatlas.core.config import Home, HomeLike, Settings
from neuronatlas.core.errors import FailedPrecondition, InvalidArgument, StoreCorrupted
from neuronatlas.core.records import EmbedderInfo, ModelStatus, model_point_id, slot_key
from neuronatlas.core.store._common import Cond, Point, QdrantStoreBase
from neuronatlas.core.store.base import KnowledgeStore
from neuronatlas.core.store.integrity import (
    INTEGRITY_KEY,
    RETIRE_KEY,
    TOMBSTONE_KIND,
    SlotTally,
    seal_of,
)

log = logging.getLogger("neuronatlas.store")

BACKUP_FORMAT = "neuronatlas-backup"
BACKUP_VERSION = 1
MANIFEST = "manifest.json"
CATALOGUE = "catalogue.jsonl"
CHECKPOINT_FORMAT = "neuronatlas-migrate-checkpoint"
DEFAULT_BATCH = 512
MAX_BATCH = 8192
CHUNK_BYTES = 1 << 20  # backup stream chunks
BACKUP_ATTEMPTS = 5  # readings of one model before the backup settles for the last one
BACKUP_ROUNDS = 5  # catalogue re-reads until every indexed model was read at its live state
#: catalogue point kinds private to a backend (the remote store's embedder record): each store
#: writes its own when the embedder is bound, so they are neither copied nor exported
BACKEND_KINDS = frozenset({"meta"})

Progress = Callable[[str, int, int], None]  # (phase, done, total)


# -- raw access to the two collections ---------------------------------------------------------
def _raw(store: KnowledgeStore) -> QdrantStoreBase:
    if not isinstance(store, QdrantStoreBase):
        raise InvalidArgument(
            f"{type(store).__name__} is not a Qdrant store: only Edge and remote stores can be "
            "migrated, backed up or restored",
            field="store",
        )
    return store


def describe(store: KnowledgeStore) -> str:
    """A stable name of a store's location (used to key migration checkpoints)."""
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.core.store.remote import RemoteStore

    if isinstance(store, EdgeStore):
        return f"edge:{store.path.resolve()}"
    if isinstance(store, RemoteStore):
        return f"remote:{store.url}#{store.neurons_collection.removesuffix('_neurons')}"
    return repr(store)


def catalogue_points(store: KnowledgeStore) -> list[Point]:
    """Every catalogue point (id and payload) of every kind, in id order, the backend's private
    points (``BACKEND_KINDS``) left out."""
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.core.store.remote import RemoteStore

    out: list[Point] = []
    offset: Any = None
    while True:
        if isinstance(store, EdgeStore):
            import qdrant_edge as qe

            req = qe.ScrollRequest(offset=offset, limit=1000, with_payload=True, with_vector=False)
            points, offset = store._shard("models").scroll(req)
        elif isinstance(store, RemoteStore):
            points, offset = store._call(
                store.client.scroll,
                store.models_collection,
                limit=1000,
                offset=offset,
                with_payload=True,
                with_vectors=False,
            )
        else:
            raise InvalidArgument(f"cannot read the catalogue of {store!r}", field="store")
        for p in points:
            payload = dict(p.payload or {})
            if payload.get("kind") not in BACKEND_KINDS:
                out.append(Point(str(p.id), payload))
        if offset is None:
            return out


def neuron_count(store: KnowledgeStore) -> int:
    """Points in the neuron collection, every slot and kind."""
    return _raw(store).count() if store.embedder is not None else 0


def is_empty(store: KnowledgeStore) -> bool:
    return not catalogue_points(store) and neuron_count(store) == 0


def _scroll(
    store: QdrantStoreBase, conds: list[Cond], batch: int, offset: Any = None
) -> Iterator[tuple[list[Point], Any]]:
    """Batches of neuron points with vectors and payloads, and the offset after each."""
    while True:
        points, offset = store._n_scroll(conds, batch, offset, True, True)
        yield points, offset
        if offset is None:
            return


def _vector_bytes(vector: Sequence[float] | None) -> bytes:
    return b"" if vector is None else np.asarray(vector, dtype="<f4").tobytes()


def _check_batch(batch_size: int) -> int:
    if not 1 <= int(batch_size) <= MAX_BATCH:
        raise InvalidArgument(
            f"batch size must be 1..{MAX_BATCH}, not {batch_size}", field="batch_size"
        )
    return int(batch_size)


def _finish_writes(store: QdrantStoreBase) -> None:
    """After raw writes: fresh catalogue snapshot, then the indexes built (and flushed)."""
    store._refresh_visibility()
    store.optimize()


def wipe(store: KnowledgeStore) -> KnowledgeStore:
    """Delete everything a store holds (embedder identity included) and return it reopened,
    empty. The caller's object is closed (Edge) or must not be used any more."""
    from neuronatlas.core.store.edge import EdgeStore, _own_entry
    from neuronatlas.core.store.remote import RemoteStore

    if isinstance(store, EdgeStore):
        path = store.path
        store.close()
        for entry in path.iterdir():
            if not _own_entry(entry.name) or entry.name == ".lock":
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return EdgeStore(path)
    if isinstance(store, RemoteStore):
        for name in (store.neurons_collection, store.models_collection):
            if store._call(store.client.collection_exists, name):
                store._call(store.client.delete_collection, name)
        return RemoteStore(
            store.client,
            prefix=store.models_collection.removesuffix("_models"),
            shard_number=store.shard_number,
            replication_factor=store.replication_factor,
            url=store.url,
        )
    raise InvalidArgument(f"cannot wipe {store!r}", field="store")


def open_location(location: str, settings: Settings) -> KnowledgeStore:
    """The store at ``location``: a Qdrant URL (``http(s)://...``; ``:memory:`` is the
    in-process test double) with the remote settings of ``settings`` (api key, collection
    prefix, shards, replication), or the directory of an embedded store."""
    from neuronatlas.core.store import open_store

    if location == ":memory:" or location.startswith(("http://", "https://")):
        return open_store(replace(settings, backend="remote", url=location))
    if not location:
        raise InvalidArgument("an empty store location", field="location")
    return open_store(replace(settings, backend="edge", store_path=Path(location).expanduser()))


# -- migrate -------------------------------------------------------------------------------------
@dataclass
class MigrateResult:
    source: str
    destination: str
    neurons: int = 0  # neuron points copied by this run
    neurons_total: int = 0  # neuron points in the source
    catalogue: int = 0  # catalogue points copied
    batches: int = 0  # batches written by this run
    resumed_at: int = 0  # neuron points a previous run had copied already (checkpoint)
    skipped_without_vector: int = 0  # damaged source points (no vector): not copied
    changed_vectors: int = 0  # vectors the destination did not keep bit for bit
    max_vector_change: float = 0.0  # largest |difference| of such a vector element
    resealed: list[str] = field(default_factory=list)  # models re-sealed at the destination
    elapsed_s: float = 0.0


def default_checkpoint(home: HomeLike, source: str, destination: str) -> Path:
    """``<home>/transfers/migrate-<key of source and destination>.json``."""
    key = hashlib.sha256(f"{source}\n{destination}".encode()).hexdigest()[:16]
    return Home.of(home).transfers / f"migrate-{key}.json"


def _load_checkpoint(path: Path, source: str, destination: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise InvalidArgument(
            f"the checkpoint {path} cannot be read ({e}): delete it to start over",
            field="checkpoint",
        ) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise InvalidArgument(f"{path} is not a migration checkpoint", field="checkpoint")
    if data.get("source") != source or data.get("destination") != destination:
        raise InvalidArgument(
            f"the checkpoint {path} belongs to the migration {data.get('source')} -> "
            f"{data.get('destination')}, not {source} -> {destination}",
            field="checkpoint",
        )
    return data


def migrate(
    src: KnowledgeStore,
    dst: KnowledgeStore,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    batch_size: int = DEFAULT_BATCH,
    force: bool = False,
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> MigrateResult:
    """Copy every point of ``src`` into ``dst`` (see the module docstring).

    ``checkpoint``: the file recording the copied batches (None: not resumable). A checkpoint
    of this source and destination continues the copy after its last batch; without one the
    destination must be empty unless ``force`` (points with the same ids are overwritten,
    others kept). ``stop_after``: stop after that many batches of this run (tests and dry runs;
    the checkpoint is kept). The checkpoint is deleted when the copy completes."""
    t0 = time.perf_counter()
    source, dest = _raw(src), _raw(dst)
    batch_size = _check_batch(batch_size)
    result = MigrateResult(describe(src), describe(dst))
    if result.source == result.destination:
        raise InvalidArgument("the source and the destination are the same store", field="to")
    ck_path = Path(checkpoint) if checkpoint is not None else None
    state = (
        _load_checkpoint(ck_path, result.source, result.destination)
        if ck_path is not None
        else None
    )
    if state is None:
        if not force and not is_empty(dst):
            raise FailedPrecondition(
                f"the destination {result.destination} is not empty: migrate into an empty "
                "store, or pass --force to copy over it (points with the same ids are "
                "replaced, the others kept)"
            )
        state = {
            "format": CHECKPOINT_FORMAT,
            "source": result.source,
            "destination": result.destination,
            "started_at": time.time(),
            "offset": None,
            "copied": 0,
            "batches": 0,
            "changed_vectors": 0,
            "max_vector_change": 0.0,
            "changed_models": [],
            "skipped_without_vector": 0,
        }
    else:
        result.resumed_at = int(state["copied"])
        log.info("migrate: resuming after %d copied points", result.resumed_at)

    def save() -> None:
        if ck_path is not None:
            atomic_write_json(ck_path, state)

    info = src.embedder
    changed_models: set[str] = set(state["changed_models"])
    if info is not None:
        dst.bind_embedder(info)
        result.neurons_total = source.count()
        offset = state["offset"]
        if state["batches"] and offset is None:
            batches: Iterator[tuple[list[Point], Any]] = iter(())  # all neurons were copied
        else:
            batches = _scroll(source, [], batch_size, offset)
        for points, nxt in batches:
            if stop_after is not None and result.batches >= stop_after:
                return result
            writable = [p for p in points if p.vector is not None]
            state["skipped_without_vector"] += len(points) - len(writable)
            if writable:
                dest._n_upsert(writable)
                _compare_back(dest, writable, state, changed_models)
            state["offset"] = nxt if nxt is None or isinstance(nxt, (int, str)) else str(nxt)
            state["copied"] += len(points)
            state["batches"] += 1
            state["changed_models"] = sorted(changed_models)
            save()
            result.neurons += len(points)
            result.batches += 1
            if progress is not None:
                progress("neurons", int(state["copied"]), result.neurons_total)
    catalogue = catalogue_points(src)
    for i, p in enumerate(catalogue):
        dest._m_put(p.id, p.payload)
        if progress is not None and (i + 1 == len(catalogue) or (i + 1) % 100 == 0):
            progress("catalogue", i + 1, len(catalogue))
    result.catalogue = len(catalogue)
    dest._refresh_visibility()
    for model_id in sorted(changed_models):
        dest._reseal(model_id)  # the destination re-normalised some vectors: new digest
        result.resealed.append(model_id)
    _finish_writes(dest)
    if ck_path is not None:
        ck_path.unlink(missing_ok=True)
    result.changed_vectors = int(state["changed_vectors"])
    result.max_vector_change = float(state["max_vector_change"])
    result.skipped_without_vector = int(state["skipped_without_vector"])
    result.elapsed_s = time.perf_counter() - t0
    return result


def _compare_back(
    dest: QdrantStoreBase, written: list[Point], state: dict[str, Any], changed: set[str]
) -> None:
    """Read a written batch back: count vectors the destination did not keep bit for bit."""
    back = {p.id: p for p in dest._n_retrieve([p.id for p in written], with_vector=True)}
    for p in written:
        got = back.get(p.id)
        if got is None:
            raise StoreCorrupted(f"point {p.id} was written but cannot be read back")
        if _vector_bytes(got.vector) == _vector_bytes(p.vector):
            continue
        a = np.asarray(got.vector, dtype=np.float32)
        b = np.asarray(p.vector, dtype=np.float32)
        diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
        state["changed_vectors"] += 1
        state["max_vector_change"] = max(float(state["max_vector_change"]), diff)
        changed.add(str(p.payload.get("model_id", "")))


# -- backup --------------------------------------------------------------------------------------
class _Sink(io.RawIOBase):
    """A write-only file that collects what tarfile writes, handed out by ``take``."""

    def __init__(self) -> None:
        super().__init__()
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.buf += bytes(data)
        return len(data)

    def take(self) -> Iterator[bytes]:
        while self.buf:
            chunk, self.buf = bytes(self.buf[:CHUNK_BYTES]), self.buf[CHUNK_BYTES:]
            yield chunk


@dataclass
class _ModelCopy:
    model_id: str
    payload: dict[str, Any]
    members: list[str]
    points: int
    digest: str


def _entry_state(payload: dict[str, Any] | None) -> tuple[Any, ...] | None:
    """What must stay the same for a model's copied points to belong to its entry."""
    if payload is None or payload.get("kind") != "model":
        return None
    if payload.get("status") != ModelStatus.INDEXED.value:
        return ("not-indexed",)
    g = int(payload.get("generation", 0))
    seal = seal_of(payload, g)
    return (g, seal.get("count") if seal else None, seal.get("digest") if seal else None)


def backup_stream(
    store: KnowledgeStore, batch_size: int = 1024, progress: Progress | None = None
) -> Iterator[bytes]:
    """The backup archive of ``store`` as a stream of byte chunks (see the module docstring).
    Reads only: the store keeps answering queries (and taking writes) meanwhile."""
    raw = _raw(store)
    batch_size = _check_batch(batch_size)
    sink = _Sink()
    tar = tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT)
    sums: dict[str, str] = {}
    now = time.time()

    def add(name: str, data: bytes) -> Iterator[bytes]:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), int(now), 0o644
        tar.addfile(info, io.BytesIO(data))
        sums[name] = hashlib.sha256(data).hexdigest()
        yield from sink.take()

    embedder = store.embedder
    copies: dict[str, _ModelCopy] = {}
    warnings: list[str] = []
    seq = 0
    done_points = 0

    def copy(payload: dict[str, Any]) -> Iterator[bytes]:
        """Read a model's live generation until it matches its entry's seal (or give up)."""
        nonlocal seq, done_points
        model_id = str(payload["model_id"])
        for attempt in range(BACKUP_ATTEMPTS):
            state = _entry_state(payload)
            if state is None or state == ("not-indexed",):
                copies.pop(model_id, None)
                return
            g = int(payload.get("generation", 0))
            tally, members, n = SlotTally(), [], 0
            prefix = f"neurons/{seq:06d}"
            seq += 1
            conds = [Cond("slot", any=(slot_key(model_id, g),))]
            for b, (points, _) in enumerate(_scroll(raw, conds, batch_size)):
                if not points:
                    continue
                rows = [{"id": p.id, "payload": p.payload} for p in points]
                vectors = b"".join(_vector_bytes(p.vector) for p in points)
                for p in points:
                    tally.add(p.id, p.vector, p.payload)
                for name, data in (
                    (f"{prefix}-{b:05d}.json", json.dumps(rows, separators=(",", ":")).encode()),
                    (f"{prefix}-{b:05d}.f32", vectors),
                ):
                    yield from add(name, data)
                    members.append(name)
                n += len(points)
                done_points += len(points)
                if progress is not None:
                    progress("neurons", done_points, 0)
            current = raw._m_get(model_point_id(model_id))
            seal = seal_of(current, g) if current is not None else None
            if _entry_state(current) == state:
                matches = seal is None or (
                    tally.points == int(seal["count"]) and tally.digest_hex == seal["digest"]
                )
                if matches or attempt == BACKUP_ATTEMPTS - 1:
                    if not matches:
                        warnings.append(
                            f"model {model_id!r}: its stored points do not match the seal "
                            "recorded when it was indexed (run `neuronatlas verify` on the "
                            "source); backed up as found"
                        )
                    copies[model_id] = _ModelCopy(model_id, dict(current or {}), members, n, "")
                    copies[model_id].digest = tally.digest_hex
                    return
            if current is None:
                copies.pop(model_id, None)
                return
            payload = current  # re-indexed, deleted or written meanwhile: read it again
        warnings.append(f"model {model_id!r} kept changing during the backup: left out")
        copies.pop(model_id, None)

    catalogue: list[Point] = []
    for _ in range(BACKUP_ROUNDS):
        catalogue = catalogue_points(store)
        pending = [
            p.payload
            for p in catalogue
            if p.payload.get("kind") == "model"
            and p.payload.get("status") == ModelStatus.INDEXED.value
            and (
                str(p.payload["model_id"]) not in copies
                or _entry_state(copies[str(p.payload["model_id"])].payload)
                != _entry_state(p.payload)
            )
        ]
        if embedder is None or not pending:
            break
        for payload in sorted(pending, key=lambda q: str(q["model_id"])):
            yield from copy(payload)

    # The catalogue as of the last reading, each copied model's entry as its points were read.
    entries: list[Point] = []
    listed: set[str] = set()
    for p in catalogue:
        kind = p.payload.get("kind")
        if kind == TOMBSTONE_KIND:
            continue  # a delete in progress: the model is gone
        model_id = str(p.payload.get("model_id", ""))
        payload = p.payload
        if kind == "model" and model_id in copies:
            payload = copies[model_id].payload
            listed.add(model_id)
        elif kind == "model" and p.payload.get("status") == ModelStatus.INDEXED.value:
            continue  # indexed after the last round, or left out: not in this backup
        payload = {k: v for k, v in payload.items() if k != RETIRE_KEY}
        entries.append(Point(p.id, payload))
    lines = b"".join(
        json.dumps({"id": p.id, "payload": p.payload}, separators=(",", ":")).encode() + b"\n"
        for p in entries
    )
    yield from add(CATALOGUE, lines)
    models = [copies[m] for m in sorted(listed)]
    manifest = {
        "format": BACKUP_FORMAT,
        "version": BACKUP_VERSION,
        "created_at": now,
        "source": describe(store),
        "embedder": embedder.to_dict() if embedder is not None else None,
        "catalogue": {"member": CATALOGUE, "points": len(entries)},
        "neuron_points": sum(m.points for m in models),
        "models": [
            {
                "model_id": m.model_id,
                "generation": int(m.payload.get("generation", 0)),
                "points": m.points,
                "digest": m.digest,
                "members": m.members,
            }
            for m in models
        ],
        "sha256": {
            name: sums[name] for name in [CATALOGUE, *(x for m in models for x in m.members)]
        },
        "warnings": warnings,
    }
    yield from add(MANIFEST, json.dumps(manifest, indent=1).encode())
    tar.close()
    yield from sink.take()


def write_backup(
    store: KnowledgeStore,
    out: str | os.PathLike[str],
    batch_size: int = 1024,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write the backup archive of ``store`` to ``out`` (atomically); returns its manifest."""
    return save_stream(backup_stream(store, batch_size, progress), out)


def save_stream(chunks: Iterator[bytes], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write an archive stream to ``out`` through a temp file renamed at the end; returns the
    archive's manifest (and refuses a stream that is not a complete backup)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        manifest = read_manifest(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    with _open_archive(path) as tar:
        return _manifest(tar, path)


def _open_archive(path: str | os.PathLike[str]) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except FileNotFoundError:
        raise InvalidArgument(f"no backup file {path}", field="backup") from None
    except (tarfile.TarError, OSError) as e:
        raise InvalidArgument(f"{path} is not a backup archive ({e})", field="backup") from None


def _manifest(tar: tarfile.TarFile, path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        data = json.loads(_member(tar, MANIFEST))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise InvalidArgument(
            f"{path} is not a backup archive, or a damaged or truncated one ({e})",
            field="backup",
        ) from None
    except KeyError:
        raise InvalidArgument(
            f"{path} has no {MANIFEST}: not a NeuronAtlas backup, or an incomplete one",
            field="backup",
        ) from None
    except ValueError as e:
        raise InvalidArgument(f"{path}: {MANIFEST} is not JSON ({e})", field="backup") from None
    if not isinstance(data, dict) or data.get("format") != BACKUP_FORMAT:
        raise InvalidArgument(f"{path} is not a NeuronAtlas backup", field="backup")
    if data.get("version") != BACKUP_VERSION:
        raise InvalidArgument(
            f"{path} is a backup of format version {data.get('version')!r}; this version "
            f"reads {BACKUP_VERSION}",
            field="backup",
        )
    return data


def _member(tar: tarfile.TarFile, name: str, sha256: str | None = None) -> bytes:
    f: IO[bytes] | None = tar.extractfile(name)
    if f is None:
        raise KeyError(name)
    data = f.read()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise StoreCorrupted(f"the backup member {name} is damaged (sha256 mismatch)")
    return data


@dataclass
class RestoreResult:
    neurons: int = 0
    catalogue: int = 0
    models: int = 0
    wiped: bool = False
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def restore(
    store: KnowledgeStore,
    archive: str | os.PathLike[str],
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> tuple[KnowledgeStore, RestoreResult]:
    """Write the backup ``archive`` into ``store``; returns the store (a new object when it
    had to be wiped: a non-empty store is refused unless ``force``) and what was written."""
    t0 = time.perf_counter()
    result = RestoreResult()
    with _open_archive(archive) as tar:
        manifest = _manifest(tar, archive)
        sums: dict[str, str] = manifest.get("sha256", {})
        _raw(store)
        if not is_empty(store):
            if not force:
                n = neuron_count(store)
                entries = len(catalogue_points(store))
                raise FailedPrecondition(
                    f"the store {describe(store)} is not empty ({entries} catalogue entries, "
                    f"{n} neuron points): restore into an empty store, or pass --force to "
                    "replace its contents"
                )
            store = wipe(store)
            result.wiped = True
        raw = _raw(store)
        emb = manifest.get("embedder")
        total = int(manifest.get("neuron_points", 0))
        if emb is not None:
            store.bind_embedder(EmbedderInfo.from_dict(emb))
            for model in manifest.get("models", []):
                for name in model["members"]:
                    if not name.endswith(".json"):
                        continue
                    stem = name.removesuffix(".json")
                    rows = json.loads(_member(tar, name, sums.get(name)))
                    vec = np.frombuffer(
                        _member(tar, stem + ".f32", sums.get(stem + ".f32")), dtype="<f4"
                    )
                    if not rows:
                        continue
                    vec = vec.reshape(len(rows), -1)
                    points = [
                        Point(str(r["id"]), dict(r["payload"]), v.tolist())
                        for r, v in zip(rows, vec, strict=True)
                    ]
                    raw._n_upsert(points)
                    result.neurons += len(points)
                    if progress is not None:
                        progress("neurons", result.neurons, total)
                result.models += 1
        lines = _member(tar, CATALOGUE, sums.get(CATALOGUE)).splitlines()
        for line in lines:
            if line.strip():
                p = json.loads(line)
                raw._m_put(str(p["id"]), dict(p["payload"]))
                result.catalogue += 1
        if progress is not None:
            progress("catalogue", result.catalogue, result.catalogue)
        result.warnings = list(manifest.get("warnings", []))
    _finish_writes(raw)
    result.elapsed_s = time.perf_counter() - t0
    return store, result


# -- export --------------------------------------------------------------------------------------
@dataclass
class StoreExport:
    """Every point of a store: catalogue ``id -> payload``, neurons ``id -> (vector float32
    bytes, payload)``, and the embedder identity."""

    embedder: dict[str, Any] | None
    catalogue: dict[str, dict[str, Any]]
    points: dict[str, tuple[bytes, dict[str, Any]]]


def export_store(store: KnowledgeStore, batch_size: int = 1024) -> StoreExport:
    raw = _raw(store)
    info = store.embedder
    points: dict[str, tuple[bytes, dict[str, Any]]] = {}
    if info is not None:
        for batch, _ in _scroll(raw, [], batch_size):
            for p in batch:
                points[p.id] = (_vector_bytes(p.vector), p.payload)
    return StoreExport(
        info.to_dict() if info is not None else None,
        {p.id: p.payload for p in catalogue_points(store)},
        points,
    )


def _same_payload(a: Any, b: Any) -> bool:
    """Payload equality, floats to within 1e-12 relative: Qdrant Edge parses payload JSON with
    a fast float reader that can move the last binary digit of a double (seen on timestamps)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0) or (a != a and b != b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_payload(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_payload(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def compare_exports(
    a: StoreExport, b: StoreExport, *, vector_tolerance: float = 0.0, ignore_seals: bool = False
) -> list[str]:
    """Differences between two exports (empty: identical). ``vector_tolerance``: largest
    element difference still taken as equal (0: bit for bit). ``ignore_seals``: leave the
    integrity seals of catalogue entries out of the comparison."""
    out: list[str] = []
    if a.embedder != b.embedder:
        out.append(f"embedder {a.embedder} != {b.embedder}")

    def strip(p: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in p.items() if k != INTEGRITY_KEY} if ignore_seals else p

    for what, x, y in (("catalogue", a.catalogue, b.catalogue), ("points", a.points, b.points)):
        missing, extra = sorted(set(x) - set(y)), sorted(set(y) - set(x))
        if missing:
            out.append(f"{what}: {len(missing)} ids only in the first, e.g. {missing[0]}")
        if extra:
            out.append(f"{what}: {len(extra)} ids only in the second, e.g. {extra[0]}")
    for pid in sorted(set(a.catalogue) & set(b.catalogue)):
        if not _same_payload(strip(a.catalogue[pid]), strip(b.catalogue[pid])):
            out.append(f"catalogue point {pid}: payloads differ")
    vec_diff, worst = 0, 0.0
    for pid in sorted(set(a.points) & set(b.points)):
        (va, pa), (vb, pb) = a.points[pid], b.points[pid]
        if not _same_payload(pa, pb):
            out.append(f"point {pid}: payloads differ")
        if va != vb:
            fa = np.frombuffer(va, dtype="<f4")
            fb = np.frombuffer(vb, dtype="<f4")
            d = float(np.max(np.abs(fa - fb))) if fa.shape == fb.shape else float("inf")
            worst = max(worst, d)
            if d > vector_tolerance:
                vec_diff += 1
    if vec_diff:
        out.append(f"{vec_diff} vectors differ (largest element difference {worst:.3g})")
    return out
