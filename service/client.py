"""A typed Python client for ``neuronatlas.v1``: the remote ``QueryBackend``.

Its query methods have the names and signatures of :class:`neuronatlas.core.queries.Atlas`
(``neuronatlas.core.backend.QueryBackend``) and return the same core types, paged by offset and
limit: a page larger than the server's page-size limit is fetched in several calls, so a
``Page`` from here holds what the in-process one holds. Page tokens are the server's own
(opaque, signed): the client only hands back tokens it was given (see ``Client._paged``).
Failures raise the NeuronAtlas error matching the status (``errors.from_rpc_error``).
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neuronatlas.core import validate as V
from neuronatlas.core.audit import Audit
from neuronatlas.core.backend import QueryBackend
from neuronatlas.core.compare import Comparison
from neuronatlas.core.errors import InvalidArgument
from neuronatlas.core.queries import (
    Description,
    ImageQuery,
    NeuronQuery,
    Page,
    Query,
    StoreStats,
    TextQuery,
    VectorQuery,
)
from neuronatlas.core.records import ModelEntry, NeuronRecord, parse_neuron_key
from neuronatlas.core.store.base import Hit, LabelScope, SearchFilter
from neuronatlas.core.store.integrity import StoreReport
from neuronatlas.service import convert as C
from neuronatlas.service.errors import from_rpc_error
from neuronatlas.service.server import MAX_RECEIVE_BYTES, MAX_SEND_BYTES
from neuronatlas.v1 import neuronatlas_pb2 as pb
from neuronatlas.v1 import neuronatlas_pb2_grpc as pb_grpc

NeuronRefLike = str | tuple[str, str, int]
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
        if flt is not None:
            req.filter.CopyFrom(C.filter_to_pb(flt))
        hits, nxt, _ = self._paged(
            "SearchNeurons",
            req,
            offset,
            limit,
            lambda r: [C.hit_from_pb(h) for h in r.results],
            (lambda h: h.record.model_id) if per_model else None,
        )
        return Page(hits, nxt)

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
        self, model_id: str, layer: str, unit: int, *, with_vector: bool = False
    ) -> NeuronRecord:
        req = pb.GetNeuronRequest(
            neuron=C.ref_to_pb(model_id, layer, unit), include_vector=with_vector
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
    ) -> Description:
        V.check_range(top_n, 1, V.MAX_TOP_N, "top_n")  # 0 means "unset" on the wire
        req = pb.DescribeNeuronRequest(
            neuron=C.ref_to_pb(model_id, layer, unit), labels=list(labels or []), top_n=top_n
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
        if flt is not None:
            req.filter.CopyFrom(C.filter_to_pb(flt))
        hits, nxt, _ = self._paged(
            "FindNeuronsByLabel",
            req,
            offset,
            limit,
            lambda r: [C.hit_from_pb(h) for h in r.results],
        )
        return Page(hits, nxt)

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
    ) -> Comparison:
        """Compare two indexed models (``core.compare``) with matched pairs
        ``offset..offset+limit`` (all from ``offset`` on with ``limit=None``)."""
        limit = sys.maxsize if limit is None else limit
        V.check_page(offset, limit)
        req = C.compare_request(model_a, model_b, layers, tau, activation)
        pairs, _, first = self._paged("CompareModels", req, offset, limit, lambda r: r.pairs)
        return C.comparison_from_pb(first, pairs)

    def audit_model(
        self,
        model_id: str,
        valid: Sequence[str] = (),
        spurious: Sequence[str] = (),
        *,
        threshold: float | None = None,
    ) -> Audit:
        """Audit a model against valid and spurious concepts (``core.audit``)."""
        req = C.audit_request(model_id, valid, spurious, threshold)
        return C.audit_from_pb(self._call("AuditModel", req))

    # -- the connection ---------------------------------------------------------------------------
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


def _unpack(neuron: NeuronRefLike) -> tuple[str, str, int]:
    if isinstance(neuron, str):
        return parse_neuron_key(neuron)
    model_id, layer, unit = neuron
    return model_id, layer, int(unit)


if TYPE_CHECKING:  # mypy checks that the client is a QueryBackend

    def _is_query_backend(client: Client) -> QueryBackend:
        return client
