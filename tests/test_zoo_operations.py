"""Indexing as long-running operations (ZooService IndexModel and the operation calls) against
a real server on loopback with its in-process index worker, real CIFAR-10 ResNets on a small
probe subset and the tiny random CLIP: queries keep being answered while a model is indexed,
progress shows in the operation, cancel keeps the previous generation serving, jobs run in
order, bad input gets the status it deserves. The crash and take-over cases are in
``test_zoo_recovery.py``."""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc
import numpy as np
import pytest
from helpers import (
    ADMIN_TOKEN,
    READ_TOKEN,
    WORKER_TOKEN,
    WRITE_TOKEN,
    call_fails,
    slow_source,
    wait_operation,
    write_vocab,
)

from neuronatlas.core.errors import InvalidArgument, NotFound
from neuronatlas.core.jobs import JobState, Operation
from neuronatlas.core.queries import TextQuery, VectorQuery
from neuronatlas.core.records import ModelStatus
from neuronatlas.core.store.base import SearchFilter

pytestmark = pytest.mark.integration

N_PROBE = 150
PROBE = "cifar150"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, cifar_dir, cifar_models, concepts_dir, tiny_embedder):
    """A server (one in-process index worker, 0.3 s heartbeats) over an empty Edge store whose
    home has the probe set ``cifar150`` and an 80-label vocabulary; resnet20 indexed through
    IndexModel. Yields (server, client with a write token, home, vocab path)."""
    from neuronatlas.core.queries import Atlas
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.probes import register_probe_set
    from neuronatlas.service.auth import TokenSet
    from neuronatlas.service.client import Client
    from neuronatlas.service.server import build_server

    home = tmp_path_factory.mktemp("zoo-ops")
    register_probe_set(home, PROBE, cifar_dir, N_PROBE)
    vocab = write_vocab(home / "broden80.txt", concepts_dir)
    atlas = Atlas(EdgeStore(home / "store"), tiny_embedder, backend="edge", home=home)
    tokens = TokenSet(
        {READ_TOKEN: "read", ADMIN_TOKEN: "admin", WRITE_TOKEN: "write", WORKER_TOKEN: "worker"}
    )
    server = build_server(
        atlas,
        "127.0.0.1:0",
        tokens=tokens,
        close_atlas=True,
        index_workers=1,
        heartbeat_s=0.3,
        allow_python_sources=True,  # the slow test factory
    ).start()
    client = Client(server.address, token=WRITE_TOKEN, timeout=30)
    op = client.index_model(
        "r20",
        PROBE,
        source={"kind": "cifar_resnet", "depth": 20, "weights": str(cifar_models[20])},
        vocabularies={"broden": str(vocab)},
        k=8,
        options={"batch_size": 50},
    )
    op = wait(client, op)
    assert op.state is JobState.SUCCEEDED, op.error
    yield server, client, home, vocab
    client.close()
    server.stop(grace=1.0)


def wait(client, op: Operation, limit: float = 120.0) -> Operation:
    return wait_operation(client, op, limit)


def until(client, op: Operation, cond, limit: float = 60.0, every: float = 0.05) -> Operation:
    """Poll GetOperation until ``cond(op)`` (or the operation ends)."""
    deadline = time.monotonic() + limit
    while not cond(op) and not op.done:
        assert time.monotonic() < deadline, f"condition never met: {op}"
        time.sleep(every)
        op = client.get_operation(op.name)
    return op


def in_forward(op: Operation) -> bool:
    return op.stage == "forward" and op.images_done > 0


# ------------------------------------------------------------------------------------------------
def test_queries_keep_answering_while_a_model_is_indexed(zoo, cifar_models):
    server, client, _, vocab = zoo
    from neuronatlas.service.client import Client

    reader = Client(server.address, token=READ_TOKEN, timeout=30)
    probe_vec = reader.get_neuron("r20", "layer3.2.conv2", 0, with_vector=True).vector
    stop, errors, answered = threading.Event(), [], [0]
    seen: list[tuple[float, set[str]]] = []  # (when a search ended, the models it returned)

    def search() -> None:
        while not stop.is_set():
            try:
                for q in (VectorQuery(probe_vec), TextQuery("striped texture")):
                    for per_model in (0, 1):
                        page = reader.search_neurons(q, top_k=50, per_model=per_model)
                        assert page.items
                        seen.append((time.time(), {h.record.model_id for h in page.items}))
                        answered[0] += 1
            except Exception as e:  # noqa: BLE001 - every failure is a test failure
                errors.append(repr(e))

    searcher = threading.Thread(target=search)
    searcher.start()
    try:
        request: dict[str, Any] = {
            "source": {"kind": "cifar_resnet", "depth": 32, "weights": str(cifar_models[32])},
            "vocabularies": {"broden": str(vocab)},
            "k": 8,
            "options": {"batch_size": 25, "checkpoint_every": 2},
            "request_id": "index-r32-1",
        }
        op = client.index_model("r32", PROBE, **request)
        assert op.state in (JobState.QUEUED, JobState.RUNNING) and op.model_id == "r32"
        # a retry with the same request_id: the same operation
        again = client.index_model("r32", PROBE, **request)
        assert again.name == op.name
        snapshots = []
        while not op.done:
            op = client.get_operation(op.name)
            snapshots.append(op)
            time.sleep(0.05)
    finally:
        stop.set()
        searcher.join()
        reader.close()
    assert errors == [] and answered[0] > 0
    flip = op.model.indexed_at  # set just before the flip: searches that ended earlier
    before = [models for t, models in seen if t < flip]  # must not see the half-written r32
    assert before and all(models == {"r20"} for models in before)
    assert op.state is JobState.SUCCEEDED, op.error
    assert op.model is not None and op.model.model_id == "r32"
    assert op.model.status == ModelStatus.INDEXED and op.model.neuron_count > 0
    assert op.stage == "done" and op.attempts == 1 and op.elapsed_s > 0
    forward = [s for s in snapshots if s.stage == "forward"]
    assert forward and max(s.images_done for s in forward) > 0
    assert {s.images_total for s in forward} == {N_PROBE}
    assert any(s.layers for s in snapshots) and any(s.worker == "local:0" for s in snapshots)
    stages = [s.stage for s in snapshots]
    assert stages.index("forward") < max(i for i, s in enumerate(stages) if s == "writing")
    # afterwards r32 is served
    hits = client.search_neurons(
        VectorQuery(probe_vec), SearchFilter(model_ids=("r32",)), top_k=3
    ).items
    assert hits and {h.record.model_id for h in hits} == {"r32"}
    listed = client.list_operations(model_id="r32").items
    assert [o.name for o in listed] == [op.name] and listed[0].model is not None


def test_cancel_keeps_the_previous_generation_serving(zoo, cifar_models, monkeypatch):
    client = zoo[1]
    weights = cifar_models[20]
    first = wait(
        client,
        client.index_model(
            "slow", PROBE, source=slow_source(weights), layers=["layer3.2.conv2"], k=5
        ),
    )
    assert first.state is JobState.SUCCEEDED, first.error
    live = first.model.generation
    vec = client.get_neuron("slow", "layer3.2.conv2", 3, with_vector=True).vector

    monkeypatch.setenv("SLOW_RESNET_DELAY", "0.2")  # 15 batches of 10: ~3 s of forward pass
    op = client.index_model(
        "slow", PROBE, layers=["layer3.2.conv2"], k=6, options={"batch_size": 10}
    )
    op = until(client, op, in_forward)
    asked = client.cancel_operation(op.name)
    assert asked.done or asked.cancel_requested
    op = wait(client, op)
    assert op.state is JobState.CANCELLED and op.error["code"] == "CANCELLED"
    assert op.images_done < N_PROBE  # it stopped in the middle of the forward pass
    entry = client.get_model("slow")
    assert entry.status == ModelStatus.INDEXED and entry.generation == live
    assert entry.status_reason == "re-index cancelled"
    hits = client.search_neurons(VectorQuery(vec), SearchFilter(model_ids=("slow",)), top_k=1)
    assert hits.items[0].record.key == "slow/layer3.2.conv2/3"
    assert client.cancel_operation(op.name).state is JobState.CANCELLED  # idempotent

    # a model never indexed goes back to registered, reason "cancelled"
    op = client.index_model(
        "slow-new",
        PROBE,
        source=slow_source(weights),
        layers=["layer3.2.conv2"],
        k=5,
        options={"batch_size": 10},
    )
    op = wait(client, client.cancel_operation(until(client, op, in_forward).name))
    assert op.state is JobState.CANCELLED
    entry = client.get_model("slow-new")
    assert entry.status == ModelStatus.REGISTERED and entry.status_reason == "cancelled"


def test_queued_jobs_run_in_order(zoo):
    server, client, _, _ = zoo
    a = client.index_model("r20", PROBE, layers=["layer3.2.conv2"], k=4)
    b = client.index_model("slow", PROBE, layers=["layer3.2.conv2"], k=7)
    c = client.index_model("r20", PROBE, layers=["layer3.2.conv1"], k=4)
    assert b.state is JobState.QUEUED  # one worker: b waits for a
    ops = [wait(client, o) for o in (a, b, c)]
    assert [o.state for o in ops] == [JobState.SUCCEEDED] * 3, [o.error for o in ops]
    jobs = [server.zoo.queue.get(o.job_id) for o in ops]
    assert jobs[0].finished_at <= jobs[1].started_at <= jobs[1].finished_at <= jobs[2].started_at
    listed = [o.name for o in client.list_operations(states=["succeeded"], limit=500).items]
    assert [listed.index(o.name) for o in ops] == sorted(listed.index(o.name) for o in ops)
    assert client.get_model("r20").layers[0].name == "layer3.2.conv1"  # the last one won


def test_bad_input(zoo):
    from neuronatlas.v1 import zoo_pb2 as zpb
    from neuronatlas.v1 import zoo_pb2_grpc

    server, client = zoo[:2]
    channel = grpc.insecure_channel(server.address)
    stub = zoo_pb2_grpc.ZooServiceStub(channel)
    write = (("authorization", f"Bearer {WRITE_TOKEN}"),)
    read = (("authorization", f"Bearer {READ_TOKEN}"),)
    worker = (("authorization", f"Bearer {WORKER_TOKEN}"),)
    INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    try:
        # operation names
        unknown = zpb.GetOperationRequest(name="operations/" + "0" * 32)
        assert call_fails(stub.GetOperation, unknown, read)[0] == NOT_FOUND
        for bad in ("", "bogus", "operations/", "operations/a/b", "operations/" + "x" * 65):
            code, fields, _ = call_fails(stub.GetOperation, zpb.GetOperationRequest(name=bad), read)
            assert (code, fields) == (INVALID, ["name"]), bad
        for method, req in (
            (stub.CancelOperation, zpb.CancelOperationRequest(name="nope")),
            (stub.WaitOperation, zpb.WaitOperationRequest(name="nope")),
        ):
            assert call_fails(method, req, write)[0] == INVALID
        neg = zpb.WaitOperationRequest(name="operations/" + "0" * 32)
        neg.timeout.FromSeconds(-1)
        assert call_fails(stub.WaitOperation, neg, read)[:2] == (INVALID, ["timeout"])
        bad_state = zpb.ListOperationsRequest(states=[99])
        assert call_fails(stub.ListOperations, bad_state, read)[:2] == (INVALID, ["states"])
        # IndexModel
        ok = {"model_id": "r20", "probe_set": PROBE, "k": 4}
        for change, want, field in (
            ({"model_id": "nosuch"}, NOT_FOUND, None),
            ({"model_id": "bad/id"}, INVALID, "model_id"),
            ({"probe_set": "nosuch"}, NOT_FOUND, None),
            ({"probe_set": ""}, INVALID, "probe_set"),
            ({"k": -1}, INVALID, "k"),
            ({"k": N_PROBE + 1}, INVALID, "k"),
            ({"layers": [""]}, INVALID, "layers"),
            ({"vocabularies": {"v": "/nonexistent/vocab.txt"}}, NOT_FOUND, None),
            ({"vocabularies": {"v": "artifact:" + "0" * 64}}, NOT_FOUND, None),
        ):
            req = zpb.IndexModelRequest(**{**ok, **change})
            code, fields, _ = call_fails(stub.IndexModel, req, write)
            assert code == want and (field is None or fields == [field]), change
        bad_opt = zpb.IndexModelRequest(**ok)
        bad_opt.options.update({"batch_sise": 3})
        assert call_fails(stub.IndexModel, bad_opt, write)[:2] == (
            INVALID,
            ["options.batch_sise"],
        )
        bad_opt = zpb.IndexModelRequest(**ok)
        bad_opt.options.update({"samples": "median"})
        assert call_fails(stub.IndexModel, bad_opt, write)[0] == INVALID
        src = zpb.IndexModelRequest(**{**ok, "model_id": "new"})
        src.source.update({"kind": "cifar_resnet", "depth": 20, "weigths": "x"})
        assert call_fails(stub.IndexModel, src, write)[0] == INVALID
        # the same request_id for another request
        first = zpb.IndexModelRequest(**ok, request_id="rid-1", layers=["layer3.2.conv2"])
        op = stub.IndexModel(first, metadata=write, timeout=20).operation
        other = zpb.IndexModelRequest(**{**ok, "k": 5}, request_id="rid-1")
        assert call_fails(stub.IndexModel, other, write)[:2] == (INVALID, ["request_id"])
        # scopes: reads may look, not write; workers may not queue; writers may not claim
        assert call_fails(stub.IndexModel, zpb.IndexModelRequest(**ok), read)[0] == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        assert call_fails(stub.CancelOperation, zpb.CancelOperationRequest(name=op.name), read)[
            0
        ] == (grpc.StatusCode.PERMISSION_DENIED)
        assert stub.GetOperation(zpb.GetOperationRequest(name=op.name), metadata=read).operation
        assert call_fails(stub.ClaimJob, zpb.ClaimJobRequest(worker="w"), write)[0] == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        # an embedded store runs its own jobs: remote workers are refused
        code = call_fails(stub.ClaimJob, zpb.ClaimJobRequest(worker="w"), worker)[0]
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert call_fails(stub.ClaimJob, zpb.ClaimJobRequest(worker=""), worker)[:2] == (
            INVALID,
            ["worker"],
        )
        wait(client, client.get_operation(op.name))
    finally:
        channel.close()
    # the typed client raises the core errors
    with pytest.raises(NotFound):
        client.get_operation("0" * 32)
    with pytest.raises(InvalidArgument):
        client.get_operation("operations/a/b")
    with pytest.raises(NotFound):
        client.index_model("nosuch", PROBE)
    assert np.isfinite(client.get_operation(op.name).elapsed_s)


def test_cli_index_server_and_jobs(zoo, tmp_path, monkeypatch):
    """``index --server`` follows the operation to the model's summary; ``--no-wait`` prints
    the operation; ``jobs list|get|wait|cancel`` on the server and on a local store's queue."""
    from click.testing import CliRunner

    from neuronatlas.cli import cli
    from neuronatlas.core.jobs import JobQueue
    from neuronatlas.core.store.edge import EdgeStore

    server, _, _, vocab = zoo
    monkeypatch.setenv("NEURONATLAS_HOME", str(tmp_path / "cli-home"))
    run = CliRunner().invoke
    conn = ["--server", server.address, "--token", WRITE_TOKEN]
    res = run(
        cli,
        ["index", "r20", "--probe", PROBE, "--layers", "layer3.2.conv2", "--k", "4",
         "--vocab", f"broden={vocab}", "--no-progress", *conn],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "r20: indexed 64 neurons in 1 layers" in res.output
    assert "uploaded broden80.txt" in res.output  # a local vocabulary goes up as an artifact
    res = run(cli, ["index", "r20", "--probe", PROBE, "--k", "5", "--no-wait", *conn])
    assert res.exit_code == 0, res.output
    name = res.output.strip().splitlines()[-1]
    assert name.startswith("operations/")
    res = run(cli, ["jobs", "wait", name, "--no-progress", *conn])
    assert res.exit_code == 0 and f"{name}: succeeded" in res.output, res.output
    res = run(cli, ["jobs", "list", "--model", "r20", "--state", "succeeded", *conn])
    assert res.exit_code == 0 and name in res.output and "succeeded" in res.output
    res = run(cli, ["jobs", "get", name, "--json", *conn])
    assert res.exit_code == 0 and '"state": "succeeded"' in res.output, res.output
    res = run(cli, ["jobs", "cancel", name, *conn])  # done: unchanged
    assert res.exit_code == 0 and "succeeded" in res.output
    res = run(cli, ["index", "r20", "--probe", str(tmp_path), *conn])
    assert res.exit_code != 0 and "registered on the server" in res.output
    # a failed operation: exit status 1 and the error
    res = run(cli, ["index", "r20", "--probe", PROBE, "--layers", "nosuch*", *conn])
    assert res.exit_code == 1 and "failed" in res.output and "INVALID_ARGUMENT" in res.output

    # without --server: the queue in the local store
    local = tmp_path / "local-store"
    with EdgeStore(local) as store:
        job = JobQueue(store).submit("index", "m1", {"model_id": "m1", "probe_set": "p"})
    base = ["--store", str(local), "jobs"]
    res = run(cli, [*base, "list"])
    assert (
        res.exit_code == 0 and f"operations/{job.job_id}" in res.output and "queued" in res.output
    )
    res = run(cli, [*base, "cancel", job.job_id])
    assert res.exit_code == 0 and "cancelled" in res.output, res.output
    res = run(cli, [*base, "get", f"operations/{job.job_id}"])
    assert "cancelled" in res.output
