"""The service's synchronous handlers served by a ``grpc.aio`` server.

Every servicer, interceptor, health check and reflection method of NeuronAtlas is plain
synchronous code written against ``grpc.ServicerContext``. The server is a ``grpc.aio`` server
all the same, because it costs less CPU per call (``bench/bench_grpc_front.py``): the sync
server hands each call from gRPC's poller thread to a pool thread and back, which at 32 clients
on two cores cost more than the search itself. :class:`Bridge` is the one ``grpc.aio``
interceptor: it applies the synchronous interceptors to a method's handler and turns the
result into an asynchronous handler that runs the synchronous code either

- **inline** on the event loop, for a quick call the server's :class:`InlinePolicy` names (a
  vector search of the embedded store: well under a millisecond, no waiting on anything), or
- **in a thread pool**, for everything else (comparisons, audits, uploads, index
  operations, text and image queries that run CLIP, a remote store's network round trips),
- or on a **lane** of its own when the server's :data:`Lanes` name one for the method and
  request: a one-thread executor for batches of quick searches, which would only contend for
  the GIL as a crowd of pool threads.

The handler code sees a :class:`SyncContext`: the ``grpc.ServicerContext`` methods it uses, over
the asynchronous context. ``abort_with_status`` raises :class:`Aborted` (a ``BaseException``, as
an abort must not be caught by a handler's ``except Exception``); the bridge then aborts the call
with that status on the event loop.

All servers of a process share one event loop, run by a daemon thread (:func:`event_loop`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from grpc import aio

T = TypeVar("T")
#: method name -> whether a request of it runs inline on the event loop
InlinePolicy = dict[str, Callable[[Any], bool]]
#: method name -> (executor, whether a request of it runs there rather than on the pool)
Lanes = dict[str, tuple[Executor, Callable[[Any], bool]]]

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def event_loop() -> asyncio.AbstractEventLoop:
    """The process's gRPC event loop, started on first use in a daemon thread."""
    global _loop
    with _loop_lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="neuronatlas-grpc", daemon=True).start()
            _loop = loop
        return _loop


def run(coro: Awaitable[T], timeout: float | None = None) -> T:
    """Run ``coro`` on the gRPC event loop from any other thread and return its result."""
    loop = event_loop()
    try:
        on_loop_thread = asyncio.get_running_loop() is loop
    except RuntimeError:  # no loop runs in this thread
        on_loop_thread = False
    if on_loop_thread:  # waiting here would block the loop that has to do the work
        raise RuntimeError("bridge.run() called on the gRPC event loop's own thread")
    return asyncio.run_coroutine_threadsafe(_wrap(coro), loop).result(timeout)


async def _wrap(aw: Awaitable[T]) -> T:
    return await aw


class Aborted(BaseException):
    """Raised by :meth:`SyncContext.abort_with_status`; the bridge aborts the call with it."""

    def __init__(self, status: grpc.Status):
        super().__init__(status.details)
        self.status = status


class _Status(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str, trailing_metadata: Any = ()):
        self.code, self.details, self.trailing_metadata = code, details, trailing_metadata


class SyncContext:
    """What synchronous handler code sees of an asynchronous call: the ``grpc.ServicerContext``
    methods the service uses. Only reads of the call's state reach the asynchronous context
    directly; what must happen on the event loop (initial metadata, the abort) is kept here
    and done by the bridge."""

    def __init__(self, context: aio.ServicerContext):
        self._context = context
        self._code: grpc.StatusCode | None = None
        self.initial_metadata: tuple[tuple[str, str], ...] | None = None

    # -- the call's state
    def is_active(self) -> bool:
        return not (self._context.cancelled() or self._context.done())

    def time_remaining(self) -> float | None:
        return self._context.time_remaining()

    def invocation_metadata(self) -> Any:
        return self._context.invocation_metadata()

    def peer(self) -> str:
        return self._context.peer()

    def auth_context(self) -> Any:
        return self._context.auth_context()

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        """The status of a call that returns normally (health's Check: NOT_FOUND)."""
        self._code = code
        self._context.set_code(code)

    def set_details(self, details: str) -> None:
        self._context.set_details(details)

    # -- what the bridge does on the event loop
    def send_initial_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        if self.initial_metadata is not None:
            raise ValueError("initial metadata was already sent")
        self.initial_metadata = tuple(metadata)

    def abort_with_status(self, status: grpc.Status) -> None:
        self._code = status.code
        raise Aborted(status)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.abort_with_status(_Status(code, details))

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """``callback`` runs when the call ends (health's Watch stops its watcher with it)."""
        self._context.add_done_callback(lambda _: callback())
        return True


class Bridge(aio.ServerInterceptor):
    """Applies the synchronous ``interceptors`` (outermost first) to every method's handler and
    serves it from the event loop: inline when ``inline`` says so for the method and request,
    on a lane's executor when ``lanes`` says so, else on ``pool``."""

    def __init__(
        self,
        interceptors: Sequence[grpc.ServerInterceptor],
        pool: Executor,
        inline: InlinePolicy | None = None,
        lanes: Lanes | None = None,
    ):
        self.interceptors = list(interceptors)
        self.pool = pool
        self.inline = inline or {}
        self.lanes = lanes or {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        if handler is None:
            return None
        if _is_async(handler):  # already asynchronous: nothing to bridge
            return handler

        # Each interceptor's continuation is the next one's intercept_service, the last one's
        # the handler: a chain of partials, no closure that refers to itself (such a cycle per
        # call is garbage only the cyclic collector frees, and the call's objects are many).
        def last(_: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            return handler

        continuation_: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None] = last
        for interceptor in reversed(self.interceptors):
            continuation_ = functools.partial(interceptor.intercept_service, continuation_)
        wrapped = continuation_(details)
        if wrapped is None:
            return None
        method = str(details.method)
        return self._bridged(wrapped, self.inline.get(method), self.lanes.get(method))

    def _bridged(
        self,
        handler: grpc.RpcMethodHandler,
        inline: Callable[[Any], bool] | None,
        lane: tuple[Executor, Callable[[Any], bool]] | None = None,
    ) -> grpc.RpcMethodHandler:
        changes: dict[str, Any] = {}
        if handler.unary_unary is not None:
            changes["unary_unary"] = self._unary(handler.unary_unary, inline, lane=lane)
        if handler.stream_unary is not None:
            changes["stream_unary"] = self._unary(handler.stream_unary, None, streamed=True)
        if handler.unary_stream is not None:
            changes["unary_stream"] = self._stream(handler.unary_stream)
        if handler.stream_stream is not None:
            changes["stream_stream"] = self._stream(handler.stream_stream, streamed=True)
        return handler._replace(**changes)

    def _unary(
        self,
        behaviour: Callable[..., Any],
        inline: Callable[[Any], bool] | None,
        streamed: bool = False,
        lane: tuple[Executor, Callable[[Any], bool]] | None = None,
    ) -> Callable[..., Awaitable[Any]]:
        """``streamed``: the requests come as a stream (read from the pool thread)."""
        pool = self.pool

        async def call(request: Any, context: aio.ServicerContext) -> Any:
            sync = SyncContext(context)
            if streamed:
                request = _SyncRequests(request, asyncio.get_running_loop())
            # a request the interceptors refuse (undecoded bytes, a malformed-request marker)
            # is answered at once, so it runs inline too
            run_here = inline is not None and (not isinstance(request, Message) or inline(request))
            try:
                if run_here:  # (the call's task has a context of its own already)
                    response = behaviour(request, sync)
                else:
                    loop = asyncio.get_running_loop()
                    cv = contextvars.copy_context()
                    where = pool
                    # (a refused request comes as undecoded bytes: no lane's business)
                    if lane is not None and isinstance(request, Message) and lane[1](request):
                        where = lane[0]
                    response = await _on_pool(loop, where, cv.run, behaviour, request, sync)
            except Aborted as a:
                await _send_metadata(sync, context)
                await context.abort(a.status.code, a.status.details, a.status.trailing_metadata)
            await _send_metadata(sync, context)
            return response

        return call

    def _stream(
        self, behaviour: Callable[..., Iterator[Any]], streamed: bool = False
    ) -> Callable[..., AsyncIterator[Any]]:
        pool = self.pool

        async def call(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
            sync = SyncContext(context)
            loop = asyncio.get_running_loop()
            if streamed:
                request = _SyncRequests(request, loop)
            steps = _Steps(contextvars.copy_context())
            responses: Iterator[Any] | None = None
            try:
                responses = await _on_pool(loop, pool, steps.run, behaviour, request, sync)
                while True:
                    item = await _on_pool(loop, pool, steps.run, next, responses, _END)
                    await _send_metadata(sync, context)
                    if item is _END:
                        return
                    yield item
            except Aborted as a:
                await _send_metadata(sync, context)
                await context.abort(a.status.code, a.status.details, a.status.trailing_metadata)
            finally:
                close = getattr(responses, "close", None)
                if close is not None:
                    # The generator's own clean-up (its access-log line), after the step a
                    # cancelled call may still be running; not awaited, as that step may
                    # wait for the call's end itself (health's Watch). A stopped server's
                    # pool takes no more work: the generator is then closed when collected.
                    with contextlib.suppress(RuntimeError):
                        pool.submit(steps.run, close)

        return call


def _on_pool(
    loop: asyncio.AbstractEventLoop, pool: Executor, fn: Callable[..., T], *args: Any
) -> Awaitable[T]:
    """``fn(*args)`` on the pool. A pool that takes no more work (the server is stopping, its
    grace over) answers the call UNAVAILABLE rather than with an internal error."""
    try:
        return loop.run_in_executor(pool, fn, *args)
    except RuntimeError:  # "cannot schedule new futures after shutdown"
        raise Aborted(_Status(grpc.StatusCode.UNAVAILABLE, "the server is stopping")) from None


class _Steps:
    """Runs the steps of one stream's handler one at a time, in one context (its request id
    stays set from step to step, whichever pool thread runs it)."""

    def __init__(self, context: contextvars.Context):
        self._context = context
        self._lock = threading.Lock()

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            return self._context.run(fn, *args)


_END = object()


async def _send_metadata(sync: SyncContext, context: aio.ServicerContext) -> None:
    metadata, sync.initial_metadata = sync.initial_metadata, None
    if metadata:
        await context.send_initial_metadata(metadata)


class _SyncRequests:
    """A blocking iterator over an asynchronous one (the requests of a client stream), for the
    pool thread running the handler: each message is read on the event loop."""

    def __init__(self, requests: AsyncIterator[Any], loop: asyncio.AbstractEventLoop):
        self._requests, self._loop = requests, loop

    def __iter__(self) -> _SyncRequests:
        return self

    def __next__(self) -> Any:
        try:
            return asyncio.run_coroutine_threadsafe(_next(self._requests), self._loop).result()
        except StopAsyncIteration:
            raise StopIteration from None


async def _next(requests: AsyncIterator[Any]) -> Any:
    return await requests.__anext__()


def _is_async(handler: grpc.RpcMethodHandler) -> bool:
    behaviour = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    return inspect.iscoroutinefunction(behaviour) or inspect.isasyncgenfunction(behaviour)


def on_loop(fn: Callable[[], T]) -> T:
    """Call ``fn`` on the gRPC event loop (grpc.aio objects belong to the loop that made
    them) and return its result."""

    async def call() -> T:
        return fn()

    return run(call())
