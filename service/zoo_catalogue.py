"""ZooService catalogue methods (see ``zoo.py``): RegisterModel, UpdateModel, UploadArtifact,
RegisterProbeSet, ListProbeSets, GetSampleImages; and the thumbnails that GetNeuron and
SearchNeurons add with ``include_thumbnails`` (:class:`Thumbnails`).

Like the query servicer, the methods are thin: parse (``convert_zoo.py``), validate
(``core/validate.py``, ``indexer/sources.py`` for sources from the network), call the core or
the indexer, convert back. What they guarantee:

- **RegisterModel** builds the model once (weights loaded, one input-sized forward pass) before
  anything is written; ``artifact:<sha256>`` file values stay references in the entry and are
  resolved to the uploaded files only to build. A ``request_id`` makes a retry return the same
  entry (kept in the entry's ``extra["register_requests"]``, so it survives restarts and is
  shared by replicas of one store); the same id with another request is INVALID_ARGUMENT.
  ``replace`` swaps the source (e.g. after a failed first index), refused while an indexing
  operation of the model is queued or running. Registrations are serialised: one model is
  built at a time.
- **UpdateModel**: the update mask's fields only, validated, one catalogue write.
- **UploadArtifact**: header first, then chunks of at most 1 MiB; the size is checked against
  the limit before any byte is stored, the bytes against the announced size as they arrive
  and the digest at the end; anything wrong is INVALID_ARGUMENT and nothing is kept
  (``core/artifacts.py``).
- **RegisterProbeSet** / **ListProbeSets** / **GetSampleImages**: probe sets from a server
  folder or an uploaded archive (unpacked safely), and their images as PNG thumbnails.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import Message

from neuronatlas.core import validate as V
from neuronatlas.core.artifacts import PREFIX as ARTIFACT_PREFIX
from neuronatlas.core.artifacts import check_sha256, parse_ref
from neuronatlas.core.catalogue import (
    MAX_SAMPLE_INDICES,
    ProbeSetInfo,
    SampleImage,
    check_thumbnail_size,
    check_update,
    classes_of,
    thumbnail,
    update_metadata,
)
from neuronatlas.core.config import Home
from neuronatlas.core.errors import FailedPrecondition, InvalidArgument, NotFound
from neuronatlas.core.records import ModelEntry, NeuronRecord, TopSample
from neuronatlas.core.store.base import KnowledgeStore
from neuronatlas.service import convert as C
from neuronatlas.service import convert_zoo as CZ
from neuronatlas.service.errors import to_rpc_status
from neuronatlas.service.servicer import _check_deadline, rpc
from neuronatlas.v1 import neuronatlas_pb2 as pb
from neuronatlas.v1 import zoo_pb2 as zpb

if TYPE_CHECKING:
    from neuronatlas.indexer.probes import ProbeSet
    from neuronatlas.service.zoo import ZooContext

MAX_CHUNK_BYTES = 1 << 20
MAX_NAME_CHARS = 200
REQUESTS_KEPT = 16  # request ids an entry remembers (RegisterModel idempotency)
# include_thumbnails on GetNeuron / SearchNeurons
THUMBNAIL_SIZE = 96
NEURON_THUMBNAILS = 64  # GetNeuron: every top sample up to this many
HIT_THUMBNAILS = 8  # SearchNeurons: per hit
RESPONSE_THUMBNAILS = 64  # SearchNeurons: per response
BATCH_THUMBNAILS = 128  # BatchSearchNeurons: shared by its responses, earlier searches first

S = TypeVar("S")
R = TypeVar("R", bound=Message)


# -- the streaming counterpart of servicer.rpc ----------------------------------------------------
def rpc_stream(
    method: Callable[[S, Iterator[Any], grpc.ServicerContext], R],
) -> Callable[[S, Iterator[Any], grpc.ServicerContext], R]:
    """Deadline check and the error mapping around a client-streaming method. A refusal made
    while reading the stream (a malformed message: ``wire.py``) already set the status; it is
    kept."""

    @functools.wraps(method)
    def wrapper(self: S, requests: Iterator[Any], context: grpc.ServicerContext) -> R:
        _check_deadline(context)
        try:
            return method(self, requests, context)
        except Exception as exc:
            code = context.code() if hasattr(context, "code") else None
            if not context.is_active() or code is not None:
                raise  # the client went away, or the call was already aborted
            context.abort_with_status(to_rpc_status(exc))
            raise  # not reached: abort raises

    return wrapper


def _under(exc: InvalidArgument, prefix: str = "source") -> InvalidArgument:
    """``exc`` with its field put under ``prefix`` (a builder's "depth" -> "source.depth")."""
    name = exc.field or ""
    if name == prefix or name.startswith(prefix + ".") or name.startswith(prefix + "["):
        return exc
    return InvalidArgument(str(exc), field=f"{prefix}.{name}" if name else prefix)


def _file_name(name: str, field: str = "header.name") -> str:
    if len(name) > MAX_NAME_CHARS:
        raise InvalidArgument(f"file name is longer than {MAX_NAME_CHARS} characters", field=field)
    if "/" in name or "\\" in name or name in (".", "..") or any(ord(c) < 32 for c in name):
        raise InvalidArgument(
            f"file name {V.shown(name)} must be a plain name (no directories or control "
            "characters)",
            field=field,
        )
    return name


class CatalogueMethods:
    """RegisterModel, UpdateModel, UploadArtifact, RegisterProbeSet, ListProbeSets,
    GetSampleImages."""

    ctx: ZooContext
    _register_lock = threading.Lock()  # one model built at a time, per process
    _probe_lock = threading.Lock()

    # -- models ----------------------------------------------------------------------------------
    @rpc
    def RegisterModel(
        self, request: zpb.RegisterModelRequest, context: grpc.ServicerContext
    ) -> zpb.RegisterModelResponse:
        from neuronatlas.indexer.api import register_model
        from neuronatlas.indexer.sources import check_untrusted_source

        model_id = V.check_model_id(request.model_id)
        request_id = V.check_request_id(request.request_id)
        V.check_metadata(
            display_name=request.display_name,
            tags=list(request.tags),
            notes=request.notes,
            training_data=request.training_data,
        )
        source = CZ.source_from_pb(request.source)
        check_untrusted_source(source, allow_python=self.ctx.allow_python_sources)
        self._check_artifacts(source)
        fp = CZ.fingerprint(request)
        store = self.ctx.atlas.store
        with self._register_lock:
            if request_id:
                prior = self._registered_by(request_id)
                if prior is not None:
                    entry, prior_fp = prior
                    if prior_fp != fp:
                        raise InvalidArgument(
                            f"request_id {V.shown(request_id)} was used for another request",
                            field="request_id",
                        )
                    return zpb.RegisterModelResponse(model=C.model_to_pb(entry))
            old = _get(store, model_id)
            if request.replace and old is not None:
                self._check_idle(model_id)
            extra = None
            if request_id:
                seen = list((old.extra.get("register_requests") or []) if old else [])
                extra = {
                    "register_requests": [*seen, {"id": request_id, "fp": fp}][-REQUESTS_KEPT:]
                }
            try:
                entry = register_model(
                    store,
                    model_id,
                    source,
                    display_name=request.display_name,
                    training_data=request.training_data,
                    tags=list(request.tags),
                    notes=request.notes,
                    replace=request.replace,
                    resolve=self.ctx.artifacts.resolve,
                    extra=extra,
                )
            except InvalidArgument as e:
                raise _under(e, "source") from None
        return zpb.RegisterModelResponse(model=C.model_to_pb(entry))

    def _check_artifacts(self, source: dict[str, Any]) -> None:
        """Every ``artifact:<sha256>`` the source names was uploaded here."""
        from neuronatlas.indexer.sources import artifact_refs

        for key, ref in artifact_refs(source).items():
            try:
                sha = parse_ref(ref)
            except InvalidArgument as e:
                raise InvalidArgument(str(e), field=f"source.{key}") from None
            try:
                self.ctx.artifacts.get(str(sha))
            except NotFound:
                raise NotFound(
                    f"source.{key} names artifact {str(sha)[:12]}…, which this server does not "
                    "have: upload it first (UploadArtifact)",
                    resource_type="artifact",
                    resource_name=ref,
                ) from None

    def _registered_by(self, request_id: str) -> tuple[ModelEntry, str] | None:
        """The entry a RegisterModel with ``request_id`` wrote, and that request's fingerprint."""
        for entry in self.ctx.atlas.store.list_models():
            for seen in entry.extra.get("register_requests") or []:
                if isinstance(seen, dict) and seen.get("id") == request_id:
                    return entry, str(seen.get("fp", ""))
        return None

    def _check_idle(self, model_id: str) -> None:
        """FailedPrecondition while an indexing operation of the model is queued or running."""
        from neuronatlas.core.jobs import JobState

        busy = self.ctx.queue.list_jobs([JobState.QUEUED, JobState.RUNNING], model_id=model_id)
        if busy:
            raise FailedPrecondition(
                f"model {model_id!r} has an indexing operation in progress "
                f"(operations/{busy[0].job_id}): cancel it or let it finish before replacing "
                "its source"
            )

    @rpc
    def UpdateModel(
        self, request: zpb.UpdateModelRequest, context: grpc.ServicerContext
    ) -> zpb.UpdateModelResponse:
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgument(
                "update_mask is empty: name the fields to change (display_name, tags, notes, "
                "training_data)",
                field="update_mask",
            )
        m = request.model
        values = {
            "display_name": m.display_name,
            "tags": list(m.tags),
            "notes": m.notes,
            "training_data": m.training_data,
        }
        changes: dict[str, Any] = {}
        for i, path in enumerate(paths):
            if path not in values:
                raise InvalidArgument(
                    f"update_mask.paths[{i}] {V.shown(path)} is not a field UpdateModel "
                    f"changes; use {', '.join(values)}",
                    field=f"update_mask.paths[{i}]",
                )
            changes[path] = values[path]
        model_id = V.check_model_id(m.model_id, "model.model_id")
        check_update(changes, "model.")
        entry = update_metadata(self.ctx.atlas.store, model_id, changes)
        return zpb.UpdateModelResponse(model=C.model_to_pb(entry))

    # -- uploads ---------------------------------------------------------------------------------
    @rpc_stream
    def UploadArtifact(
        self, requests: Iterator[zpb.UploadArtifactRequest], context: grpc.ServicerContext
    ) -> zpb.UploadArtifactResponse:
        stream = iter(requests)
        first = next(stream, None)
        if first is None:
            raise InvalidArgument(
                "the upload is empty: send the header first, then the data", field="header"
            )
        if first.WhichOneof("part") != "header":
            raise InvalidArgument(
                "the first message of an upload must be the header (sha256, size, name, kind)",
                field="header",
            )
        header = first.header
        sha = check_sha256(header.sha256, field="header.sha256")
        limit = self.ctx.artifacts.max_bytes
        if header.size < 0:
            raise InvalidArgument(f"size must be >= 0, not {header.size}", field="header.size")
        if header.size > limit:
            raise InvalidArgument(
                f"the file is {header.size} bytes, more than this server's upload limit of "
                f"{limit} bytes",
                field="header.size",
            )
        name = _file_name(header.name)
        kind = CZ.artifact_kind_from_pb(header.kind)

        def chunks() -> Iterator[bytes]:
            total = 0
            for n, msg in enumerate(stream, 1):
                part = msg.WhichOneof("part")
                if part == "header":
                    raise InvalidArgument(
                        f"message {n + 1} is a second header: only the first one may be",
                        field="header",
                    )
                if part is None:
                    raise InvalidArgument(
                        f"message {n + 1} carries neither a header nor a chunk", field="chunk"
                    )
                data = msg.chunk
                if len(data) > MAX_CHUNK_BYTES:
                    raise InvalidArgument(
                        f"chunk {n} is {len(data)} bytes, more than {MAX_CHUNK_BYTES}",
                        field="chunk",
                    )
                total += len(data)
                if total > header.size:
                    raise InvalidArgument(
                        f"the upload holds more than the {header.size} bytes its header announced",
                        field="chunk",
                    )
                yield data

        try:
            art = self.ctx.artifacts.put(
                chunks(), sha256=sha, name=name or sha, kind=kind, size=header.size
            )
        except InvalidArgument as e:
            fields = {"sha256": "header.sha256", "size": "header.size", "data": "chunk"}
            raise InvalidArgument(str(e), field=fields.get(e.field or "", e.field)) from None
        return zpb.UploadArtifactResponse(artifact=CZ.artifact_to_pb(art))

    # -- probe sets ------------------------------------------------------------------------------
    @rpc
    def RegisterProbeSet(
        self, request: zpb.RegisterProbeSetRequest, context: grpc.ServicerContext
    ) -> zpb.RegisterProbeSetResponse:
        from neuronatlas.indexer.probes import check_probe_name, register_probe_set

        name = check_probe_name(request.name, field="name")
        if request.limit < 0:
            raise InvalidArgument(
                f"limit must be >= 0 (0 = all images), not {request.limit}", field="limit"
            )
        which = request.WhichOneof("origin")
        if which is None:
            raise InvalidArgument(
                "give the images: folder (on the server) or artifact (an uploaded archive)",
                field="origin",
            )
        if which == "folder":
            if not request.folder.strip() or "\x00" in request.folder:
                raise InvalidArgument("folder must be a path on the server", field="folder")
            folder = Path(request.folder).expanduser()
        else:
            ref = request.artifact
            if not ref.startswith(ARTIFACT_PREFIX):
                raise InvalidArgument(
                    f"artifact must be 'artifact:<sha256>', not {V.shown(ref)}", field="artifact"
                )
            try:
                sha = str(parse_ref(ref))
                self.ctx.artifacts.get(sha)
            except InvalidArgument as e:
                raise InvalidArgument(str(e), field="artifact") from None
            except NotFound:
                raise NotFound(
                    f"no uploaded artifact {sha[:12]}…: upload the archive first",
                    resource_type="artifact",
                    resource_name=ref,
                ) from None
            with self._probe_lock:
                try:
                    folder = _archive_root(self.ctx.artifacts.unpack(sha))
                except InvalidArgument as e:
                    raise InvalidArgument(str(e), field="artifact") from None
        with self._probe_lock:
            try:
                probe = register_probe_set(
                    self.ctx.home, name, folder, request.limit or None, replace=request.replace
                )
            except InvalidArgument as e:
                if e.field in ("probe", "limit", "name"):
                    field = which if e.field == "probe" else e.field
                    raise InvalidArgument(str(e), field=field) from None
                raise
        return zpb.RegisterProbeSetResponse(probe_set=CZ.probe_set_to_pb(self._info(probe)))

    def _info(self, probe: ProbeSet) -> ProbeSetInfo:
        return ProbeSetInfo(
            probe.name,
            len(probe),
            classes_of(probe.files),
            probe.sha256,
            _origin(self.ctx.home, probe.root),
        )

    @rpc
    def ListProbeSets(
        self, request: zpb.ListProbeSetsRequest, context: grpc.ServicerContext
    ) -> zpb.ListProbeSetsResponse:
        from neuronatlas.indexer.probes import list_probe_sets

        return zpb.ListProbeSetsResponse(
            probe_sets=[CZ.probe_set_to_pb(self._info(p)) for p in list_probe_sets(self.ctx.home)]
        )

    @rpc
    def GetSampleImages(
        self, request: zpb.GetSampleImagesRequest, context: grpc.ServicerContext
    ) -> zpb.GetSampleImagesResponse:
        from neuronatlas.indexer.probes import check_probe_name, load_probe_set

        check_probe_name(request.probe_set, field="probe_set")
        indices = list(request.indices)
        if not indices:
            raise InvalidArgument("give at least one image index", field="indices")
        if len(indices) > MAX_SAMPLE_INDICES:
            raise InvalidArgument(
                f"at most {MAX_SAMPLE_INDICES} indices, not {len(indices)}", field="indices"
            )
        size = check_thumbnail_size(request.max_size)
        probe = load_probe_set(self.ctx.home, request.probe_set)
        for i, index in enumerate(indices):
            if not 0 <= index < len(probe):
                raise InvalidArgument(
                    f"index {index} is outside probe set {probe.name!r} (0..{len(probe) - 1})",
                    field=f"indices[{i}]",
                )
        images = []
        for index in indices:
            _check_deadline(context)
            rel = probe.files[index]
            png, w, h = thumbnail(probe.root / rel, size)
            images.append(SampleImage(index, rel, _label(rel), png, w, h))
        return zpb.GetSampleImagesResponse(images=[CZ.sample_to_pb(s) for s in images])


# -- helpers ---------------------------------------------------------------------------------
def _get(store: KnowledgeStore, model_id: str) -> ModelEntry | None:
    try:
        return store.get_model(model_id)
    except NotFound:
        return None


def _label(sample_id: str) -> str:
    return sample_id.split("/", 1)[0] if "/" in sample_id else ""


def _archive_root(folder: Path) -> Path:
    """The folder an archive's images are in: the unpacked folder, or its only subfolder when
    the archive wraps everything in one (``cifar/<class>/<image>``)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    if len(entries) == 1 and entries[0].is_dir():
        return _archive_root(entries[0])
    return folder


def _origin(home: Home, root: Path) -> str:
    """Where a probe set's images are: ``artifact:<sha256>`` for an unpacked upload, else the
    folder."""
    try:
        rel = PurePosixPath(Path(root).resolve().relative_to(home.artifacts.resolve()).as_posix())
    except ValueError:
        return str(root)
    top = rel.parts[0] if rel.parts else ""
    return ARTIFACT_PREFIX + top[:-2] if top.endswith(".d") else str(root)


# -- thumbnails for GetNeuron / SearchNeurons -------------------------------------------------
class Thumbnails:
    """Thumbnails of neurons' top samples, for one request: each model's probe set is looked up
    once (``ModelEntry.probe_set`` names it with its content hash; a probe set removed or
    replaced by other images since the model was indexed gives no thumbnails). A sample whose
    image cannot be made gets empty bytes: thumbnails never fail a query."""

    def __init__(self, home: Home | None, store: KnowledgeStore, size: int = THUMBNAIL_SIZE):
        self.home, self.store, self.size = home, store, size
        self._probes: dict[str, ProbeSet | None] = {}

    def _probe(self, model_id: str) -> ProbeSet | None:
        if model_id not in self._probes:
            probe = None
            if self.home is not None:
                from neuronatlas.indexer.probes import probe_set_of

                entry = _get(self.store, model_id)
                if entry is not None and entry.probe_set:
                    probe = probe_set_of(self.home, entry.probe_set)
            self._probes[model_id] = probe
        return self._probes[model_id]

    def of(self, model_id: str, sample: TopSample) -> bytes:
        probe = self._probe(model_id)
        if probe is None:
            return b""
        rel = sample.sample_id
        if not 0 <= sample.index < len(probe) or probe.files[sample.index] != rel:
            return b""
        try:
            png, _, _ = thumbnail(probe.root / rel, self.size)
        except FailedPrecondition:
            return b""
        return png

    def fill(self, rec: NeuronRecord, out: Any, limit: int) -> int:
        """Set ``thumbnail`` on the first ``limit`` of ``out`` (``pb.TopSample`` messages, in
        ``rec.top_samples`` order); returns how many were set."""
        n = 0
        for sample, msg in zip(rec.top_samples[:limit], list(out)[:limit], strict=False):
            msg.thumbnail = self.of(rec.model_id, sample)
            n += 1
        return n

    def hit_samples(self, rec: NeuronRecord, budget: int) -> list[pb.TopSample]:
        """A search hit's first top samples with thumbnails (at most ``HIT_THUMBNAILS`` and
        ``budget``)."""
        out = []
        for s in rec.top_samples[: min(HIT_THUMBNAILS, budget)]:
            out.append(
                pb.TopSample(
                    sample_id=s.sample_id,
                    index=int(s.index),
                    activation=float(s.activation),
                    thumbnail=self.of(rec.model_id, s),
                )
            )
        return out
