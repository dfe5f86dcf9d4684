"""Operations of a running server: Prometheus metrics that move with real calls, request ids in
response metadata and log lines (text / JSON), optional tracing, and a consistent backup
through the admin RPC while queries keep being answered."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import ADMIN_TOKEN, ALPHA, AUTH, BETA, INFO, READ_TOKEN, FakeEmbedder, add_model

from neuronatlas.core import queries as Q
from neuronatlas.core.errors import NotFound, PermissionDenied
from neuronatlas.core.jobs import JobQueue
from neuronatlas.core.store import transfer as T
from neuronatlas.core.store.edge import EdgeStore
from neuronatlas.service import logs
from neuronatlas.service.admin import download_backup
from neuronatlas.service.auth import TokenSet
from neuronatlas.service.client import Client
from neuronatlas.service.server import build_server
from neuronatlas.v1 import neuronatlas_pb2 as pb
from neuronatlas.v1 import neuronatlas_pb2_grpc as pb_grpc

BIG = {"conv1": 300, "layer1.0.conv2": 300}  # enough points for a backup of many members
ADMIN = (("authorization", f"Bearer {ADMIN_TOKEN}"),)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fill(store: EdgeStore) -> None:
    store.bind_embedder(INFO)
    add_model(store, "alpha", ALPHA)
    add_model(store, "beta", BETA, seed=1)
    add_model(store, "big", BIG, seed=2)
    queue = JobQueue(store)
    queue.submit("index", "alpha", {"probe_set": "p"}, request_id="r1")
    queue.submit("index", "beta", {"probe_set": "p"}, request_id="r2")
    job = queue.claim("test-runner")
    assert job is not None
    queue.succeed(job.job_id, "test-runner", {"model_id": job.model_id})


@pytest.fixture()
def ops_server(tmp_path: Path):
    """A server with metrics on a free port over a small synthetic store (FakeEmbedder: text
    queries, no CLIP), read and admin tokens."""
    store = EdgeStore(tmp_path / "store")
    _fill(store)
    atlas = Q.Atlas(store, FakeEmbedder(), backend="edge", home=tmp_path / "home")
    tokens = TokenSet({READ_TOKEN: "read", ADMIN_TOKEN: "admin"})
    srv = build_server(
        atlas, "127.0.0.1:0", tokens=tokens, close_atlas=True, metrics_port=_free_port()
    ).start()
    yield srv
    srv.stop(grace=1.0)


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _handled(samples, method: str, code: str, service="neuronatlas.v1.NeuronAtlasService"):
    key = (
        "neuronatlas_grpc_server_handled_total",
        (("grpc_code", code), ("grpc_method", method), ("grpc_service", service)),
    )
    return samples.get(key, 0.0)


# -- metrics -------------------------------------------------------------------------------------
def test_metrics_endpoint_counts_real_calls(ops_server) -> None:
    port = ops_server.metrics_port
    before = _scrape(port)
    assert _handled(before, "SearchNeurons", "OK") == 0
    with Client(ops_server.address, token=READ_TOKEN, timeout=20) as c:
        for _ in range(2):  # the second text is answered from the text cache
            assert c.search_neurons(Q.TextQuery("dog"), top_k=3).items
        with pytest.raises(NotFound):
            c.get_neuron("alpha", "conv1", 999)
        c.list_models()
    channel = grpc.insecure_channel(ops_server.address)
    stub = pb_grpc.NeuronAtlasServiceStub(channel)
    with pytest.raises(grpc.RpcError) as no_token:
        stub.GetStats(pb.GetStatsRequest(), timeout=10)
    assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
    unknown = channel.unary_unary("/made.up.Service/Nothing")
    with pytest.raises(grpc.RpcError):
        unknown(b"", timeout=10, metadata=AUTH)
    channel.close()

    s = _scrape(port)
    assert _handled(s, "SearchNeurons", "OK") == 2
    assert _handled(s, "GetNeuron", "NOT_FOUND") == 1
    assert _handled(s, "ListModels", "OK") == 1
    assert _handled(s, "GetStats", "UNAUTHENTICATED") == 1
    assert _handled(s, "unknown", "UNIMPLEMENTED", service="unknown") == 1
    latency = (
        "neuronatlas_grpc_server_handling_seconds_count",
        (("grpc_method", "SearchNeurons"), ("grpc_service", "neuronatlas.v1.NeuronAtlasService")),
    )
    assert s[latency] == 2
    cache = (("cache", "text_embeddings"),)
    assert s[("neuronatlas_cache_hits_total", cache)] == 1
    assert s[("neuronatlas_cache_misses_total", cache)] == 1
    assert s[("neuronatlas_embedder_calls_total", (("kind", "text"),))] == 1
    assert s[("neuronatlas_embedder_inputs_total", (("kind", "text"),))] == 1
    points = "neuronatlas_store_model_points"
    assert s[(points, (("model_id", "alpha"), ("status", "indexed")))] == 12
    assert s[(points, (("model_id", "big"), ("status", "indexed")))] == 600
    assert s[("neuronatlas_store_models", (("status", "indexed"),))] == 3
    assert s[("neuronatlas_store_points", ())] == 617
    assert s[("neuronatlas_store_up", ())] == 1
    assert s[("neuronatlas_jobs", (("state", "queued"),))] == 1
    assert s[("neuronatlas_jobs", (("state", "succeeded"),))] == 1
    run = (("kind", "index"), ("state", "succeeded"))
    assert s[("neuronatlas_job_duration_seconds_count", run)] == 1
    assert s[("neuronatlas_job_wait_seconds_count", (("kind", "index"),))] == 1
    assert s[("neuronatlas_grpc_server_in_flight", ())] == 0
    assert any(name == "neuronatlas_build_info" for name, _ in s)


def test_metrics_port_in_use_is_refused_in_one_line(tmp_path: Path) -> None:
    from neuronatlas.core.errors import InvalidArgument

    store = EdgeStore(tmp_path / "store")
    atlas = Q.Atlas(store, None)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InvalidArgument, match=f"port {port} is already in use"):
            build_server(atlas, "127.0.0.1:0", metrics_port=port)
    store.close()


# -- request ids, logs, tracing --------------------------------------------------------------------
def _rid(metadata) -> str:
    return dict(metadata or ())["x-request-id"]


def test_request_id_is_returned_and_a_client_id_is_kept(ops_server) -> None:
    channel = grpc.insecure_channel(ops_server.address)
    stub = pb_grpc.NeuronAtlasServiceStub(channel)
    _, call = stub.GetStats.with_call(pb.GetStatsRequest(), metadata=AUTH, timeout=10)
    generated = _rid(call.initial_metadata())
    assert len(generated) == 32 and int(generated, 16) >= 0
    mine = (*AUTH, ("x-request-id", "client-42.a:b_c"))
    _, call = stub.GetStats.with_call(pb.GetStatsRequest(), metadata=mine, timeout=10)
    assert _rid(call.initial_metadata()) == "client-42.a:b_c"
    odd = (*AUTH, ("x-request-id", "spaces are not ok"))
    _, call = stub.GetStats.with_call(pb.GetStatsRequest(), metadata=odd, timeout=10)
    assert _rid(call.initial_metadata()) != "spaces are not ok"
    with pytest.raises(grpc.RpcError) as failed:  # refusals carry it too
        stub.GetModel(pb.GetModelRequest(model_id="nope"), metadata=mine, timeout=10)
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND
    assert _rid(failed.value.initial_metadata()) == "client-42.a:b_c"
    channel.close()


class _Lines(logging.Handler):
    def __init__(self, formatter: logging.Formatter):
        super().__init__(logging.DEBUG)
        self.setFormatter(formatter)
        self.addFilter(logs.RequestIdFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture()
def log_lines():
    """Lines the 'neuronatlas' loggers write while a test runs: (json, text)."""
    logger = logging.getLogger("neuronatlas")
    as_json, as_text = _Lines(logs.JsonFormatter()), _Lines(logs.TextFormatter())
    old = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(as_json)
    logger.addHandler(as_text)
    yield as_json.lines, as_text.lines
    logger.removeHandler(as_json)
    logger.removeHandler(as_text)
    logger.setLevel(old)


def test_access_log_lines_carry_the_request_id(ops_server, log_lines) -> None:
    as_json, as_text = log_lines
    channel = grpc.insecure_channel(ops_server.address)
    stub = pb_grpc.NeuronAtlasServiceStub(channel)
    mine = (*AUTH, ("x-request-id", "log-test-1"))
    stub.GetStats(pb.GetStatsRequest(), metadata=mine, timeout=10)
    channel.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not any("log-test-1" in x for x in as_json):
        time.sleep(0.05)
    records = [json.loads(x) for x in as_json]
    (access,) = [r for r in records if r.get("request_id") == "log-test-1"]
    assert access["logger"] == "neuronatlas.access" and access["level"] == "INFO"
    assert access["grpc_method"] == "GetStats" and access["grpc_code"] == "OK"
    assert access["duration_ms"] >= 0 and access["ts"].endswith("Z")
    assert any("[log-test-1]" in x and "GetStats OK" in x for x in as_text)


def test_configure_logging_formats(capsys) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        logs.configure_logging("json")
        token = logs.request_id.set("rid-9")
        logging.getLogger("neuronatlas.test").info("hello %s", "there", extra={"n": 3})
        logs.request_id.reset(token)
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
        assert line["msg"] == "hello there" and line["request_id"] == "rid-9" and line["n"] == 3
        with pytest.raises(Exception, match="log format"):
            logs.configure_logging("xml")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in handlers:
            root.addHandler(h)
        root.setLevel(level)


def test_tracing_is_optional(ops_server, monkeypatch) -> None:
    """Without opentelemetry installed, spans are no-ops; with a tracer, every call opens a
    server span carrying the method, the request id and the status code."""
    with logs.span("/a.B/C", "x") as s:
        assert s is None or logs.tracing_enabled()

    class Span:
        def __init__(self, name, attributes):
            self.name, self.attributes = name, dict(attributes)

        def set_attribute(self, key, value):
            self.attributes[key] = value

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    spans: list[Span] = []

    class Tracer:
        def start_as_current_span(self, name, kind=None, attributes=None):
            spans.append(Span(name, attributes or {}))
            return spans[-1]

    monkeypatch.setattr(logs, "_TRACER", Tracer())
    channel = grpc.insecure_channel(ops_server.address)
    stub = pb_grpc.NeuronAtlasServiceStub(channel)
    stub.GetStats(pb.GetStatsRequest(), metadata=(*AUTH, ("x-request-id", "t-1")), timeout=10)
    channel.close()
    (span,) = [s for s in spans if s.attributes.get("neuronatlas.request_id") == "t-1"]
    assert span.name == "GetStats"
    assert span.attributes["rpc.service"] == "neuronatlas.v1.NeuronAtlasService"
    assert span.attributes["rpc.grpc.status_code"] == "OK"


# -- backup through the running server -------------------------------------------------------------
class _Queries(threading.Thread):
    """Queries the server in a loop until stopped; counts answers and errors, with times."""

    def __init__(self, address: str, text: str | None = None):
        super().__init__(daemon=True)
        self.client = Client(address, token=READ_TOKEN, timeout=30)
        self.text = text
        self.stop = threading.Event()
        self.done: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        rng = np.random.default_rng(0)
        while not self.stop.is_set():
            try:
                if self.text:
                    q: Q.Query = Q.TextQuery(self.text)
                else:
                    dim = self.client.stats().embedder.dim
                    q = Q.VectorQuery(rng.normal(size=dim).astype(np.float32))
                assert self.client.search_neurons(q, top_k=5).items
                assert self.client.list_models().items
                self.done.append(time.monotonic())
            except Exception as e:  # noqa: BLE001 - counted: the test asserts there are none
                self.errors.append(repr(e))
        self.client.close()


def _backup_while_querying(address: str, out: Path, text: str | None = None) -> tuple:
    queries = _Queries(address, text)
    queries.start()
    while not queries.done and not queries.errors:
        time.sleep(0.01)
    channel = grpc.insecure_channel(address)
    t0 = time.monotonic()
    manifest = download_backup(channel, out, metadata=ADMIN, batch_size=8)
    t1 = time.monotonic()
    channel.close()
    time.sleep(0.1)
    queries.stop.set()
    queries.join(30)
    during = sum(1 for t in queries.done if t0 <= t <= t1)
    return manifest, queries, during


def test_backup_through_the_server_while_queries_run(ops_server, tmp_path: Path) -> None:
    out = tmp_path / "live.tar"
    manifest, queries, during = _backup_while_querying(ops_server.address, out)
    assert queries.errors == [], queries.errors[:3]
    assert during >= 1, "no query was answered while the backup ran"
    assert [m["model_id"] for m in manifest["models"]] == ["alpha", "beta", "big"]
    target, _ = T.restore(EdgeStore(tmp_path / "restored"), out)
    assert target.verify().ok
    source = T.export_store(ops_server.atlas.store)
    assert T.compare_exports(source, T.export_store(target)) == []  # jobs included
    target.close()


def test_backup_needs_the_admin_scope_and_the_cli_uses_it(ops_server, tmp_path: Path) -> None:
    channel = grpc.insecure_channel(ops_server.address)
    with pytest.raises(PermissionDenied):
        download_backup(channel, tmp_path / "x.tar", metadata=AUTH)
    channel.close()
    assert not (tmp_path / "x.tar").exists()

    from click.testing import CliRunner

    from neuronatlas.cli import cli

    out = tmp_path / "cli.tar"
    args = ["backup", str(out), "--server", ops_server.address, "--token", ADMIN_TOKEN, "--json"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["models"] == ["alpha", "beta", "big"] and summary["neuron_points"] == 617


def test_backup_refuses_bad_requests_with_details(ops_server) -> None:
    from helpers import rpc_failure

    from neuronatlas.v1 import admin_pb2, admin_pb2_grpc

    channel = grpc.insecure_channel(ops_server.address)
    stub = admin_pb2_grpc.AdminServiceStub(channel)
    for size in (-1, 8193):
        with pytest.raises(grpc.RpcError) as e:
            list(stub.BackupStore(admin_pb2.BackupStoreRequest(batch_size=size), metadata=ADMIN))
        code, fields, _ = rpc_failure(e.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == ["batch_size"]
    raw = channel.unary_stream("/neuronatlas.v1.AdminService/BackupStore")
    with pytest.raises(grpc.RpcError) as e:
        list(raw(b"\xff\xff\xff", metadata=ADMIN, timeout=10))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        list(stub.BackupStore(admin_pb2.BackupStoreRequest(), timeout=10))
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()


@pytest.mark.integration
def test_backup_of_a_real_index_while_text_queries_run(
    indexed_home: Path, tiny_embedder, tmp_path: Path
) -> None:
    """The store the real indexer filled, served with the tiny CLIP: a text-query thread sees
    no error during the backup; the restored store verifies and exports identically."""
    store_dir = tmp_path / "store"
    shutil.copytree(indexed_home / "store", store_dir, ignore=shutil.ignore_patterns(".lock"))
    atlas = Q.Atlas(EdgeStore(store_dir), tiny_embedder, backend="edge", home=tmp_path / "h")
    tokens = TokenSet({READ_TOKEN: "read", ADMIN_TOKEN: "admin"})
    port = _free_port()
    srv = build_server(atlas, "127.0.0.1:0", tokens=tokens, close_atlas=True, metrics_port=port)
    srv.start()
    try:
        out = tmp_path / "real.tar"
        manifest, queries, during = _backup_while_querying(srv.address, out, "striped texture")
        assert queries.errors == [], queries.errors[:3]
        assert during >= 1
        assert {m["model_id"] for m in manifest["models"]} == {"resnet20", "resnet32"}
        s = _scrape(port)
        assert _handled(s, "SearchNeurons", "OK") == len(queries.done)
        assert _handled(s, "BackupStore", "OK", service="neuronatlas.v1.AdminService") == 1
        source = T.export_store(atlas.store)
    finally:
        srv.stop(grace=1.0)
    target, result = T.restore(EdgeStore(tmp_path / "restored"), out)
    assert result.neurons == manifest["neuron_points"]
    assert target.verify().ok
    assert T.compare_exports(source, T.export_store(target)) == []
    target.close()


@pytest.mark.slow
def test_serve_command_with_metrics_port_and_json_logs(home: Path) -> None:
    """`neuronatlas serve --metrics-port N --log-format json` in its own process: the endpoint
    counts a call, and the call's access-log line is JSON with the client's request id."""
    import os
    import signal
    import subprocess
    import sys

    port = _free_port()
    cmd = [sys.executable, "-m", "neuronatlas.cli", "serve", "--address", "127.0.0.1:0"]
    cmd += ["--no-embedder", "--metrics-port", str(port), "--log-format", "json"]
    proc = subprocess.Popen(
        cmd, stderr=subprocess.PIPE, text=True, env={**os.environ, "NEURONATLAS_TOKENS": ""}
    )
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("neuronatlas serving on "):
                address = line.split()[-1]
                break
        else:
            pytest.fail("".join(lines))
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.NeuronAtlasServiceStub(channel)
        rid = (("x-request-id", "serve-cli-1"),)
        _, call = stub.GetStats.with_call(pb.GetStatsRequest(), metadata=rid, timeout=30)
        assert _rid(call.initial_metadata()) == "serve-cli-1"
        channel.close()
        s = _scrape(port)
        assert _handled(s, "GetStats", "OK") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[1]
    records = [json.loads(x) for x in (lines + out.splitlines()) if x.startswith("{")]
    assert any(
        r.get("request_id") == "serve-cli-1" and r.get("grpc_method") == "GetStats" for r in records
    ), records
