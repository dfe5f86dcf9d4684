"""A typed Python client for ``neuronatlas.v1``: the remote ``QueryBackend``.

Its query methods have the names and signatures of :class:`neuronatlas.core.queries.Atlas`
(``neuronatlas.core.backend.QueryBackend``) and return the same core types, paged by offset and
limit: a page larger than the server's page-size limit is fetched in several calls, so a
``Page`` from here holds what the in-process one holds. Page tokens are the server's own
(opaque, signed): the client only hands back tokens it was given (see ``Client._paged``).
Failures raise the NeuronAtlas error matching the status (``errors.from_rpc_error``).
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neuronatlas.core import validate as V
from neuronatlas.core.artifacts import Artifact
from neuronatlas.core.audit import Audit
from neuronatlas.core.backend import QueryBackend
from neuronatlas.core.catalogue import ProbeSetInfo, SampleImage
from neuronatlas.core.compare import Comparison
from neuronatlas.core.errors import InvalidArgument, NeuronAtlasError
from neuronatlas.core.explain import Explanation
from neuronatlas.core.jobs import (  # LeaseLost & co: their reasons map back to them
    Job,
    JobState,
    Operation,
    operation_name,
    parse_operation_name,
)
from neuronatlas.core.queries import (
    Description,
    ImageQuery,
    NeuronQuery,
    Page,
    Query,
    Search,
    StoreStats,
    TextQuery,
    VectorQuery,
    check_search,
    naming,
)
from neuronatlas.core.records import NEURON_KIND, ModelEntry, NeuronRecord, parse_component_key
from neuronatlas.core.store.base import Hit, LabelScope, SearchFilter
from neuronatlas.core.store.integrity import StoreReport
from neuronatlas.service import convert as C
from neuronatlas.service import convert_zoo as CZ
from neuronatlas.service.errors import from_rpc_error
from neuronatlas.service.server import MAX_RECEIVE_BYTES, MAX_SEND_BYTES
from neuronatlas.v1 import neuronatlas_pb2 as pb
from neuronatlas.v1 import neuronatlas_pb2_grpc as pb_grpc
from neuronatlas.v1 import zoo_pb2 as zpb
from neuronatlas.v1 import zoo_pb2_grpc

# "model/layer/unit" or "model/layer/kind:unit"; (model, layer, unit) or (..., kind)
NeuronRefLike = str | tuple[str, str, int] | tuple[str, str, int, str]
T = TypeVar("T")
_INT32_MAX = 2**31 - 1
_MAX_CURSORS = 256  # page tokens the client remembers (see Client._paged)


class Client:
    """``Client("host:port", token=..., tls=..., timeout=...)``; a ``QueryBackend``.

    ``tls``: False (plaintext), True (system roots) or the path of a PEM CA bundle;
    ``client_cert``/``client_key`` for mutual TLS. ``timeout`` is the deadline (s) of every call.
    """

    def __init__(
        self,
        target: str,
        token: str | None = None,
        *,
        tls: bool | str | Path = False,
        timeout: float = 10.0,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        server_name: str | None = None,
    ):
        self.target = target
        self.timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_SEND_BYTES),
            ("grpc.max_send_message_length", MAX_RECEIVE_BYTES),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        if tls:
            try:
                roots = None if tls is True else Path(tls).read_bytes()
                key = Path(client_key).read_bytes() if client_key else None
                chain = Path(client_cert).read_bytes() if client_cert else None
            except OSError as e:
                raise InvalidArgument(
                    f"cannot read TLS file {e.filename}: {e.strerror}", field="tls"
                ) from None
            creds = grpc.ssl_channel_credentials(
                root_certificates=roots, private_key=key, certificate_chain=chain
            )
            self._channel = grpc.secure_channel(target, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = pb_grpc.NeuronAtlasServiceStub(self._channel)
        # (request key, offset) -> the server's page token for that offset (see _paged)
        self._cursors: OrderedDict[tuple[bytes, int], str] = OrderedDict()
        self._cursor_lock = threading.Lock()
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _call(self, method: str, request: Message) -> Any:
        try:
            return getattr(self._stub, method)(
                request, timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def _hits(
        self,
        method: str,
        request: pb.SearchNeuronsRequest | pb.FindNeuronsByLabelRequest,
        flt: SearchFilter | None,
        offset: int,
        limit: int,
        unit: Callable[[Hit], object] | None = None,
    ) -> Page[Hit]:
        """A page of a hit-returning call (``request``'s filter set from ``flt``)."""
        if flt is not None:
            request.filter.CopyFrom(C.filter_to_pb(flt))
        hits, nxt, _ = self._paged(
            method, request, offset, limit, lambda r: [C.hit_from_pb(h) for h in r.results], unit
        )
        return Page(hits, nxt)

    def _paged(
        self,
        method: str,
        request: Message,
        offset: int,
        limit: int,
        results: Callable[[Any], Sequence[T]],
        unit: Callable[[T], object] | None = None,
    ) -> tuple[list[T], int | None, Any]:
        """Items ``offset..offset+limit`` (in the method's paging unit), fetched page after
        page; returns them, the next offset (None at the end) and the first response.

        Only tokens the server issued are sent. The client remembers, per request, the token
        that ends each page it has seen (``_cursors``): walking pages in order costs one call a
        page; an offset it has not seen is reached from the nearest known page start, dropping
        the items in front. ``unit`` groups items into paging units (per-model search: a
        model's hits); by default every item is one."""
        base = _request_key(method, request)
        cur, token = self._cursor(base, offset)
        items: list[T] = []
        first, restarted = None, False
        while True:
            request.page_size = min(offset + limit - cur, _INT32_MAX)
            request.page_token = token
            try:
                resp = self._call(method, request)
            except InvalidArgument as e:
                if not token or e.field != "page_token" or restarted:
                    raise
                # the server no longer accepts its token (restarted with a new key): start over
                self._forget(base)
                cur, token, items, first, restarted = 0, "", [], None, True
                continue
            first = resp if first is None else first
            groups = _units(results(resp), unit)
            for group in groups[max(0, offset - cur) :]:
                items.extend(group)
            end = cur + len(groups)
            token = resp.next_page_token
            if not token:
                return items, None, first
            self._remember(base, end, token)
            if end >= offset + limit or not groups:
                return items, end, first
            cur = end

    def _cursor(self, base: bytes, offset: int) -> tuple[int, str]:
        """The nearest known page start at or before ``offset`` and its token ((0, "") if none)."""
        with self._cursor_lock:
            known = [
                (at, tok) for (b, at), tok in self._cursors.items() if b == base and at <= offset
            ]
        return max(known, default=(0, ""), key=lambda c: c[0])

    def _remember(self, base: bytes, at: int, token: str) -> None:
        with self._cursor_lock:
            self._cursors[(base, at)] = token
            self._cursors.move_to_end((base, at))
            while len(self._cursors) > _MAX_CURSORS:
                self._cursors.popitem(last=False)

    def _forget(self, base: bytes) -> None:
        with self._cursor_lock:
            for key in [k for k in self._cursors if k[0] == base]:
                del self._cursors[key]

    # -- queries ----------------------------------------------------------------------------
    def search_neurons(
        self,
        query: Query,
        flt: SearchFilter | None = None,
        *,
        top_k: int = V.DEFAULT_TOP_K,
        per_model: int = 0,
        offset: int = 0,
        limit: int | None = None,
    ) -> Page[Hit]:
        # Checked here too where the message cannot say it (0 means "unset" on the wire).
        V.check_range(top_k, 1, V.MAX_TOP_K, "top_k")
        limit = top_k if limit is None else limit
        V.check_page(offset, limit)
        V.check_filter(flt)
        req = pb.SearchNeuronsRequest(top_k=top_k, per_model=per_model)
        C.query_to_pb(query, req)
        return self._hits(
            "SearchNeurons",
            req,
            flt,
            offset,
            limit,
            (lambda h: h.record.model_id) if per_model else None,
        )

    def search_many(self, searches: Sequence[Search]) -> list[Page[Hit]]:
        """``search_neurons`` for each search, in one BatchSearchNeurons call (a search whose
        pages reach past the first is finished with SearchNeurons calls). All or nothing,
        errors naming the search (``searches[i]``), as ``Atlas.search_many``."""
        V.check_range(len(searches), 1, V.MAX_BATCH_SEARCHES, "searches")
        for i, s in enumerate(searches):
            with naming(f"searches[{i}]"):
                check_search(s)
        batch = pb.BatchSearchNeuronsRequest()
        for s in searches:
            req = batch.requests.add(top_k=s.top_k, per_model=s.per_model)
            C.query_to_pb(s.query, req)
            if s.flt is not None:
                req.filter.CopyFrom(C.filter_to_pb(s.flt))
            limit = s.top_k if s.limit is None else s.limit
            req.page_size = min(s.offset + limit, _INT32_MAX)  # the server clamps it
        try:
            resp = self._call("BatchSearchNeurons", batch)
        except NeuronAtlasError as e:  # the server names a search by its request
            e.args = (str(e).replace("requests[", "searches[", 1), *e.args[1:])
            if isinstance(e, InvalidArgument) and e.field:
                e.field = e.field.replace("requests[", "searches[", 1)
            raise
        return [
            self._first_page(s, req, r)
            for s, req, r in zip(searches, batch.requests, resp.responses, strict=True)
        ]

    def _first_page(
        self, s: Search, req: pb.SearchNeuronsRequest, resp: pb.SearchNeuronsResponse
    ) -> Page[Hit]:
        """A batch search's page from its first response, continued with SearchNeurons calls
        when it ends short of ``offset + limit``."""
        unit = (lambda h: h.record.model_id) if s.per_model else None
        units = _units([C.hit_from_pb(h) for h in resp.results], unit)
        limit = s.top_k if s.limit is None else s.limit
        items = [h for g in units[s.offset : s.offset + limit] for h in g]
        end = len(units)
        if not resp.next_page_token:
            return Page(items, None)
        base = _request_key("SearchNeurons", req)
        self._remember(base, end, resp.next_page_token)
        if end >= s.offset + limit:
            return Page(items, end)
        start = max(end, s.offset)
        more, nxt, _ = self._paged(
            "SearchNeurons",
            req,
            start,
            s.offset + limit - start,
            lambda r: [C.hit_from_pb(h) for h in r.results],
            unit,
        )
        return Page(items + more, nxt)

    def search(
        self,
        text: str | None = None,
        *,
        image: bytes | None = None,
        neuron: NeuronRefLike | None = None,
        vector: np.ndarray | Sequence[float] | None = None,
        filter: SearchFilter | None = None,
        top_k: int = V.DEFAULT_TOP_K,
        per_model: int = 0,
        offset: int = 0,
        limit: int | None = None,
    ) -> Page[Hit]:
        """``search_neurons`` with exactly one of text / image bytes / neuron / vector."""
        given = [q for q in (text, image, neuron, vector) if q is not None]
        if len(given) != 1:
            raise InvalidArgument(
                "give exactly one of text, image, neuron or vector", field="query"
            )
        query: Query
        if text is not None:
            query = TextQuery(text)
        elif image is not None:
            query = ImageQuery(bytes(image))
        elif neuron is not None:
            query = NeuronQuery(*_unpack(neuron))
        else:
            query = VectorQuery(np.asarray(vector, dtype=np.float32))
        return self.search_neurons(
            query, filter, top_k=top_k, per_model=per_model, offset=offset, limit=limit
        )

    def get_neuron(
        self,
        model_id: str,
        layer: str,
        unit: int,
        *,
        with_vector: bool = False,
        kind: str = NEURON_KIND,
    ) -> NeuronRecord:
        req = pb.GetNeuronRequest(
            neuron=C.ref_to_pb(model_id, layer, unit, kind), include_vector=with_vector
        )
        return C.neuron_from_pb(self._call("GetNeuron", req).neuron)

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
        V.check_range(top_n, 1, V.MAX_TOP_N, "top_n")  # 0 means "unset" on the wire
        req = pb.DescribeNeuronRequest(
            neuron=C.ref_to_pb(model_id, layer, unit, kind),
            labels=list(labels or []),
            top_n=top_n,
        )
        return C.description_from_pb(self._call("DescribeNeuron", req))

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
        V.check_label_lookup(label, flt)  # in the Atlas' order: the same refusal first
        scope = V.check_label_scope(scope)
        V.check_page(offset, limit)
        V.check_filter(flt)
        req = pb.FindNeuronsByLabelRequest(
            label=label,
            match=pb.LABEL_MATCH_PREFIX if prefix else pb.LABEL_MATCH_EXACT,
            scope=C.scope_to_pb(scope),
        )
        return self._hits("FindNeuronsByLabel", req, flt, offset, limit)

    # -- catalogue --------------------------------------------------------------------------
    def list_models(self, *, offset: int = 0, limit: int = 50) -> Page[ModelEntry]:
        V.check_page(offset, limit)
        models, nxt, _ = self._paged(
            "ListModels",
            pb.ListModelsRequest(),
            offset,
            limit,
            lambda r: [C.model_from_pb(m) for m in r.models],
        )
        return Page(models, nxt)

    def get_model(self, model_id: str) -> ModelEntry:
        return C.model_from_pb(self._call("GetModel", pb.GetModelRequest(model_id=model_id)).model)

    def delete_model(self, model_id: str) -> int:
        """Needs an admin token. Returns the number of neuron records removed."""
        deleted: int = self._call(
            "DeleteModel", pb.DeleteModelRequest(model_id=model_id)
        ).deleted_neurons
        return deleted

    def stats(self) -> StoreStats:
        return C.stats_from_pb(self._call("GetStats", pb.GetStatsRequest()))

    def verify_store(self) -> StoreReport:
        """Needs an admin token. Reads every stored point on the server: set a long timeout."""
        return C.verify_from_pb(self._call("VerifyStore", pb.VerifyStoreRequest()))

    # -- comparison and audit -------------------------------------------------------------------
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
        """Compare two indexed models (``core.compare``) with matched pairs
        ``offset..offset+limit`` (all from ``offset`` on with ``limit=None``)."""
        limit = sys.maxsize if limit is None else limit
        V.check_page(offset, limit)
        req = C.compare_request(model_a, model_b, layers, tau, activation, kind)
        pairs, _, first = self._paged("CompareModels", req, offset, limit, lambda r: r.pairs)
        return C.comparison_from_pb(first, pairs)

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
        """Audit a model against valid and spurious concepts (``core.audit``)."""
        req = C.audit_request(model_id, valid, spurious, threshold, kind, class_name)
        return C.audit_from_pb(self._call("AuditModel", req))

    def explain_class(
        self,
        model_id: str,
        class_name: str,
        *,
        kinds: Sequence[str] | None = None,
        top_n: int = 5,
    ) -> Explanation:
        """What drives a class (``core.explain``): the most important records of each kind."""
        V.check_range(top_n, 1, V.MAX_EXPLAIN_TOP, "top_n")  # 0 means "unset" on the wire
        req = C.explain_request(model_id, class_name, kinds, top_n)
        return C.explanation_from_pb(self._call("ExplainClass", req))

    # -- zoo: the connection to ZooService --------------------------------------------------------
    @property
    def _zoo(self) -> zoo_pb2_grpc.ZooServiceStub:
        stub = self.__dict__.get("_zoo_stub")
        if stub is None:
            stub = self.__dict__["_zoo_stub"] = zoo_pb2_grpc.ZooServiceStub(self._channel)
        return stub

    def _zoo_call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        """A ZooService call (``request`` may be an iterator for a streaming method)."""
        try:
            return getattr(self._zoo, method)(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # -- zoo: catalogue (RegisterModel, UpdateModel, uploads, probe sets, thumbnails) -------------
    def upload_artifact(
        self,
        path: str | Path,
        kind: str = "other",
        *,
        name: str | None = None,
        chunk_size: int = 1 << 20,
        timeout: float | None = None,
    ) -> Artifact:
        """Upload a file (``kind``: weights, torchscript, probe_archive, other) and return the
        stored artifact; sources and probe sets name it as ``artifact.ref``
        (``artifact:<sha256>``). The file is read twice: once for its digest, once to stream
        it in chunks of ``chunk_size`` (at most 1 MiB). ``timeout`` defaults to the client's
        timeout plus a minute per 256 MiB. Needs a write token."""
        path = Path(path)
        if not 1 <= chunk_size <= 1 << 20:
            raise InvalidArgument("chunk_size must be 1..1048576 bytes", field="chunk_size")
        try:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            size = path.stat().st_size
        except OSError as e:
            raise InvalidArgument(f"cannot read {path}: {e.strerror or e}", field="path") from None
        header = zpb.ArtifactHeader(
            sha256=digest.hexdigest(),
            size=size,
            name=name if name is not None else path.name,
            kind=CZ.artifact_kind_to_pb(kind),
        )

        def stream() -> Any:
            yield zpb.UploadArtifactRequest(header=header)
            with path.open("rb") as f:
                for block in iter(lambda: f.read(chunk_size), b""):
                    yield zpb.UploadArtifactRequest(chunk=block)

        if timeout is None:
            timeout = self.timeout + 60.0 * (1 + size / (256 << 20))
        resp = self._zoo_call("UploadArtifact", stream(), timeout=timeout)
        return CZ.artifact_from_pb(resp.artifact)

    def register_model(
        self,
        model_id: str,
        source: dict[str, Any],
        *,
        display_name: str = "",
        tags: Sequence[str] = (),
        notes: str = "",
        training_data: str = "",
        replace: bool = False,
        request_id: str | None = None,
        timeout: float | None = None,
    ) -> ModelEntry:
        """Register a model (RegisterModel): the server builds it once and checks it before
        writing its entry. File values in ``source`` are paths on the server or
        ``artifact:<sha256>`` of an upload (``upload_artifact``). ``request_id`` (default: a
        new UUID) makes a retry of this call return the same entry. Needs a write token."""
        req = zpb.RegisterModelRequest(
            model_id=model_id,
            source=CZ.source_to_pb(source),
            display_name=display_name,
            tags=list(tags),
            notes=notes,
            training_data=training_data,
            replace=replace,
            request_id=uuid.uuid4().hex if request_id is None else request_id,
        )
        resp = self._zoo_call("RegisterModel", req, timeout=timeout or max(self.timeout, 120.0))
        return C.model_from_pb(resp.model)

    def update_model(
        self,
        model_id: str,
        *,
        display_name: str | None = None,
        tags: Sequence[str] | None = None,
        notes: str | None = None,
        training_data: str | None = None,
    ) -> ModelEntry:
        """Change a model's metadata (the arguments that are not None; UpdateModel with a
        field mask). The same signature as ``Atlas.update_model``. Needs a write token."""
        given = {
            "display_name": display_name,
            "tags": tags,
            "notes": notes,
            "training_data": training_data,
        }
        paths = [k for k, v in given.items() if v is not None]
        model = pb.Model(
            model_id=model_id,
            display_name=display_name or "",
            tags=list(tags or []),
            notes=notes or "",
            training_data=training_data or "",
        )
        req = zpb.UpdateModelRequest(model=model)
        req.update_mask.paths.extend(paths)
        return C.model_from_pb(self._zoo_call("UpdateModel", req).model)

    def register_probe_set(
        self,
        name: str,
        *,
        folder: str | None = None,
        artifact: str | None = None,
        limit: int = 0,
        replace: bool = False,
        timeout: float | None = None,
    ) -> ProbeSetInfo:
        """Register a probe set from a folder on the server or an uploaded archive
        (``artifact:<sha256>``, see ``upload_artifact``). Needs a write token."""
        if (folder is None) == (artifact is None):
            raise InvalidArgument("give exactly one of folder or artifact", field="origin")
        req = zpb.RegisterProbeSetRequest(name=name, limit=limit, replace=replace)
        if folder is not None:
            req.folder = folder
        else:
            req.artifact = str(artifact)
        resp = self._zoo_call("RegisterProbeSet", req, timeout=timeout or max(self.timeout, 300.0))
        return CZ.probe_set_from_pb(resp.probe_set)

    def list_probe_sets(self) -> list[ProbeSetInfo]:
        resp = self._zoo_call("ListProbeSets", zpb.ListProbeSetsRequest())
        return [CZ.probe_set_from_pb(p) for p in resp.probe_sets]

    def get_sample_images(
        self, probe_set: str, indices: Sequence[int], *, max_size: int = 0
    ) -> list[SampleImage]:
        """PNG thumbnails of probe images (at most 64 indices; ``max_size`` 0 = 96 px)."""
        req = zpb.GetSampleImagesRequest(
            probe_set=probe_set, indices=[int(i) for i in indices], max_size=max_size
        )
        return [CZ.sample_from_pb(s) for s in self._zoo_call("GetSampleImages", req).images]

    def get_neuron_thumbnails(
        self, model_id: str, layer: str, unit: int
    ) -> tuple[NeuronRecord, list[bytes]]:
        """A neuron's record and PNG thumbnails of its top samples, in ``top_samples`` order
        (GetNeuron with include_thumbnails; empty bytes where the server has no image)."""
        req = pb.GetNeuronRequest(
            neuron=C.ref_to_pb(model_id, layer, unit), include_thumbnails=True
        )
        n = self._call("GetNeuron", req).neuron
        return C.neuron_from_pb(n), [bytes(s.thumbnail) for s in n.top_samples]

    # -- the connection ---------------------------------------------------------------------------
    # -- zoo: indexing operations (IndexModel, Get/List/Cancel/WaitOperation) and workers -------
    # Operations come back as ``neuronatlas.core.jobs.Operation``; names may be given as
    # "operations/<id>" or the bare id.
    def index_model(
        self,
        model_id: str,
        probe_set: str,
        *,
        source: dict[str, Any] | None = None,
        replace: bool = False,
        vocabularies: dict[str, str] | None = None,
        layers: Sequence[str] | None = None,
        k: int = 20,
        options: dict[str, Any] | None = None,
        request_id: str = "",
    ) -> Operation:
        """Queue the indexing of ``model_id`` (registered first from ``source`` when given) on
        the server's probe set ``probe_set``; returns the operation at once. ``vocabularies``:
        name -> a file on the server or "artifact:<sha256>"; ``options``: IndexOptions fields
        (batch_size, weighted, samples, ...). Needs a write token."""
        request = {
            "model_id": model_id,
            "probe_set": probe_set,
            "source": source,
            "replace": replace,
            "vocabularies": vocabularies or {},
            "layers": list(layers or []),
            "k": k,
            "options": options or {},
        }
        req = CZ.index_request_to_pb(request, request_id=request_id)
        return CZ.operation_from_pb(self._zoo_call("IndexModel", req).operation)

    def get_operation(self, name: str) -> Operation:
        req = zpb.GetOperationRequest(name=_operation(name))
        return CZ.operation_from_pb(self._zoo_call("GetOperation", req).operation)

    def list_operations(
        self,
        *,
        model_id: str = "",
        states: Sequence[JobState | str] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> Page[Operation]:
        """Operations oldest first, optionally of one model / in some states."""
        V.check_page(offset, limit)
        req = zpb.ListOperationsRequest(
            model_id=model_id, states=[CZ.state_to_pb(JobState(s)) for s in states or []]
        )
        items: list[Operation] = []
        seen = 0
        while True:
            req.page_size = min(500, offset + limit - seen)
            resp = self._zoo_call("ListOperations", req)
            for op in resp.operations:
                if seen >= offset and len(items) < limit:
                    items.append(CZ.operation_from_pb(op))
                seen += 1
            if len(items) >= limit or not resp.next_page_token:
                more = bool(resp.next_page_token) or seen > offset + len(items)
                return Page(items, offset + len(items) if more else None)
            req.page_token = resp.next_page_token

    def cancel_operation(self, name: str) -> Operation:
        req = zpb.CancelOperationRequest(name=_operation(name))
        return CZ.operation_from_pb(self._zoo_call("CancelOperation", req).operation)

    def wait_operation(self, name: str, timeout: float = 60.0) -> Operation:
        """The operation once done, or as it is after ``timeout`` seconds (at most 60)."""
        if not 0 < timeout <= 60:
            raise InvalidArgument("timeout must be in (0, 60] seconds", field="timeout")
        req = zpb.WaitOperationRequest(name=_operation(name))
        req.timeout.FromNanoseconds(int(timeout * 1e9))
        resp = self._zoo_call("WaitOperation", req, timeout=timeout + max(self.timeout, 5.0))
        return CZ.operation_from_pb(resp.operation)

    def claim_job(self, worker: str) -> Job | None:
        """Worker side: lease the oldest runnable job (None when there is none). The job's
        ``lease_expires`` is this machine's time plus the lease. Needs a worker token."""
        resp = self._zoo_call("ClaimJob", zpb.ClaimJobRequest(worker=worker))
        return CZ.job_from_pb(resp.job, time.time()) if resp.HasField("job") else None

    def report_job(
        self,
        job_id: str,
        worker: str,
        report: str,
        progress: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> bool:
        """Worker side: ``report`` is heartbeat (with ``progress``), succeeded, failed (with
        ``error``: code, reason, message) or cancelled. True when cancellation was asked.
        LeaseLost when the lease ran out and another worker has the job."""
        req = zpb.ReportJobRequest(job_id=job_id, worker=worker, report=CZ.report_to_pb(report))
        if progress:
            req.progress.CopyFrom(CZ.progress_to_pb(progress))
        if error:
            req.error.CopyFrom(CZ.error_to_pb(error))
        return bool(self._zoo_call("ReportJob", req).cancel_requested)

    def health(self, service: str = "") -> str:
        """The server's health status name, e.g. "SERVING"."""
        try:
            resp = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self.timeout
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        return name

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _operation(name: str) -> str:
    """``operations/<id>`` for an operation name or a bare id."""
    return operation_name(parse_operation_name(name, bare_ok=True))


def _request_key(method: str, request: Message) -> bytes:
    """What identifies a paged request apart from its paging fields."""
    clone = type(request)()
    clone.CopyFrom(request)
    for name in ("page_token", "page_size"):
        clone.ClearField(name)
    return method.encode() + b"\0" + clone.SerializeToString(deterministic=True)


def _units(items: Sequence[T], unit: Callable[[T], object] | None) -> list[list[T]]:
    """Items as paging units: one each, or runs of items with the same ``unit(item)``."""
    if unit is None:
        return [[x] for x in items]
    out: list[list[T]] = []
    last: object = object()
    for x in items:
        key = unit(x)
        if not out or key != last:
            out.append([])
            last = key
        out[-1].append(x)
    return out


def _unpack(neuron: NeuronRefLike) -> tuple[str, str, int, str]:
    if isinstance(neuron, str):
        return parse_component_key(neuron)
    if len(neuron) == 4:
        return neuron[0], neuron[1], int(neuron[2]), str(neuron[3])
    return neuron[0], neuron[1], int(neuron[2]), NEURON_KIND


if TYPE_CHECKING:  # mypy checks that the client is a QueryBackend

    def _is_query_backend(client: Client) -> QueryBackend:
        return client
