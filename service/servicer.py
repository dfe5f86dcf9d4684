"""The gRPC servicer: thin methods that validate sizes, call ``neuronatlas.core.queries`` and
convert the results (``convert.py``). Errors become status codes in ``errors.py``."""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import grpc

from neuronatlas.core import queries as Q
from neuronatlas.core.audit import audit_model
from neuronatlas.core.compare import compare_models
from neuronatlas.core.errors import InvalidArgument
from neuronatlas.service import convert as C
from neuronatlas.service import paging
from neuronatlas.service.errors import make_status, to_rpc_status
from neuronatlas.v1 import neuronatlas_pb2 as pb
from neuronatlas.v1 import neuronatlas_pb2_grpc as pb_grpc

log = logging.getLogger("neuronatlas.service")

# Largest request the servicer accepts (INVALID_ARGUMENT above it). The transport limit in
# server.py is higher, so an oversized request gets a field violation instead of
# RESOURCE_EXHAUSTED unless it is beyond even that.
MAX_REQUEST_BYTES = Q.MAX_IMAGE_BYTES + 256 * 1024
SEARCH_PAGE_MAX = 100
LABEL_PAGE_DEFAULT, LABEL_PAGE_MAX = 20, 100
MODEL_PAGE_DEFAULT, MODEL_PAGE_MAX = 50, 500
PAIR_PAGE_DEFAULT, PAIR_PAGE_MAX = 50, 500


def _check_deadline(context: grpc.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the query ran")


def rpc(method: Callable) -> Callable:
    """Size check, deadline check and the error mapping around one RPC method."""

    @functools.wraps(method)
    def wrapper(self: NeuronAtlasServicer, request, context: grpc.ServicerContext):
        size = request.ByteSize()
        if size > MAX_REQUEST_BYTES:
            context.abort_with_status(
                make_status(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request is {size} bytes, more than {MAX_REQUEST_BYTES}",
                    "INVALID_ARGUMENT",
                    field="request",
                )
            )
        _check_deadline(context)
        try:
            response = method(self, request, context)
        except Exception as exc:
            if isinstance(exc, grpc.RpcError) or not context.is_active():
                raise
            context.abort_with_status(to_rpc_status(exc))
        _check_deadline(context)
        return response

    return wrapper


class NeuronAtlasServicer(pb_grpc.NeuronAtlasServiceServicer):
    """Implements ``neuronatlas.v1.NeuronAtlasService`` over one shared :class:`Atlas`."""

    def __init__(self, atlas: Q.Atlas, home: Path | None = None):
        self.atlas = atlas
        # Settings home: activation sketches are read from it, comparisons cached under
        # home/cache/compare and audit label embeddings under home/cache/labels. Without one,
        # a private temporary folder serves as cache (and there are no sketches).
        self._home = Path(home) if home is not None else None

    @property
    def home(self) -> Path:
        if self._home is None:
            self._home = Path(tempfile.mkdtemp(prefix="neuronatlas-service-"))
        return self._home

    @rpc
    def SearchNeurons(self, request: pb.SearchNeuronsRequest, context) -> pb.SearchNeuronsResponse:
        top_k = request.top_k or Q.DEFAULT_TOP_K
        if request.top_k < 0:
            raise InvalidArgument(f"top_k must not be negative, got {request.top_k}", field="top_k")
        size = paging.page_size(request.page_size, default=top_k, maximum=SEARCH_PAGE_MAX)
        offset = paging.decode_token(request)
        flt = C.filter_from_pb(request.filter) if request.HasField("filter") else None
        page = Q.search_neurons(
            self.atlas,
            C.query_from_pb(request),
            flt,
            top_k=top_k,
            per_model=request.per_model,
            offset=offset,
            limit=size,
        )
        return pb.SearchNeuronsResponse(
            results=[C.hit_to_pb(h) for h in page.items],
            next_page_token=paging.encode_token(request, page.next_offset),
        )

    @rpc
    def GetNeuron(self, request: pb.GetNeuronRequest, context) -> pb.GetNeuronResponse:
        rec = Q.get_neuron(
            self.atlas, *C.ref_from_pb(request.neuron), with_vector=request.include_vector
        )
        return pb.GetNeuronResponse(
            neuron=C.neuron_to_pb(rec, include_vector=request.include_vector)
        )

    @rpc
    def DescribeNeuron(
        self, request: pb.DescribeNeuronRequest, context
    ) -> pb.DescribeNeuronResponse:
        if request.top_n < 0:
            raise InvalidArgument(f"top_n must not be negative, got {request.top_n}", field="top_n")
        desc = Q.describe_neuron(
            self.atlas,
            *C.ref_from_pb(request.neuron),
            labels=list(request.labels),
            top_n=request.top_n or Q.DEFAULT_TOP_N,
        )
        return C.description_to_pb(desc)

    @rpc
    def FindNeuronsByLabel(
        self, request: pb.FindNeuronsByLabelRequest, context
    ) -> pb.FindNeuronsByLabelResponse:
        size = paging.page_size(request.page_size, LABEL_PAGE_DEFAULT, LABEL_PAGE_MAX)
        offset = paging.decode_token(request)
        flt = C.filter_from_pb(request.filter) if request.HasField("filter") else None
        page = Q.find_by_label(
            self.atlas,
            request.label,
            prefix=request.match == pb.LABEL_MATCH_PREFIX,
            flt=flt,
            offset=offset,
            limit=size,
        )
        return pb.FindNeuronsByLabelResponse(
            results=[C.hit_to_pb(h) for h in page.items],
            next_page_token=paging.encode_token(request, page.next_offset),
        )

    @rpc
    def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        size = paging.page_size(request.page_size, MODEL_PAGE_DEFAULT, MODEL_PAGE_MAX)
        page = Q.list_models(self.atlas, offset=paging.decode_token(request), limit=size)
        return pb.ListModelsResponse(
            models=[C.model_to_pb(m) for m in page.items],
            next_page_token=paging.encode_token(request, page.next_offset),
        )

    @rpc
    def GetModel(self, request: pb.GetModelRequest, context) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=C.model_to_pb(Q.get_model(self.atlas, request.model_id)))

    @rpc
    def DeleteModel(self, request: pb.DeleteModelRequest, context) -> pb.DeleteModelResponse:
        n = Q.delete_model(self.atlas, request.model_id)
        log.info("deleted model %s (%d neuron records)", request.model_id, n)
        return pb.DeleteModelResponse(model_id=request.model_id, deleted_neurons=n)

    @rpc
    def GetStats(self, request: pb.GetStatsRequest, context) -> pb.GetStatsResponse:
        return C.stats_to_pb(Q.stats(self.atlas))

    @rpc
    def CompareModels(self, request: pb.CompareModelsRequest, context) -> pb.CompareModelsResponse:
        args = C.compare_args_from_pb(request)
        size = paging.page_size(request.page_size, PAIR_PAGE_DEFAULT, PAIR_PAGE_MAX)
        offset = paging.decode_token(request)
        cmp = compare_models(
            self.atlas.store,
            args.pop("model_a"),
            args.pop("model_b"),
            home=self.home,
            offset=offset,
            limit=size,
            **args,
        )
        nxt = offset + size if offset + size < cmp.pairs_total else None
        return C.comparison_to_pb(cmp, paging.encode_token(request, nxt))

    @rpc
    def AuditModel(self, request: pb.AuditModelRequest, context) -> pb.AuditModelResponse:
        args = C.audit_args_from_pb(request)
        result = audit_model(
            self.atlas.store,
            self.atlas.embedder(),
            cache_dir=self.home / "cache" / "labels",
            **args,
        )
        return C.audit_to_pb(result)
