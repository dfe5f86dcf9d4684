"""Malformed request bytes are the client's fault: INVALID_ARGUMENT, never INTERNAL.

grpcio deserialises a request before any servicer code runs; when ``FromString`` raises
(truncated varint, a length past the end, invalid UTF-8 in a string, field number 0, an
unbalanced or too deeply nested group) its default path answers INTERNAL "Exception
deserializing request!" and logs a traceback. :class:`MalformedRequestInterceptor` wraps every
method handler the server has (ours, health checking, reflection): the deserialiser returns a
:class:`MalformedRequest` marker instead of raising, and the method behaviour aborts with
INVALID_ARGUMENT and a ``BadRequest`` field violation before the servicer sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from neuronatlas.service.errors import make_status

log = logging.getLogger("neuronatlas.service")


class MalformedRequest:
    """What the deserialiser hands over instead of a message it could not parse."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "messages or groups are nested too deeply"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    # Parser messages name the wire problem ("Error parsing message with type ..."); keep them
    # short and free of object reprs.
    return text[:200] if text and "object at 0x" not in text else "not a valid protobuf message"


def _safe(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # noqa: BLE001 - any parser failure is a malformed request
            return MalformedRequest(_describe(exc))

    return parse


def _abort(context: grpc.ServicerContext, bad: MalformedRequest) -> None:
    context.abort_with_status(
        make_status(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request bytes are not a valid message of this method: {bad.reason}",
            "MALFORMED_REQUEST",
            field="request",
        )
    )


def _checked_iter(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, MalformedRequest):
            _abort(context, request)
        yield request


def _guard_unary(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def call(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, MalformedRequest):
            _abort(context, request)
        return behaviour(request, context)

    return call


def _guard_stream(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    def call(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        return behaviour(_checked_iter(requests, context), context)

    return call


class MalformedRequestInterceptor(grpc.ServerInterceptor):
    """Turns request-parsing failures of any method into INVALID_ARGUMENT."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        changes: dict[str, Any] = {"request_deserializer": _safe(handler.request_deserializer)}
        for kind in ("unary_unary", "unary_stream"):
            if getattr(handler, kind) is not None:
                changes[kind] = _guard_unary(getattr(handler, kind))
        for kind in ("stream_unary", "stream_stream"):
            if getattr(handler, kind) is not None:
                changes[kind] = _guard_stream(getattr(handler, kind))
        return handler._replace(**changes)


class UnknownMethod(grpc.GenericRpcHandler):
    """The last handler: a method this server does not have is UNIMPLEMENTED with an ErrorInfo
    (gRPC's own answer carries no details)."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        method = str(handler_call_details.method)
        status = make_status(
            grpc.StatusCode.UNIMPLEMENTED,
            f"this server has no method {method[:200]!r}",
            "UNIMPLEMENTED",
            metadata={"method": method[:128]},
        )

        def abort(request: Any, context: grpc.ServicerContext) -> None:
            context.abort_with_status(status)

        return grpc.unary_unary_rpc_method_handler(abort)
