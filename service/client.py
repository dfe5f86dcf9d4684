"""A typed Python client for ``neuronatlas.v1``: methods return core records and raise the
NeuronAtlas error matching the status code (``errors.from_rpc_error``)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from neuronatlas.core.audit import Audit
from neuronatlas.core.errors import InvalidArgument
from neuronatlas.core.queries import (
    Description,
    ImageQuery,
    NeuronQuery,
    StoreStats,
    TextQuery,
    VectorQuery,
)
from neuronatlas.core.records import ModelEntry, NeuronRecord, parse_neuron_key
from neuronatlas.core.store.base import Hit, SearchFilter
from neuronatlas.service import convert as C
from neuronatlas.service.errors import from_rpc_error
from neuronatlas.service.server import MAX_RECEIVE_BYTES, MAX_SEND_BYTES
from neuronatlas.v1 import neuronatlas_pb2 as pb
from neuronatlas.v1 import neuronatlas_pb2_grpc as pb_grpc

NeuronRefLike = str | tuple[str, str, int]


@dataclass
class HitPage:
    hits: list[Hit]
    next_page_token: str = ""


@dataclass
class ModelPage:
    models: list[ModelEntry]
    next_page_token: str = ""


def _ref(neuron: NeuronRefLike) -> pb.NeuronRef:
    model_id, layer, unit = parse_neuron_key(neuron) if isinstance(neuron, str) else neuron
    return C.ref_to_pb(model_id, layer, unit)


class Client:
    """``Client("host:port", token=..., tls=..., timeout=...)``.

    ``tls``: False (plaintext), True (system roots) or the path of a PEM CA bundle;
    ``client_cert``/``client_key`` for mutual TLS. ``timeout`` is the default deadline (s) of
    every call; each method also takes ``timeout=``.
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
        options = [
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
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def _call(self, method: str, request: Any, timeout: float | None) -> Any:
        try:
            return getattr(self._stub, method)(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    # -- queries ----------------------------------------------------------------------------
    def search(
        self,
        text: str | None = None,
        *,
        image: bytes | None = None,
        neuron: NeuronRefLike | None = None,
        vector: Any = None,
        filter: SearchFilter | None = None,
        top_k: int = 0,
        per_model: int = 0,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> HitPage:
        """Neurons closest to exactly one of text / image bytes / neuron / vector."""
        given = [q for q in (text, image, neuron, vector) if q is not None]
        if len(given) != 1:
            raise InvalidArgument(
                "give exactly one of text, image, neuron or vector", field="query"
            )
        req = pb.SearchNeuronsRequest(
            top_k=top_k, per_model=per_model, page_size=page_size, page_token=page_token
        )
        if text is not None:
            C.query_to_pb(TextQuery(text), req)
        elif image is not None:
            C.query_to_pb(ImageQuery(bytes(image)), req)
        elif neuron is not None:
            C.query_to_pb(NeuronQuery(*_unpack(neuron)), req)
        else:
            C.query_to_pb(VectorQuery(np.asarray(vector, dtype=np.float32)), req)
        if filter is not None:
            req.filter.CopyFrom(C.filter_to_pb(filter))
        resp = self._call("SearchNeurons", req, timeout)
        return HitPage([C.hit_from_pb(h) for h in resp.results], resp.next_page_token)

    def search_all(self, text: str | None = None, **kwargs: Any) -> Iterator[Hit]:
        """Every hit of a search, following page tokens."""
        token = ""
        while True:
            page = self.search(text, page_token=token, **kwargs)
            yield from page.hits
            token = page.next_page_token
            if not token:
                return

    def get_neuron(
        self, neuron: NeuronRefLike, include_vector: bool = False, timeout: float | None = None
    ) -> NeuronRecord:
        req = pb.GetNeuronRequest(neuron=_ref(neuron), include_vector=include_vector)
        return C.neuron_from_pb(self._call("GetNeuron", req, timeout).neuron)

    def describe_neuron(
        self,
        neuron: NeuronRefLike,
        labels: list[str] | None = None,
        top_n: int = 0,
        timeout: float | None = None,
    ) -> Description:
        req = pb.DescribeNeuronRequest(neuron=_ref(neuron), labels=list(labels or []), top_n=top_n)
        return C.description_from_pb(self._call("DescribeNeuron", req, timeout))

    def find_by_label(
        self,
        label: str,
        prefix: bool = False,
        filter: SearchFilter | None = None,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> HitPage:
        req = pb.FindNeuronsByLabelRequest(
            label=label,
            match=pb.LABEL_MATCH_PREFIX if prefix else pb.LABEL_MATCH_EXACT,
            page_size=page_size,
            page_token=page_token,
        )
        if filter is not None:
            req.filter.CopyFrom(C.filter_to_pb(filter))
        resp = self._call("FindNeuronsByLabel", req, timeout)
        return HitPage([C.hit_from_pb(h) for h in resp.results], resp.next_page_token)

    # -- catalogue --------------------------------------------------------------------------
    def list_models(
        self, page_size: int = 0, page_token: str = "", timeout: float | None = None
    ) -> ModelPage:
        resp = self._call(
            "ListModels", pb.ListModelsRequest(page_size=page_size, page_token=page_token), timeout
        )
        return ModelPage([C.model_from_pb(m) for m in resp.models], resp.next_page_token)

    def all_models(self, timeout: float | None = None) -> list[ModelEntry]:
        out, token = [], ""
        while True:
            page = self.list_models(page_token=token, timeout=timeout)
            out.extend(page.models)
            token = page.next_page_token
            if not token:
                return out

    def get_model(self, model_id: str, timeout: float | None = None) -> ModelEntry:
        return C.model_from_pb(
            self._call("GetModel", pb.GetModelRequest(model_id=model_id), timeout).model
        )

    def delete_model(self, model_id: str, timeout: float | None = None) -> int:
        """Needs an admin token. Returns the number of neuron records removed."""
        return self._call(
            "DeleteModel", pb.DeleteModelRequest(model_id=model_id), timeout
        ).deleted_neurons

    def stats(self, timeout: float | None = None) -> StoreStats:
        return C.stats_from_pb(self._call("GetStats", pb.GetStatsRequest(), timeout))

    # -- comparison and audit -------------------------------------------------------------------
    def compare_models(
        self,
        model_a: str,
        model_b: str,
        layers: list[str] | None = None,
        *,
        tau: float | None = None,
        activation: bool = True,
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> C.RemoteComparison:
        """Compare two indexed models (``core.compare``); one page of matched pairs, follow
        ``next_page_token`` for more. ``activation=False`` skips the CKA view."""
        req = pb.CompareModelsRequest(
            model_a=model_a,
            model_b=model_b,
            layers=list(layers or []),
            semantic_only=not activation,
            page_size=page_size,
            page_token=page_token,
        )
        if tau is not None:
            req.tau = float(tau)
        return C.comparison_from_pb(self._call("CompareModels", req, timeout))

    def audit_model(
        self,
        model_id: str,
        valid: list[str] | None = None,
        spurious: list[str] | None = None,
        *,
        threshold: float | None = None,
        timeout: float | None = None,
    ) -> Audit:
        """Audit a model against valid and spurious concepts (``core.audit``)."""
        req = pb.AuditModelRequest(
            model_id=model_id, valid=list(valid or []), spurious=list(spurious or [])
        )
        if threshold is not None:
            req.threshold = float(threshold)
        return C.audit_from_pb(self._call("AuditModel", req, timeout))

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The server's health status name, e.g. "SERVING"."""
        try:
            resp = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout or self.timeout
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unpack(neuron: NeuronRefLike) -> tuple[str, str, int]:
    return parse_neuron_key(neuron) if isinstance(neuron, str) else tuple(neuron)  # type: ignore[return-value]
