"""The gRPC servicer: thin methods that parse a request (``convert.py``), call the shared
:class:`~neuronatlas.core.queries.Atlas` (which validates, ``core/validate.py``) and convert the
result back. Errors become status codes in ``errors.py``."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import grpc
from google.protobuf.message import Message

from neuronatlas.core import validate as V
from neuronatlas.core.errors import InvalidArgument
from neuronatlas.core.queries import Atlas, Page, Search, naming
from neuronatlas.core.store.base import HIT_FIELDS, Hit, LabelScope
from neuronatlas.service import convert as C
from neuronatlas.service import paging
from neuronatlas.service.errors import DeadlineExceeded, to_rpc_status
from neuronatlas.v1 import neuronatlas_pb2 as pb
from neuronatlas.v1 import neuronatlas_pb2_grpc as pb_grpc

log = logging.getLogger("neuronatlas.service")

# Largest request the servicer accepts (INVALID_ARGUMENT above it). The transport limit in
# server.py is higher, so an oversized request gets a field violation instead of
# RESOURCE_EXHAUSTED unless it is beyond even that.
MAX_REQUEST_BYTES = V.MAX_IMAGE_BYTES + 256 * 1024
SEARCH_PAGE_MAX = 100
LABEL_PAGE_DEFAULT, LABEL_PAGE_MAX = 20, 100
MODEL_PAGE_DEFAULT, MODEL_PAGE_MAX = 50, 500
PAIR_PAGE_DEFAULT, PAIR_PAGE_MAX = 50, 500

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)
Self_ = TypeVar("Self_")  # the servicer class (NeuronAtlasServicer, the zoo method groups)
Method = Callable[[Self_, Req, grpc.ServicerContext], Resp]


def _check_deadline(context: grpc.ServicerContext) -> None:
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        context.abort_with_status(
            to_rpc_status(DeadlineExceeded("the deadline passed before the query ran"))
        )


def rpc(method: Method[Self_, Req, Resp]) -> Method[Self_, Req, Resp]:
    """Size check, deadline check and the error mapping around one RPC method."""

    @functools.wraps(method)
    def wrapper(self: Self_, request: Req, context: grpc.ServicerContext) -> Resp:
        _check_deadline(context)
        try:
            size = request.ByteSize()
            if size > MAX_REQUEST_BYTES:
                raise InvalidArgument(
                    f"request is {size} bytes, more than {MAX_REQUEST_BYTES}", field="request"
                )
            response = method(self, request, context)
        except Exception as exc:
            if not context.is_active():  # the client went away: nobody to answer
                raise
            # Everything else gets a status with details, never gRPC's bare UNKNOWN (an
            # unexpected error, a backend's own RpcError included, is INTERNAL and logged).
            context.abort_with_status(to_rpc_status(exc))
        _check_deadline(context)
        return response

    return wrapper


class NeuronAtlasServicer(pb_grpc.NeuronAtlasServiceServicer):
    """Implements ``neuronatlas.v1.NeuronAtlasService`` over one shared :class:`Atlas` (its
    home holds the activation sketches and the comparison and label caches)."""

    def __init__(self, atlas: Atlas, pages: paging.PageTokens | None = None):
        """``pages``: the page-token key (default: one for this process)."""
        self.atlas = atlas
        self.pages = pages if pages is not None else paging.PageTokens.random()

    @rpc
    def SearchNeurons(
        self, request: pb.SearchNeuronsRequest, context: grpc.ServicerContext
    ) -> pb.SearchNeuronsResponse:
        s = self._search(request)
        page = self.atlas.search_neurons(
            s.query,
            s.flt,
            top_k=s.top_k,
            per_model=s.per_model,
            offset=s.offset,
            limit=s.limit,
            fields=s.fields,
        )
        return self._search_response(request, page)[0]

    @rpc
    def BatchSearchNeurons(
        self, request: pb.BatchSearchNeuronsRequest, context: grpc.ServicerContext
    ) -> pb.BatchSearchNeuronsResponse:
        V.check_range(len(request.requests), 1, V.MAX_BATCH_SEARCHES, "requests")
        searches = []
        for i, r in enumerate(request.requests):
            with naming(f"requests[{i}]"):  # a bad page token or size names its request
                searches.append(self._search(r))

        def in_time(i: int) -> None:  # a batch can take seconds: the deadline between searches
            left = context.time_remaining()
            if left is not None and left <= 0:
                raise DeadlineExceeded(f"the deadline passed after {i} of {len(searches)} searches")

        pages = self.atlas.search_many(searches, name="requests", before_each=in_time)
        from neuronatlas.service.zoo_catalogue import BATCH_THUMBNAILS

        response = pb.BatchSearchNeuronsResponse()
        thumbnails = BATCH_THUMBNAILS  # shared: 64 searches x 64 would be ~100 MB of PNGs
        for r, page in zip(request.requests, pages, strict=True):
            _, thumbnails = self._search_response(r, page, response.responses.add(), thumbnails)
        return response

    def _search(self, request: pb.SearchNeuronsRequest) -> Search:
        top_k = request.top_k or V.DEFAULT_TOP_K
        return Search(
            C.query_from_pb(request),
            C.filter_from_pb(request.filter) if request.HasField("filter") else None,
            top_k=top_k,
            per_model=request.per_model,
            offset=self.pages.decode(request),
            limit=paging.page_size(
                request.page_size, default=max(top_k, 1), maximum=SEARCH_PAGE_MAX
            ),
            # thumbnails read the hits' top_samples; otherwise only what NeuronHit shows
            fields=None if request.include_thumbnails else HIT_FIELDS,
        )

    def _search_response(
        self,
        request: pb.SearchNeuronsRequest,
        page: Page[Hit],
        out: pb.SearchNeuronsResponse | None = None,
        thumbnails: int | None = None,
    ) -> tuple[pb.SearchNeuronsResponse, int]:
        """The answer to ``request`` (written into ``out`` when given), with at most
        ``RESPONSE_THUMBNAILS`` thumbnails and no more than ``thumbnails`` (a batch's budget;
        None: no other bound); returns it and what is left of ``thumbnails``."""
        from neuronatlas.service.zoo_catalogue import RESPONSE_THUMBNAILS

        left = RESPONSE_THUMBNAILS if thumbnails is None else thumbnails
        response = pb.SearchNeuronsResponse() if out is None else out
        response.next_page_token = self.pages.encode(request, page.next_offset)
        C.hits_to_pb(page.items, response.results)
        if request.include_thumbnails:
            allowed = min(RESPONSE_THUMBNAILS, left)
            left -= allowed - self._hit_thumbnails(page.items, response.results, allowed)
        return response, left

    def _hit_thumbnails(self, hits: list[Hit], results: Sequence[pb.NeuronHit], budget: int) -> int:
        """include_thumbnails: each hit's first top samples with thumbnails (at most
        ``HIT_THUMBNAILS`` a hit and ``budget`` in all); returns what is left of ``budget``."""
        from neuronatlas.service.zoo_catalogue import Thumbnails

        thumbs = Thumbnails(self.atlas.home, self.atlas.store)
        for hit, out in zip(hits, results, strict=True):
            if budget <= 0:
                break
            samples = thumbs.hit_samples(hit.record, budget)
            out.top_samples.extend(samples)
            budget -= len(samples)
        return budget

    @rpc
    def GetNeuron(
        self, request: pb.GetNeuronRequest, context: grpc.ServicerContext
    ) -> pb.GetNeuronResponse:
        rec = self.atlas.get_neuron(
            *C.ref_from_pb(request.neuron),
            with_vector=request.include_vector,
            kind=C.ref_kind(request.neuron),
        )
        out = C.neuron_to_pb(rec, include_vector=request.include_vector)
        if request.include_thumbnails:
            from neuronatlas.service.zoo_catalogue import NEURON_THUMBNAILS, Thumbnails

            Thumbnails(self.atlas.home, self.atlas.store).fill(
                rec, out.top_samples, NEURON_THUMBNAILS
            )
        return pb.GetNeuronResponse(neuron=out)

    @rpc
    def DescribeNeuron(
        self, request: pb.DescribeNeuronRequest, context: grpc.ServicerContext
    ) -> pb.DescribeNeuronResponse:
        desc = self.atlas.describe_neuron(
            *C.ref_from_pb(request.neuron),
            labels=list(request.labels),
            top_n=request.top_n or V.DEFAULT_TOP_N,
            kind=C.ref_kind(request.neuron),
        )
        return C.description_to_pb(desc)

    @rpc
    def FindNeuronsByLabel(
        self, request: pb.FindNeuronsByLabelRequest, context: grpc.ServicerContext
    ) -> pb.FindNeuronsByLabelResponse:
        page = self.atlas.find_by_label(
            request.label,
            prefix=request.match == pb.LABEL_MATCH_PREFIX,
            flt=C.filter_from_pb(request.filter) if request.HasField("filter") else None,
            offset=self.pages.decode(request),
            limit=paging.page_size(request.page_size, LABEL_PAGE_DEFAULT, LABEL_PAGE_MAX),
            scope=C.scope_from_pb(request.scope) or LabelScope.SET,
        )
        response = pb.FindNeuronsByLabelResponse(
            next_page_token=self.pages.encode(request, page.next_offset)
        )
        C.hits_to_pb(page.items, response.results)
        return response

    @rpc
    def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.ServicerContext
    ) -> pb.ListModelsResponse:
        page = self.atlas.list_models(
            offset=self.pages.decode(request),
            limit=paging.page_size(request.page_size, MODEL_PAGE_DEFAULT, MODEL_PAGE_MAX),
        )
        return pb.ListModelsResponse(
            models=[C.model_to_pb(m) for m in page.items],
            next_page_token=self.pages.encode(request, page.next_offset),
        )

    @rpc
    def GetModel(
        self, request: pb.GetModelRequest, context: grpc.ServicerContext
    ) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=C.model_to_pb(self.atlas.get_model(request.model_id)))

    @rpc
    def DeleteModel(
        self, request: pb.DeleteModelRequest, context: grpc.ServicerContext
    ) -> pb.DeleteModelResponse:
        n = self.atlas.delete_model(request.model_id)
        log.info("deleted model %s (%d neuron records)", request.model_id, n)
        return pb.DeleteModelResponse(model_id=request.model_id, deleted_neurons=n)

    @rpc
    def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.ServicerContext
    ) -> pb.GetStatsResponse:
        return C.stats_to_pb(self.atlas.stats())

    @rpc
    def VerifyStore(
        self, request: pb.VerifyStoreRequest, context: grpc.ServicerContext
    ) -> pb.VerifyStoreResponse:
        report = self.atlas.verify_store()
        log.info("verified the store: %s", "ok" if report.ok else "PROBLEMS")
        return C.verify_to_pb(report)

    @rpc
    def CompareModels(
        self, request: pb.CompareModelsRequest, context: grpc.ServicerContext
    ) -> pb.CompareModelsResponse:
        offset = self.pages.decode(request)
        size = paging.page_size(request.page_size, PAIR_PAGE_DEFAULT, PAIR_PAGE_MAX)
        cmp = self.atlas.compare_models(
            **C.compare_args_from_pb(request), offset=offset, limit=size
        )
        nxt = offset + size if offset + size < cmp.pairs_total else None
        return C.comparison_to_pb(cmp, self.pages.encode(request, nxt))

    @rpc
    def AuditModel(
        self, request: pb.AuditModelRequest, context: grpc.ServicerContext
    ) -> pb.AuditModelResponse:
        return C.audit_to_pb(self.atlas.audit_model(**C.audit_args_from_pb(request)))

    @rpc
    def ExplainClass(
        self, request: pb.ExplainClassRequest, context: grpc.ServicerContext
    ) -> pb.ExplainClassResponse:
        return C.explanation_to_pb(self.atlas.explain_class(**C.explain_args_from_pb(request)))
