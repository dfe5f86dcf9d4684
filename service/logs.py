"""Logs of the service: text or JSON lines, each carrying the request id of the call it belongs
to, and optional OpenTelemetry tracing.

- ``configure_logging("json" | "text")`` sets up the root logger (``serve --log-format``). A
  JSON line has ``ts``, ``level``, ``logger``, ``msg``, ``request_id`` (when inside a call),
  the ``extra`` fields of the log call (``method``, ``code``, ``duration_ms`` ... for the
  access log) and ``exc`` for an exception.
- Request ids: a call's id is the client's ``x-request-id`` metadata when it is a short token
  (letters, digits, ``.-_:``, at most 128 characters), otherwise a new random one; the server
  returns it in the response's initial metadata (``x-request-id``) and every log line written
  while the call runs carries it (:data:`request_id`, a context variable).
- Tracing: when the ``opentelemetry`` package is installed (it is not a dependency), every call
  runs in a server span named after the method (``rpc.system``, ``rpc.service``,
  ``rpc.method``, ``rpc.grpc.status_code``, ``neuronatlas.request_id``), exported wherever the
  application configured the OpenTelemetry SDK. Without the package, :func:`span` does nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

LOG_FORMATS = ("text", "json")
REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

#: the id of the call the current thread serves ("" outside calls)
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


def new_request_id() -> str:
    return uuid.uuid4().hex


def accept_request_id(value: object) -> str:
    """The client's request id when it is a usable token, else a new one."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str) and _REQUEST_ID_RE.match(value):
        return value
    return new_request_id()


class RequestIdFilter(logging.Filter):
    """Puts the current call's request id on every record (``record.request_id``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):
            record.request_id = request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", "") or request_id.get()
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """The classic line, with ``[request id]`` inside a call."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = getattr(record, "request_id", "") or request_id.get()
        return line.replace(": ", f" [{rid}]: ", 1) if rid else line


def configure_logging(fmt: str = "text", level: int | str = logging.INFO) -> None:
    """Log to stderr in ``fmt`` ("text" or "json"), replacing the root logger's handlers."""
    if fmt not in LOG_FORMATS:
        from neuronatlas.core.errors import InvalidArgument

        raise InvalidArgument(
            f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}", field="log_format"
        )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


# -- optional tracing ----------------------------------------------------------------------------
def _tracer() -> tuple[Any, Any]:
    """OpenTelemetry's tracer for the service and the SERVER span kind, or (None, None)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None, None
    return trace.get_tracer("neuronatlas.service"), trace.SpanKind.SERVER


_TRACER, _SERVER_KIND = _tracer()


def tracing_enabled() -> bool:
    return _TRACER is not None


@contextlib.contextmanager
def span(method: str, rid: str) -> Iterator[Any]:
    """A server span for one call when OpenTelemetry is installed (yields it, or None)."""
    if _TRACER is None:
        yield None
        return
    service, _, name = method.strip("/").partition("/")
    with _TRACER.start_as_current_span(
        name or method,
        kind=_SERVER_KIND,
        attributes={
            "rpc.system": "grpc",
            "rpc.service": service,
            "rpc.method": name,
            "neuronatlas.request_id": rid,
        },
    ) as s:
        yield s
