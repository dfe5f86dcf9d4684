"""The one mapping between NeuronAtlas errors and gRPC status codes.

Server side, :func:`to_rpc_status` turns an exception into a ``grpc.Status`` carrying a
``google.rpc.Status`` with details (ErrorInfo always, BadRequest field violations for
INVALID_ARGUMENT, PreconditionFailure for FAILED_PRECONDITION). Client side,
:func:`from_rpc_error` turns a ``grpc.RpcError`` back into the matching NeuronAtlas error.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from neuronatlas.core import errors as E

log = logging.getLogger("neuronatlas.service")

DOMAIN = "neuronatlas.dev"


class ServiceUnavailable(E.NeuronAtlasError):
    """The NeuronAtlas server (or its store) cannot be reached; retrying may help."""


class DeadlineExceeded(E.NeuronAtlasError):
    """The call did not finish within its deadline."""


class ServerError(E.NeuronAtlasError):
    """The server failed on its side (a bug or an unexpected state)."""


# Most specific classes first: the first isinstance match wins.
_CODES: list[tuple[type[BaseException], grpc.StatusCode, str]] = [
    (E.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    (E.NotFound, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
    (E.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS"),
    (E.NotIndexed, grpc.StatusCode.FAILED_PRECONDITION, "NOT_INDEXED"),
    (E.EmbedderMismatch, grpc.StatusCode.FAILED_PRECONDITION, "EMBEDDER_MISMATCH"),
    (E.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
    (E.StoreUnavailable, grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE"),
    (E.StoreLocked, grpc.StatusCode.UNAVAILABLE, "STORE_LOCKED"),
    (E.StoreCorrupted, grpc.StatusCode.DATA_LOSS, "STORE_CORRUPTED"),
    (E.NotAStore, grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_STORE"),
    (E.StoreError, grpc.StatusCode.FAILED_PRECONDITION, "STORE_ERROR"),
    (E.WeightsUnavailable, grpc.StatusCode.FAILED_PRECONDITION, "WEIGHTS_UNAVAILABLE"),
    (E.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
    (E.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
    (ServiceUnavailable, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"),
]

# Client side: status code -> error class (the reason in ErrorInfo refines it).
_FROM_CODE: dict[grpc.StatusCode, type[E.NeuronAtlasError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: E.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: E.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: E.AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: E.FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: ServiceUnavailable,
    grpc.StatusCode.DATA_LOSS: E.StoreCorrupted,
    grpc.StatusCode.UNAUTHENTICATED: E.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: E.PermissionDenied,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: E.InvalidArgument,  # message over the transport limit
    grpc.StatusCode.OUT_OF_RANGE: E.InvalidArgument,
}
_FROM_REASON: dict[str, type[E.NeuronAtlasError]] = {
    "NOT_INDEXED": E.NotIndexed,
    "EMBEDDER_MISMATCH": E.EmbedderMismatch,
    "STORE_UNAVAILABLE": E.StoreUnavailable,
    "STORE_LOCKED": E.StoreLocked,
    "NOT_A_STORE": E.NotAStore,
    "WEIGHTS_UNAVAILABLE": E.WeightsUnavailable,
}


def _pack(msg) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def code_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(status code, ErrorInfo reason) for an exception; INTERNAL for anything unexpected."""
    for cls, code, reason in _CODES:
        if isinstance(exc, cls):
            return code, reason
    return grpc.StatusCode.INTERNAL, "INTERNAL"


def make_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    field: str | None = None,
    metadata: dict[str, str] | None = None,
) -> grpc.Status:
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {}))
    ]
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=field or "request", description=message
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    elif code is grpc.StatusCode.FAILED_PRECONDITION:
        violation = error_details_pb2.PreconditionFailure.Violation(
            type=reason, subject="store", description=message
        )
        details.append(_pack(error_details_pb2.PreconditionFailure(violations=[violation])))
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


def to_rpc_status(exc: BaseException) -> grpc.Status:
    """The status a servicer aborts with. Unexpected errors are logged and kept vague."""
    code, reason = code_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error", exc_info=exc)
        return make_status(code, "internal server error (see the server log)", reason)
    return make_status(
        code,
        str(exc),
        reason,
        field=getattr(exc, "field", None),
        metadata={"type": type(exc).__name__},
    )


def from_rpc_error(err: grpc.RpcError) -> E.NeuronAtlasError:
    """The NeuronAtlas error a client raises for a failed call."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    reason, field = "", None
    status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            if br.field_violations:
                field = br.field_violations[0].field
    cls = _FROM_REASON.get(reason) or _FROM_CODE.get(code, ServerError)
    text = f"{message} [{code.name}]" if code is not None else str(message)
    if issubclass(cls, E.InvalidArgument):
        exc: E.NeuronAtlasError = cls(text, field=field)
    else:
        exc = cls(text)
    exc.code = code  # type: ignore[attr-defined]
    return exc
