"""ZooService operation methods (see ``zoo.py``): IndexModel and the operation calls (Get /
List / Cancel / Wait), and the worker side (ClaimJob / ReportJob) of the job queue in
``neuronatlas.core.jobs``.

Thin, like the query servicer: parse (``convert_zoo.py``), validate
(``indexer/worker.py``: ``check_index_request``), call the queue, convert back. What they
guarantee:

- **IndexModel** checks what can be checked before anything is queued (the model is
  registered or a source is given — the source checked as RegisterModel checks it —, the
  probe set exists and holds at least k images, k > 0, layer names, options, vocabulary files)
  and returns the queued operation at once. The same ``request_id`` returns the operation it
  created the first time (the same id with another request is INVALID_ARGUMENT).
- Operation names are ``operations/<id>``: anything else is INVALID_ARGUMENT on ``name``, an
  unknown id NOT_FOUND. **WaitOperation** waits at most its timeout (default and maximum
  60 s) and always answers before the call's deadline.
- **ClaimJob / ReportJob** are for workers that share the store (a remote Qdrant): a server
  over the embedded store (``KnowledgeStore.exclusive``) runs its jobs itself and refuses
  them (FAILED_PRECONDITION). A report from a worker whose lease ran out is
  FAILED_PRECONDITION with reason LEASE_LOST. On success the server reads the indexed Model
  from the store (and refreshes its catalogue snapshot, so queries see it at once).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import grpc

from neuronatlas.core import validate as V
from neuronatlas.core.errors import FailedPrecondition, InvalidArgument
from neuronatlas.core.jobs import Job, Operation, parse_operation_name
from neuronatlas.core.records import ModelStatus
from neuronatlas.service import convert_zoo as CZ
from neuronatlas.service import paging
from neuronatlas.service.servicer import rpc
from neuronatlas.v1 import zoo_pb2 as zpb

if TYPE_CHECKING:
    from neuronatlas.service.zoo import ZooContext

OPERATION_PAGE_DEFAULT, OPERATION_PAGE_MAX = 50, 500
WAIT_DEFAULT_S = WAIT_MAX_S = 60.0
WAIT_MARGIN_S = 0.25  # answer this long before the call's deadline
MAX_WORKER_CHARS = 128
# what a heartbeat may record (anything else a worker sends is dropped)
_PROGRESS_TYPES: dict[str, type] = {
    "stage": str,
    "images_done": int,
    "images_total": int,
    "layers": list,
    "elapsed_seconds": float,
    "eta_seconds": float,
}


def _op(job: Job) -> zpb.Operation:
    return CZ.operation_to_pb(Operation.from_job(job))


def _worker(name: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_WORKER_CHARS:
        raise InvalidArgument(
            f"worker must be a name of 1 to {MAX_WORKER_CHARS} characters", field="worker"
        )
    return name


def _progress(raw: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, kind in _PROGRESS_TYPES.items():
        value = raw.get(key)
        if value is None:
            continue
        if kind is str and isinstance(value, str):
            out[key] = value[:64]
        elif kind is list and isinstance(value, list):
            out[key] = [str(x)[: V.MAX_LAYER_CHARS] for x in value[: V.MAX_FILTER_ITEMS]]
        elif kind in (int, float) and isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = max(0, int(value)) if kind is int else max(0.0, float(value))
    return out


class OperationMethods:
    """IndexModel, GetOperation, ListOperations, CancelOperation, WaitOperation, ClaimJob,
    ReportJob."""

    ctx: ZooContext

    if TYPE_CHECKING:  # from CatalogueMethods (ZooServicer has both)

        def _check_artifacts(self, source: dict[str, Any]) -> None: ...

    # -- operations ------------------------------------------------------------------------------
    @rpc
    def IndexModel(
        self, request: zpb.IndexModelRequest, context: grpc.ServicerContext
    ) -> zpb.IndexModelResponse:
        from neuronatlas.indexer.sources import check_untrusted_source
        from neuronatlas.indexer.worker import INDEX_JOB, IndexRequest, check_index_request

        model_id = V.check_model_id(request.model_id)
        request_id = V.check_request_id(request.request_id)
        req = IndexRequest.from_dict(CZ.index_request_from_pb(request))
        queue = self.ctx.queue
        prior = queue.find_request(request_id)
        if prior is not None:  # a retry: the first answer, whatever changed since
            if prior.kind != INDEX_JOB or prior.request != req.to_dict():
                raise InvalidArgument(
                    f"request_id {V.shown(request_id)} was used for another request",
                    field="request_id",
                )
            return zpb.IndexModelResponse(operation=_op(prior))
        if req.source is not None:
            check_untrusted_source(req.source, allow_python=self.ctx.allow_python_sources)
            self._check_artifacts(req.source)
        check_index_request(req, self.ctx.atlas.store, self.ctx.home)
        job = queue.submit(INDEX_JOB, model_id, req.to_dict(), request_id=request_id)
        return zpb.IndexModelResponse(operation=_op(job))

    @rpc
    def GetOperation(
        self, request: zpb.GetOperationRequest, context: grpc.ServicerContext
    ) -> zpb.GetOperationResponse:
        job = self.ctx.queue.get(parse_operation_name(request.name))
        return zpb.GetOperationResponse(operation=_op(job))

    @rpc
    def ListOperations(
        self, request: zpb.ListOperationsRequest, context: grpc.ServicerContext
    ) -> zpb.ListOperationsResponse:
        model_id = V.check_model_id(request.model_id) if request.model_id else ""
        states = [CZ.state_from_pb(s) for s in request.states] or None
        size = paging.page_size(request.page_size, OPERATION_PAGE_DEFAULT, OPERATION_PAGE_MAX)
        offset = self.ctx.pages.decode(request)
        jobs = self.ctx.queue.list_jobs(states, model_id=model_id)
        nxt = offset + size if offset + size < len(jobs) else None
        return zpb.ListOperationsResponse(
            operations=[_op(j) for j in jobs[offset : offset + size]],
            next_page_token=self.ctx.pages.encode(request, nxt),
        )

    @rpc
    def CancelOperation(
        self, request: zpb.CancelOperationRequest, context: grpc.ServicerContext
    ) -> zpb.CancelOperationResponse:
        job = self.ctx.queue.cancel(parse_operation_name(request.name))
        return zpb.CancelOperationResponse(operation=_op(job))

    @rpc
    def WaitOperation(
        self, request: zpb.WaitOperationRequest, context: grpc.ServicerContext
    ) -> zpb.WaitOperationResponse:
        job_id = parse_operation_name(request.name)
        timeout = WAIT_DEFAULT_S
        if request.HasField("timeout"):
            t = request.timeout.ToNanoseconds() / 1e9
            if t < 0:
                raise InvalidArgument("timeout must not be negative", field="timeout")
            timeout = min(t, WAIT_MAX_S) if t > 0 else WAIT_DEFAULT_S
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(0.0, remaining - WAIT_MARGIN_S))
        job = self.ctx.queue.wait(job_id, timeout)
        return zpb.WaitOperationResponse(operation=_op(job))

    # -- the worker side -------------------------------------------------------------------------
    def _check_shared(self) -> None:
        if self.ctx.atlas.store.exclusive:
            raise FailedPrecondition(
                "this server's store is embedded (one process): its own index workers run the "
                "jobs (serve --index-workers); remote workers need a shared remote Qdrant"
            )

    @rpc
    def ClaimJob(
        self, request: zpb.ClaimJobRequest, context: grpc.ServicerContext
    ) -> zpb.ClaimJobResponse:
        from neuronatlas.indexer.worker import INDEX_JOB

        worker = _worker(request.worker)
        self._check_shared()
        job = self.ctx.queue.claim(worker, kinds=[INDEX_JOB])
        if job is None:
            return zpb.ClaimJobResponse()
        return zpb.ClaimJobResponse(job=CZ.job_to_pb(job, self.ctx.queue.lease_s))

    @rpc
    def ReportJob(
        self, request: zpb.ReportJobRequest, context: grpc.ServicerContext
    ) -> zpb.ReportJobResponse:
        job_id = parse_operation_name(request.job_id, bare_ok=True)
        worker = _worker(request.worker)
        report = CZ.report_from_pb(request.report)
        self._check_shared()
        queue = self.ctx.queue
        if report == "heartbeat":
            progress = _progress(CZ.progress_from_pb(request.progress))
            job = queue.heartbeat(job_id, worker, progress)
            return zpb.ReportJobResponse(cancel_requested=job.cancel_requested)
        if report == "succeeded":
            store = self.ctx.atlas.store
            job = queue.get(job_id)
            store.refresh()  # the worker flipped the model: queries see it from now on
            entry = store.get_model(job.model_id)
            if entry.status != ModelStatus.INDEXED:
                raise FailedPrecondition(
                    f"the worker reported success but model {job.model_id!r} is "
                    f"{entry.status.value} in the store"
                )
            queue.succeed(job_id, worker, {"model": entry.to_payload()})
        elif report == "failed":
            error = CZ.error_from_pb(request.error)
            if not error["message"]:
                error["message"] = "the worker reported a failure"
            queue.fail(job_id, worker, error)
        else:
            queue.cancelled(job_id, worker)
        return zpb.ReportJobResponse()
