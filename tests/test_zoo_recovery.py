"""Indexing operations survive their runners: a server killed with SIGKILL in the middle of a
job resumes it when it comes back (and the store equals that of an uninterrupted run), and a
remote worker that dies mid-job loses its lease to another worker, which finishes the job.
Real CIFAR-10 ResNets, a small probe subset, the tiny random CLIP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    ADMIN_TOKEN,
    READ_TOKEN,
    TINY_EMBEDDER,
    WORKER_TOKEN,
    WRITE_TOKEN,
    assert_same_model,
    model_snapshot,
    slow_source,
    wait_operation,
    write_vocab,
)

from neuronatlas.core.jobs import JobState, Operation
from neuronatlas.core.queries import VectorQuery
from neuronatlas.core.records import ModelStatus
from neuronatlas.core.store.base import SearchFilter

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_PROBE = 200
PROBE = "cifar200"
TESTS = Path(__file__).resolve().parent


def index_request(weights: Path, vocab: Path) -> dict:
    return {
        "model_id": "slow",
        "probe_set": PROBE,
        "source": slow_source(weights),
        "vocabularies": {"broden": str(vocab)},
        "k": 10,
        "options": {"batch_size": 20, "checkpoint_every": 1},
    }


def wait(client, op: Operation, limit: float = 180.0) -> Operation:
    return wait_operation(client, op, limit)


@pytest.fixture(scope="module")
def vocab(tmp_path_factory, concepts_dir: Path) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab") / "broden80.txt", concepts_dir)


def new_home(root: Path, cifar_dir: Path) -> Path:
    from neuronatlas.indexer.probes import register_probe_set

    root.mkdir(parents=True)
    register_probe_set(root, PROBE, cifar_dir, N_PROBE)
    return root


# -- kill -9 of the server ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(home: Path, port: int, delay: float) -> subprocess.Popen:
    """``neuronatlas serve`` in a subprocess. Its thread settings are this process's (no
    OMP_NUM_THREADS of its own): redundancy scores are matrix products whose last bits depend
    on how BLAS splits them, and the store must equal the in-process reference bit for bit."""
    env = {
        **os.environ,
        "NEURONATLAS_HOME": str(home),
        "NEURONATLAS_EMBEDDER": TINY_EMBEDDER,
        "NEURONATLAS_DEVICE": "cpu",
        "NEURONATLAS_ALLOW_PYTHON_SOURCES": "1",
        "SLOW_RESNET_DELAY": str(delay),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    for var in (
        "NEURONATLAS_BACKEND",
        "NEURONATLAS_URL",
        "NEURONATLAS_CONFIG",
        "NEURONATLAS_TOKENS",
    ):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "neuronatlas.cli", "serve", "--address", f"127.0.0.1:{port}"]
    log = (home / "serve.log").open("a")  # a file: a pipe nobody reads fills up and blocks
    return subprocess.Popen(
        [*cmd, "--index-workers", "1"], env=env, stdout=subprocess.DEVNULL, stderr=log
    )


def _serving(proc: subprocess.Popen, address: str, home: Path):
    from neuronatlas.service.client import Client

    client = Client(address, timeout=20)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise AssertionError((home / "serve.log").read_text()[-3000:])
        try:
            if client.health() == "SERVING":
                return client
        except Exception as e:  # noqa: BLE001 - not up yet
            print("waiting for the server:", type(e).__name__)
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.2)


def test_server_killed_mid_job_resumes_it_to_the_same_store(
    tmp_path, cifar_dir, cifar_models, vocab, tiny_embedder
):
    from neuronatlas.core.queries import Atlas
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.service.server import build_server

    weights = cifar_models[20]
    # the reference: the same operation, uninterrupted, on an in-process server
    ref_home = new_home(tmp_path / "ref", cifar_dir)
    atlas = Atlas(EdgeStore(ref_home / "store"), tiny_embedder, home=ref_home)
    with build_server(
        atlas, "127.0.0.1:0", close_atlas=True, index_workers=1, allow_python_sources=True
    ) as ref_server:
        from neuronatlas.service.client import Client

        with Client(ref_server.address, timeout=30) as c:
            ref_op = wait(c, c.index_model(**index_request(weights, vocab)))
        assert ref_op.state is JobState.SUCCEEDED, ref_op.error
        ref = model_snapshot(atlas.store, "slow")

    home = new_home(tmp_path / "b", cifar_dir)
    shutil.copytree(ref_home / "cache", home / "cache")  # probe embeddings: content-addressed
    port = _free_port()
    address = f"127.0.0.1:{port}"
    proc = _serve(home, port, delay=0.3)
    try:
        client = _serving(proc, address, home)
        op = client.index_model(**index_request(weights, vocab))
        deadline = time.monotonic() + 120
        while not (op.stage == "forward" and op.images_done >= 60):
            assert not op.done and time.monotonic() < deadline, op
            time.sleep(0.1)
            op = client.get_operation(op.name)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        client.close()

        proc = _serve(home, port, delay=0.0)  # the same server again: it takes the job back
        client = _serving(proc, address, home)
        done = wait(client, client.get_operation(op.name))
        client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert done.state is JobState.SUCCEEDED, done.error
    assert done.attempts == 2 and done.model is not None
    assert done.model.extra["index"]["resumed_from_sample"] >= 60
    with EdgeStore(home / "store") as store:
        got = model_snapshot(store, "slow")
        assert store.count() == ref_op.model.neuron_count  # nothing else left behind
    assert_same_model(got, ref)
    assert not (home / "runs" / "slow").exists()


# -- a remote worker dies mid-job -----------------------------------------------------------------
class Died(BaseException):
    """The worker process is gone (simulated: its thread ends without a word)."""


class DyingSource:
    """A worker's job source that dies at its first heartbeat in the forward pass: from then on
    nothing of that worker reaches the server, as if its process had been killed."""

    def __init__(self, inner):
        self.inner = inner
        self.died = threading.Event()

    @property
    def lease_s(self) -> float:
        return self.inner.lease_s

    def claim(self, worker):
        return self.inner.claim(worker)

    def heartbeat(self, job_id, worker, progress):
        if progress.get("stage") == "forward" and progress.get("images_done", 0) >= 40:
            self.died.set()
        if self.died.is_set():
            raise Died()
        return self.inner.heartbeat(job_id, worker, progress)

    def _dead(self, *args, **kwargs):
        raise Died()

    succeed = fail = cancelled = release = _dead

    def wait_for_work(self, timeout):
        self.inner.wait_for_work(timeout)


def test_dead_remote_worker_is_replaced_and_the_job_finishes(
    tmp_path, cifar_dir, cifar_models, vocab, tiny_embedder
):
    """Remote backend through the QdrantClient(":memory:") double: the server and each worker
    have their own RemoteStore over one client (like processes sharing a Qdrant server)."""
    from qdrant_client import QdrantClient

    from neuronatlas.core.queries import Atlas
    from neuronatlas.core.store.remote import RemoteStore
    from neuronatlas.indexer.worker import IndexWorker, RemoteJobSource
    from neuronatlas.service.auth import TokenSet
    from neuronatlas.service.client import Client
    from neuronatlas.service.server import build_server

    home = new_home(tmp_path / "home", cifar_dir)
    qdrant = QdrantClient(":memory:")
    atlas = Atlas(RemoteStore(qdrant, prefix="t"), tiny_embedder, backend="remote", home=home)
    tokens = TokenSet(
        {READ_TOKEN: "read", ADMIN_TOKEN: "admin", WRITE_TOKEN: "write", WORKER_TOKEN: "worker"}
    )
    server = build_server(
        atlas, "127.0.0.1:0", tokens=tokens, close_atlas=True, index_workers=0, lease_s=2.0
    ).start()
    writer = Client(server.address, token=WRITE_TOKEN, timeout=30)

    def worker(name: str, dying: bool = False) -> tuple[IndexWorker, DyingSource | None]:
        source = RemoteJobSource(Client(server.address, token=WORKER_TOKEN, timeout=30), 0.2)
        wrapped = DyingSource(source) if dying else None
        w = IndexWorker(
            name,
            wrapped or source,
            RemoteStore(qdrant, prefix="t"),
            tiny_embedder,
            home,
            heartbeat_s=0.2,
            poll_s=0.2,
        )
        return w, wrapped

    died: list[BaseException] = []

    def run(w: IndexWorker, once: bool) -> None:
        try:
            w.run(once=once)
        except Died as e:
            died.append(e)

    try:
        op = writer.index_model(
            "r20",
            PROBE,
            source={"kind": "cifar_resnet", "depth": 20, "weights": str(cifar_models[20])},
            vocabularies={"broden": str(vocab)},
            layers=["layer2.2.conv2", "layer3.2.conv2"],
            k=6,
            options={"batch_size": 10, "checkpoint_every": 1},
        )
        a, a_source = worker("worker-a", dying=True)
        ta = threading.Thread(target=run, args=(a, True))
        ta.start()
        ta.join(120)
        assert not ta.is_alive() and died and a_source.died.is_set()
        op = writer.get_operation(op.name)
        assert op.state is JobState.RUNNING and op.worker == "worker-a"  # its lease runs out

        b, _ = worker("worker-b")
        tb = threading.Thread(target=run, args=(b, False))
        tb.start()
        try:
            op = wait(writer, op)
        finally:
            b.stop()
            tb.join(60)
        assert op.state is JobState.SUCCEEDED, op.error
        assert op.attempts == 2 and op.model is not None and op.model.status == ModelStatus.INDEXED
        assert op.model.extra["index"]["resumed_from_sample"] > 0  # b went on from a's state
        job = server.zoo.queue.get(op.job_id)
        assert job.progress["stage"] in ("finishing", "writing")
        # the server's own store object sees the model the worker flipped, at once
        with Client(server.address, token=READ_TOKEN, timeout=30) as reader:
            vec = reader.get_neuron("r20", "layer3.2.conv2", 0, with_vector=True).vector
            hits = reader.search_neurons(
                VectorQuery(vec), SearchFilter(model_ids=("r20",)), top_k=1
            ).items
            assert hits[0].record.key == "r20/layer3.2.conv2/0"
            assert reader.get_model("r20").neuron_count == 32 + 64
    finally:
        writer.close()
        server.stop(grace=1.0)
