"""The bridge that serves synchronous handlers from the grpc.aio server (``service/bridge.py``):
which thread runs a call, aborts with their status and initial metadata, client and server
streams, cancellation, deadlines, and the server's inline policy."""

from __future__ import annotations

import asyncio
import contextvars
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from google.protobuf import wrappers_pb2
from grpc import aio

from neuronatlas.service import bridge
from neuronatlas.service.errors import make_status
from neuronatlas.service.server import SERVICE_NAME, batch_lanes, inline_policy
from neuronatlas.v1 import neuronatlas_pb2 as pb

SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="")


class Recorder(grpc.ServerInterceptor):
    """A synchronous interceptor, as the service's own: marks every call it saw."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        self.methods.append(str(details.method))
        return continuation(details)


class Methods(grpc.GenericRpcHandler):
    """Raw-bytes test methods under ``/t.T/``."""

    def __init__(self) -> None:
        self.stream_closed = threading.Event()
        self.stream_started = threading.Event()

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        name = str(details.method).rsplit("/", 1)[-1]
        return {
            "Quick": grpc.unary_unary_rpc_method_handler(self.thread),
            "Slow": grpc.unary_unary_rpc_method_handler(self.thread),
            "Batch": grpc.unary_unary_rpc_method_handler(
                self.thread, request_deserializer=wrappers_pb2.StringValue.FromString
            ),
            "Refuse": grpc.unary_unary_rpc_method_handler(self.refuse),
            "Leak": grpc.unary_unary_rpc_method_handler(self.leak),
            "LeakInline": grpc.unary_unary_rpc_method_handler(self.leak),
            "Remaining": grpc.unary_unary_rpc_method_handler(self.remaining),
            "Status": grpc.unary_unary_rpc_method_handler(self.status),
            "Sum": grpc.stream_unary_rpc_method_handler(self.total),
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "Echo": grpc.stream_stream_rpc_method_handler(self.echo),
        }.get(name)

    @staticmethod
    def thread(request: bytes, context: Any) -> bytes:
        context.send_initial_metadata((("x-thread", threading.current_thread().name),))
        return threading.current_thread().name.encode()

    @staticmethod
    def refuse(request: bytes, context: Any) -> bytes:
        context.send_initial_metadata((("x-request-id", "r-1"),))
        try:
            context.abort_with_status(
                make_status(grpc.StatusCode.NOT_FOUND, f"no {request.decode()}", "NOT_FOUND")
            )
        except Exception:  # noqa: BLE001 - a handler's own except must not swallow the abort
            return b"swallowed"
        return b"not reached"

    @staticmethod
    def leak(request: bytes, context: Any) -> bytes:
        before = SEEN.get()
        SEEN.set(request.decode())
        return before.encode()

    @staticmethod
    def status(request: bytes, context: Any) -> bytes:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("set, not aborted")
        return b""

    @staticmethod
    def remaining(request: bytes, context: Any) -> bytes:
        left = context.time_remaining()
        return b"none" if left is None else f"{left:.3f}".encode()

    @staticmethod
    def total(requests: Iterator[bytes], context: Any) -> bytes:
        return str(sum(len(r) for r in requests)).encode()

    def count(self, request: bytes, context: Any) -> Iterator[bytes]:
        self.stream_started.set()
        try:
            for i in range(int(request.decode())):
                yield str(i).encode()
                time.sleep(0.01)
        finally:
            self.stream_closed.set()

    @staticmethod
    def echo(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        for r in requests:
            yield r[::-1]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[grpc.Channel, Methods, Recorder]]:
    pool = futures.ThreadPoolExecutor(4, thread_name_prefix="t-pool")
    lane = futures.ThreadPoolExecutor(1, thread_name_prefix="t-lane")
    methods, recorder = Methods(), Recorder()
    policy = {
        "/t.T/Quick": lambda r: True,
        "/t.T/LeakInline": lambda r: True,
        "/t.T/Refuse": lambda r: r == b"inline",
    }
    lanes: bridge.Lanes = {"/t.T/Batch": (lane, lambda r: r.value == "quick ones")}
    server = bridge.on_loop(
        lambda: aio.server(interceptors=[bridge.Bridge([recorder], pool, policy, lanes)])
    )
    server.add_generic_rpc_handlers((methods,))
    port = server.add_insecure_port("127.0.0.1:0")
    bridge.run(server.start())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield channel, methods, recorder
    channel.close()
    bridge.run(server.stop(1.0))
    pool.shutdown()
    lane.shutdown()


def _unary(channel: grpc.Channel, name: str, data: bytes = b"", **kw: Any) -> Any:
    return channel.unary_unary(f"/t.T/{name}").with_call(data, timeout=10, **kw)


def test_quick_calls_run_on_the_event_loop_and_the_rest_on_the_pool(served) -> None:
    channel, _, recorder = served
    quick, call = _unary(channel, "Quick")
    assert quick == b"neuronatlas-grpc"
    assert dict(call.initial_metadata())["x-thread"] == "neuronatlas-grpc"
    slow, call = _unary(channel, "Slow")
    assert slow.startswith(b"t-pool")
    assert dict(call.initial_metadata())["x-thread"] == slow.decode()
    assert {"/t.T/Quick", "/t.T/Slow"} <= set(recorder.methods)  # the sync interceptor ran


@pytest.mark.parametrize("where", ["inline", "pool"])
def test_abort_carries_its_status_details_and_initial_metadata(served, where: str) -> None:
    channel, _, _ = served
    with pytest.raises(grpc.RpcError) as err:
        _unary(channel, "Refuse", where.encode())
    e = err.value
    assert e.code() is grpc.StatusCode.NOT_FOUND
    assert e.details() == f"no {where}"
    assert dict(e.initial_metadata())["x-request-id"] == "r-1"
    assert any(k == "grpc-status-details-bin" for k, _ in e.trailing_metadata())


def test_a_status_set_without_abort_reaches_the_client(served) -> None:
    channel, _, _ = served
    with pytest.raises(grpc.RpcError) as err:
        _unary(channel, "Status")
    assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert err.value.details() == "set, not aborted"


def test_health_check_of_an_unknown_service_is_not_found(server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        ok = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert ok.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as err:
            health.Check(health_pb2.HealthCheckRequest(service="no.Such"), timeout=10)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


def test_context_variables_do_not_leak_between_calls(served) -> None:
    channel, _, _ = served
    # the pool has 4 threads: 8 calls reuse every one of them; inline calls share one thread
    for name in ("Leak", "LeakInline"):
        assert [_unary(channel, name, b"mine")[0] for _ in range(8)] == [b""] * 8


def test_deadline_is_visible_to_the_handler(served) -> None:
    channel, _, _ = served
    left = float(_unary(channel, "Remaining")[0])
    assert 8.0 < left <= 10.5  # the wire rounds the deadline up a little
    no_deadline = channel.unary_unary("/t.T/Remaining")(b"", timeout=None)
    assert no_deadline == b"none"


def test_client_and_bidirectional_streams(served) -> None:
    channel, _, _ = served
    parts = [bytes([i % 251]) * (i + 1) for i in range(200)]
    total = channel.stream_unary("/t.T/Sum")(iter(parts), timeout=10)
    assert int(total) == sum(len(p) for p in parts)
    echoed = list(channel.stream_stream("/t.T/Echo")(iter([b"abc", b"12", b""]), timeout=10))
    assert echoed == [b"cba", b"21", b""]


def test_server_stream_in_order_and_closed_on_cancel(served) -> None:
    channel, methods, _ = served
    assert list(channel.unary_stream("/t.T/Count")(b"5", timeout=10)) == [
        str(i).encode() for i in range(5)
    ]
    methods.stream_closed.clear()
    call = channel.unary_stream("/t.T/Count")(b"100000", timeout=30)
    assert next(call) == b"0"
    call.cancel()
    assert methods.stream_closed.wait(10), "the handler's generator was not closed"


def test_unknown_method_is_unimplemented(served) -> None:
    channel, _, _ = served
    with pytest.raises(grpc.RpcError) as err:
        _unary(channel, "Nope")
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


class _CallContext:
    """The parts of a grpc.aio servicer context that an inline unary call reads."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def invocation_metadata(self) -> tuple:
        return (("x-request-id", "cycle-test"),)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def cancelled(self) -> bool:
        return False

    def done(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def set_code(self, code: Any) -> None:
        pass

    async def send_initial_metadata(self, metadata: Any) -> None:
        self.sent.append(metadata)


def _complete(coro: Any) -> Any:
    """Run a coroutine that never waits (an inline call on a context that answers at once)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the call waited")


def test_a_served_call_leaves_no_reference_cycles() -> None:
    """Everything a call creates is freed when it ends, by reference counting: nothing is
    left for the cyclic collector, whose collections a busy server pays for (a recursive
    closure per call did that once)."""
    import gc

    from neuronatlas.service.metrics import CallInterceptor
    from neuronatlas.service.wire import MalformedRequestInterceptor

    interceptors = [CallInterceptor(None), MalformedRequestInterceptor(), Recorder()]
    b = bridge.Bridge(interceptors, futures.ThreadPoolExecutor(1), {"/t.T/Quick": lambda r: True})
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request + b"!")
    details = SimpleNamespace(method="/t.T/Quick", invocation_metadata=(("x-request-id", "c"),))

    async def continuation(_: Any) -> grpc.RpcMethodHandler:
        return handler

    def call() -> tuple[bytes, list]:
        context = _CallContext()
        bridged = _complete(b.intercept_service(continuation, details))
        return _complete(bridged.unary_unary(b"ok", context)), context.sent

    assert call() == (b"ok!", [(("x-request-id", "c"),)])  # the whole path ran
    gc.collect()
    gc.disable()
    try:
        for _ in range(50):
            call()
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_run_refuses_the_loop_thread_instead_of_hanging() -> None:
    async def inner() -> str:
        coro = asyncio.sleep(0)
        try:
            bridge.run(coro)
        except RuntimeError as e:
            return str(e)
        finally:
            coro.close()
        return "ran"

    assert "event loop's own thread" in bridge.run(inner(), timeout=10)


def test_a_lane_takes_the_requests_it_names_and_the_pool_the_rest(served) -> None:
    channel, _, recorder = served
    quick = wrappers_pb2.StringValue(value="quick ones").SerializeToString()
    for _ in range(3):  # always the lane's one thread
        on_lane, call = _unary(channel, "Batch", quick)
        assert on_lane.startswith(b"t-lane")
        assert dict(call.initial_metadata())["x-thread"] == on_lane.decode()
    slow = wrappers_pb2.StringValue(value="slow ones").SerializeToString()
    other, _ = _unary(channel, "Batch", slow)
    assert other.startswith(b"t-pool")
    # bytes that are no message of the method are no lane's business (the pool refuses them)
    with pytest.raises(grpc.RpcError):
        _unary(channel, "Batch", b"\xff\xff not a message")
    assert "/t.T/Batch" in recorder.methods  # the sync interceptors ran on the lane too


def test_batch_lanes_of_the_server() -> None:
    lane = futures.ThreadPoolExecutor(1)
    embedded = SimpleNamespace(store=SimpleNamespace(exclusive=True))
    remote = SimpleNamespace(store=SimpleNamespace(exclusive=False))
    assert batch_lanes(remote, lane) == {}  # type: ignore[arg-type]
    executor, takes = batch_lanes(embedded, lane)[f"/{SERVICE_NAME}/BatchSearchNeurons"]  # type: ignore[arg-type]
    assert executor is lane
    vec = pb.SearchNeuronsRequest(vector=pb.Vector(values=[1.0, 0.0]))
    assert takes(pb.BatchSearchNeuronsRequest(requests=[vec, vec]))
    # one search that runs CLIP (or per model): the whole batch goes to the pool
    assert not takes(
        pb.BatchSearchNeuronsRequest(requests=[vec, pb.SearchNeuronsRequest(text="stripes")])
    )
    assert not takes(
        pb.BatchSearchNeuronsRequest(
            requests=[pb.SearchNeuronsRequest(vector=pb.Vector(values=[1.0]), per_model=2)]
        )
    )
    lane.shutdown()


def test_inline_policy_of_the_server() -> None:
    embedded = SimpleNamespace(store=SimpleNamespace(exclusive=True))
    remote = SimpleNamespace(store=SimpleNamespace(exclusive=False))
    assert inline_policy(remote) == {}  # type: ignore[arg-type]
    policy = inline_policy(embedded)  # type: ignore[arg-type]
    search = policy[f"/{SERVICE_NAME}/SearchNeurons"]
    assert search(pb.SearchNeuronsRequest(vector=pb.Vector(values=[1.0, 0.0])))
    assert search(pb.SearchNeuronsRequest(neuron=pb.NeuronRef(model_id="m")))
    assert not search(pb.SearchNeuronsRequest(text="stripes"))  # CLIP runs: the pool
    assert not search(pb.SearchNeuronsRequest(image=b"\x89PNG"))
    assert not search(pb.SearchNeuronsRequest(vector=pb.Vector(values=[1.0]), per_model=1))
    assert not search(
        pb.SearchNeuronsRequest(vector=pb.Vector(values=[1.0]), include_thumbnails=True)
    )
    assert f"/{SERVICE_NAME}/CompareModels" not in policy


def test_health_watch_sees_the_server_stop(indexed_home, tiny_embedder) -> None:
    """Watch is a blocking stream of the synchronous health servicer, bridged: it gets the
    NOT_SERVING of a graceful stop and ends when the server is gone."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from neuronatlas.core.queries import Atlas
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.service.server import build_server

    store = indexed_home.parent / "watch-store"
    shutil.copytree(indexed_home / "store", store)
    atlas = Atlas(EdgeStore(store), tiny_embedder, backend="edge")
    srv = build_server(atlas, "127.0.0.1:0", close_atlas=True, home=indexed_home).start()
    with grpc.insecure_channel(srv.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=""), timeout=30
        )
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=srv.stop, kwargs={"grace": 0.5})
        stopper.start()
        seen = []
        try:
            for update in watch:
                seen.append(update.status)
        except grpc.RpcError:
            pass  # the server went away under the stream
        stopper.join(30)
    assert not stopper.is_alive()
    assert seen[:1] == [health_pb2.HealthCheckResponse.NOT_SERVING]


def test_a_stream_cancelled_after_its_pool_stopped_ends_quietly(caplog) -> None:
    """The generator's clean-up goes to the pool; when the server's pool no longer takes work
    (the server is stopping), the cancel still ends the call without an error."""
    pool = futures.ThreadPoolExecutor(2, thread_name_prefix="t-stop")
    methods = Methods()
    server = bridge.on_loop(lambda: aio.server(interceptors=[bridge.Bridge([], pool)]))
    server.add_generic_rpc_handlers((methods,))
    port = server.add_insecure_port("127.0.0.1:0")
    bridge.run(server.start())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_stream("/t.T/Count")(b"100000", timeout=30)
            assert next(call) == b"0"
            pool.shutdown(wait=False)
            call.cancel()
            time.sleep(0.5)
    finally:
        bridge.run(server.stop(1.0))
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert not errors, [r.getMessage() for r in errors]


def test_calls_after_the_pool_stopped_are_unavailable() -> None:
    """A call for the pool once it takes no more work (a stopping server past its grace) is
    answered UNAVAILABLE, unary and streaming alike, never an internal error."""
    pool = futures.ThreadPoolExecutor(1, thread_name_prefix="t-gone")
    pool.shutdown()
    server = bridge.on_loop(lambda: aio.server(interceptors=[bridge.Bridge([], pool)]))
    server.add_generic_rpc_handlers((Methods(),))
    port = server.add_insecure_port("127.0.0.1:0")
    bridge.run(server.start())
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.RpcError) as unary:
                channel.unary_unary("/t.T/Slow")(b"", timeout=10)
            with pytest.raises(grpc.RpcError) as stream:
                list(channel.unary_stream("/t.T/Count")(b"3", timeout=10))
    finally:
        bridge.run(server.stop(1.0))
    for e in (unary.value, stream.value):
        assert e.code() == grpc.StatusCode.UNAVAILABLE and "stopping" in e.details()
