"""The one mapping between NeuronAtlas errors and gRPC status codes, derived from the classes.

Every error class names its status itself (``code``, ``reason``; see ``core/errors.py``). Server
side, :func:`to_rpc_status` turns an exception into a ``grpc.Status`` carrying a
``google.rpc.Status`` with details (ErrorInfo always, BadRequest field violations for
INVALID_ARGUMENT, PreconditionFailure for FAILED_PRECONDITION, ResourceInfo for NOT_FOUND); its
message leaves without object reprs or server paths, small enough for gRPC's trailers. Client side,
:func:`from_rpc_error` turns a ``grpc.RpcError`` back into the error class its ErrorInfo reason
names (a registry built from the classes), or, for a status without one (the gRPC runtime's own),
the class that stands for the status code.
"""

from __future__ import annotations

import logging
import re

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from neuronatlas.core import errors as E

log = logging.getLogger("neuronatlas.service")

DOMAIN = "neuronatlas.dev"


class ServiceUnavailable(E.NeuronAtlasError):
    """The NeuronAtlas server (or its store) cannot be reached; retrying may help."""

    code = "UNAVAILABLE"
    reason = "UNAVAILABLE"


class DeadlineExceeded(E.NeuronAtlasError):
    """The call did not finish within its deadline."""

    code = "DEADLINE_EXCEEDED"
    reason = "DEADLINE_EXCEEDED"


class MessageTooLarge(E.InvalidArgument):
    """A request or response is over the transport's message size limit."""

    code = "RESOURCE_EXHAUSTED"
    reason = "RESOURCE_EXHAUSTED"


class ServerError(E.NeuronAtlasError):
    """The server failed on its side (a bug or an unexpected state)."""

    code = "INTERNAL"
    reason = "INTERNAL"


def error_classes() -> list[type[E.NeuronAtlasError]]:
    """Every error class that names its own ``reason`` (all subclasses, base excluded)."""
    out: list[type[E.NeuronAtlasError]] = []
    todo = list(E.NeuronAtlasError.__subclasses__())
    while todo:
        cls = todo.pop(0)
        if "reason" in vars(cls) and cls not in out:
            out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def by_reason() -> dict[str, type[E.NeuronAtlasError]]:
    """ErrorInfo reason -> error class. Two classes may not share a reason."""
    out: dict[str, type[E.NeuronAtlasError]] = {}
    for cls in error_classes():
        if cls.reason in out and out[cls.reason] is not cls:
            raise RuntimeError(
                f"{cls.__qualname__} and {out[cls.reason].__qualname__} share reason {cls.reason!r}"
            )
        out[cls.reason] = cls
    return out


def for_code(code: grpc.StatusCode) -> type[E.NeuronAtlasError]:
    """The class standing for a bare status code: the one whose reason is the code's name,
    else the only class with that code, else ServerError."""
    classes = [c for c in error_classes() if c.code == code.name]
    generic = [c for c in classes if c.reason == code.name]
    if generic:
        return generic[0]
    return classes[0] if len(classes) == 1 else ServerError


def status_code(cls: type[E.NeuronAtlasError]) -> grpc.StatusCode:
    return grpc.StatusCode[cls.code]


def _pack(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def code_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """(status code, ErrorInfo reason) for an exception; INTERNAL for anything unexpected."""
    if isinstance(exc, E.NeuronAtlasError):
        return status_code(type(exc)), type(exc).reason
    return grpc.StatusCode.INTERNAL, ServerError.reason


# Trailers above gRPC's metadata limit (8 KiB by default on the receiving side) turn any error
# into RESOURCE_EXHAUSTED at the client. The message travels twice (grpc-message, percent-encoded,
# up to 3 bytes a byte; and inside grpc-status-details-bin, base64), so both are capped.
MAX_MESSAGE_BYTES = 600
MAX_STATUS_BYTES = 2048
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")
_ABS_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"()\[\]]+/)+([^\s/'\"()\[\]]*)")


def _fit(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (an ellipsis marks the cut)."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", "ignore") + "…"


def public_message(text: str) -> str:
    """An error message fit to leave the server: no object reprs (``<_io.BytesIO object at
    0x…>``), server paths cut to their last component, at most ``MAX_MESSAGE_BYTES``."""
    text = _OBJECT_REPR.sub("an object", text)
    text = _ABS_PATH.sub(lambda m: "…/" + m.group(1), text)
    text = text.replace("\r", " ").replace("\n", " ").strip()
    return _fit(text, MAX_MESSAGE_BYTES) or "error"


def make_status(
    code: grpc.StatusCode,
    message: str,
    reason: str,
    field: str | None = None,
    metadata: dict[str, str] | None = None,
    resource: tuple[str, str] | None = None,
) -> grpc.Status:
    """A ``grpc.Status`` with a ``google.rpc.Status``: ErrorInfo always; a BadRequest field
    violation for INVALID_ARGUMENT (or when ``field`` is given), PreconditionFailure for
    FAILED_PRECONDITION, ResourceInfo (``resource`` = (type, name)) for NOT_FOUND. The message
    is made public (:func:`public_message`) and the whole status kept under the trailer limit."""
    message = public_message(message)
    info = error_details_pb2.ErrorInfo(
        reason=reason,
        domain=DOMAIN,
        metadata={_fit(k, 64): _fit(v, 128) for k, v in (metadata or {}).items()},
    )
    details = [_pack(info)]
    if code is grpc.StatusCode.INVALID_ARGUMENT or field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=_fit(field or "request", 128), description=message
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    elif code is grpc.StatusCode.FAILED_PRECONDITION:
        precondition = error_details_pb2.PreconditionFailure.Violation(
            type=reason, subject="store", description=message
        )
        details.append(_pack(error_details_pb2.PreconditionFailure(violations=[precondition])))
    elif code is grpc.StatusCode.NOT_FOUND:
        kind, name = resource or ("", "")
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=_fit(kind or "resource", 64),
                    resource_name=_fit(name, 256),
                    description=message,
                )
            )
        )
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    if status.ByteSize() > MAX_STATUS_BYTES:  # cannot happen with the caps above; stay safe
        status = status_pb2.Status(code=code.value[0], message=message, details=details[:1])
    return rpc_status.to_status(status)


def to_rpc_status(exc: BaseException) -> grpc.Status:
    """The status a servicer aborts with. Unexpected errors are logged and kept vague."""
    code, reason = code_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("internal error", exc_info=exc)
        return make_status(code, "internal server error (see the server log)", reason)
    resource = None
    if isinstance(exc, E.NotFound):
        resource = (exc.resource_type, exc.resource_name)
    return make_status(
        code,
        str(exc),
        reason,
        field=getattr(exc, "field", None),
        metadata={"type": type(exc).__name__},
        resource=resource,
    )


def from_rpc_error(err: grpc.RpcError) -> E.NeuronAtlasError:
    """The NeuronAtlas error a client raises for a failed call."""
    code = err.code() if hasattr(err, "code") else None
    code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    message = err.details() if hasattr(err, "details") else str(err)
    reason, field = "", None
    status = rpc_status.from_call(err) if hasattr(err, "trailing_metadata") else None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            if br.field_violations:
                field = br.field_violations[0].field
    cls = by_reason().get(reason)
    if cls is None or cls.code != code.name:  # unknown reason, or not ours: go by the code
        cls = for_code(code)
    text = f"{message} [{code.name}]"
    if issubclass(cls, E.InvalidArgument):
        return cls(text, field=field)
    return cls(text)
