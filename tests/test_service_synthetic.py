"""Service behaviour that needs a store in a particular state (empty, half-indexed, remote
and down, deleted from) or a particular server set-up (TLS, the `serve` command, shutdown).
Records are written straight into real stores; no model or probe data needed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import DIM, INFO, FakeEmbedder, add_model, cycled

from neuronatlas.core import errors as E
from neuronatlas.core.backend import all_models
from neuronatlas.core.queries import Atlas
from neuronatlas.core.records import EmbedderInfo, ModelStatus
from neuronatlas.core.store.edge import EdgeStore
from neuronatlas.service.client import Client
from neuronatlas.service.errors import ServiceUnavailable
from neuronatlas.service.server import TlsConfig, build_server

ADMIN = "admin-token-abcdef"
READ = "read-token-abcdef"


def fill(store, models: dict[str, ModelStatus], units: int = 6) -> None:
    """Each model: layers conv1 and fc, ``units`` neurons each, labelled 'green' / 'red'
    by turns in the vocabulary 'colours', top samples ``x/<unit>.jpg``."""
    store.bind_embedder(INFO)
    for seed, (model_id, status) in enumerate(models.items()):
        add_model(
            store,
            model_id,
            {"conv1": units, "fc": units},
            status,
            seed,
            entry_fields={"architecture": "toy"},
            labels=cycled(("green", "red"), per_neuron=1),
            vocab="colours",
            depths=(0.0, 1.0),
            sample="x/{unit}.jpg",
        )
    store.optimize()


@pytest.fixture()
def served(tmp_path):
    """Start a server over a store; yields a factory ``(store, **kw) -> server``."""
    servers = []

    def start(store, embedder=None, **kw):
        srv = build_server(Atlas(store, embedder), "127.0.0.1:0", close_atlas=True, **kw).start()
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.stop(grace=0.5)


def test_empty_store_is_failed_precondition(tmp_path, served) -> None:
    srv = served(EdgeStore(tmp_path / "store"))
    with Client(srv.address) as c:
        with pytest.raises(E.NotIndexed) as e:
            c.search(vector=np.ones(DIM))
        assert e.value.code == "FAILED_PRECONDITION"
        with pytest.raises(E.NotIndexed):
            c.find_by_label("red")
        assert c.list_models().items == [] and c.stats().total_neurons == 0


def test_half_indexed_model_and_missing_embedder(tmp_path, served) -> None:
    store = EdgeStore(tmp_path / "store")
    fill(store, {"done": ModelStatus.INDEXED, "busy": ModelStatus.INDEXING})
    srv = served(store)
    from neuronatlas.core.store.base import SearchFilter

    with Client(srv.address) as c:
        hits = c.search(vector=np.ones(DIM), top_k=50).items
        assert hits and {h.record.model_id for h in hits} == {"done"}  # never half a model
        with pytest.raises(E.NotIndexed, match="busy"):
            c.search(vector=np.ones(DIM), filter=SearchFilter(model_ids=("busy",)))
        with pytest.raises(E.FailedPrecondition, match="no embedder"):
            c.search("red things")
        assert {m.model_id: m.neurons for m in c.stats().models} == {"busy": 0, "done": 12}


def test_text_queries_with_a_plugin_embedder_and_mismatch(tmp_path, served) -> None:
    store = EdgeStore(tmp_path / "store")
    fill(store, {"m": ModelStatus.INDEXED})
    emb = FakeEmbedder()
    srv = served(store, emb)
    with Client(srv.address) as c:
        first = c.search("green stripes", top_k=3).items
        assert [h.record.key for h in c.search("green stripes", top_k=3).items] == [
            h.record.key for h in first
        ]
        assert emb.calls == 1  # the repeated query came from the cache
    other = EdgeStore(tmp_path / "other")
    fill(other, {"m": ModelStatus.INDEXED})
    srv2 = served(other, FakeEmbedder(EmbedderInfo("another", "w", DIM)))
    with Client(srv2.address) as c, pytest.raises(E.EmbedderMismatch):
        c.search("green stripes")


def test_delete_model_needs_admin_and_removes_everything(tmp_path, served) -> None:
    from neuronatlas.service.auth import TokenSet

    store = EdgeStore(tmp_path / "store")
    fill(store, {"keep": ModelStatus.INDEXED, "drop": ModelStatus.INDEXED})
    srv = served(store, tokens=TokenSet({READ: "read", ADMIN: "admin"}))
    with Client(srv.address, token=READ) as reader, Client(srv.address, token=ADMIN) as admin:
        with pytest.raises(E.PermissionDenied):
            reader.delete_model("drop")
        assert admin.delete_model("drop") == 12
        with pytest.raises(E.NotFound):
            reader.get_model("drop")
        with pytest.raises(E.NotFound):
            reader.get_neuron("drop", "conv1", 0)
        assert [m.model_id for m in all_models(reader)] == ["keep"]
        assert reader.stats().total_neurons == 12
        assert {h.record.model_id for h in reader.search(vector=np.ones(DIM), top_k=100).items} == {
            "keep"
        }
        with pytest.raises(E.NotFound):
            admin.delete_model("drop")


def test_remote_qdrant_down_is_unavailable(served) -> None:
    remote = pytest.importorskip("neuronatlas.core.store.remote")
    from qdrant_client import QdrantClient

    store = remote.RemoteStore(QdrantClient(":memory:"))
    fill(store, {"m": ModelStatus.INDEXED})
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store.client = QdrantClient(
        url=f"http://127.0.0.1:{port}", timeout=2, prefer_grpc=False, check_compatibility=False
    )  # Qdrant goes away
    srv = served(store)
    with Client(srv.address, timeout=20) as c:
        with pytest.raises(E.StoreUnavailable) as e:
            c.search(vector=np.ones(DIM))
        assert e.value.code == "UNAVAILABLE"
        with pytest.raises(E.StoreUnavailable):
            c.get_neuron("m", "conv1", 0)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl not found")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls(tmp_path, served) -> None:
    cert, key = _self_signed(tmp_path)
    store = EdgeStore(tmp_path / "store")
    fill(store, {"m": ModelStatus.INDEXED})
    srv = served(store, tls=TlsConfig(cert, key))
    with Client(srv.address, tls=cert) as c:
        assert c.get_model("m").architecture == "toy"
    with Client(srv.address, timeout=2) as plain, pytest.raises(ServiceUnavailable):
        plain.stats()


def test_graceful_stop_releases_the_store(tmp_path) -> None:
    store = EdgeStore(tmp_path / "store")
    fill(store, {"m": ModelStatus.INDEXED})
    srv = build_server(Atlas(store), "127.0.0.1:0", close_atlas=True).start()
    with Client(srv.address, timeout=2) as c:
        assert c.health() == "SERVING"
        srv.stop(grace=1.0)
        with pytest.raises(ServiceUnavailable):
            c.stats()
    EdgeStore(tmp_path / "store").close()  # the lock was released


def test_cli_direct_mode(tmp_path, home: Path) -> None:
    from click.testing import CliRunner

    from neuronatlas.cli import cli

    with EdgeStore(home / "store") as store:
        fill(store, {"alpha": ModelStatus.INDEXED, "beta": ModelStatus.INDEXED})
    runner = CliRunner()
    env = {"NEURONATLAS_SERVER": ""}
    models = runner.invoke(cli, ["models", "--json"], env=env)
    assert models.exit_code == 0, models.output
    assert [m["model_id"] for m in json.loads(models.output)] == ["alpha", "beta"]
    like = runner.invoke(
        cli, ["search", "--like", "alpha/fc/3", "--per-model", "2", "--json"], env=env
    )
    rows = json.loads(like.output)
    assert rows[0]["neuron"] == "alpha/fc/3" and len(rows) == 4
    found = runner.invoke(cli, ["labels", "find", "red", "--model", "beta", "--json"], env=env)
    assert {r["model_id"] for r in json.loads(found.output)} == {"beta"} and len(
        json.loads(found.output)
    ) == 6
    text = runner.invoke(cli, ["stats"], env=env).output
    assert "neurons 24" in text and "alpha" in text and "conv1" in text
    shown = runner.invoke(cli, ["neuron", "beta/conv1/1"], env=env).output
    assert "beta/conv1/1" in shown and "red" in shown and "x/1.jpg" in shown
    missing = runner.invoke(cli, ["neuron", "beta/conv1/99"], env=env)
    assert isinstance(missing.exception, E.NotFound)
    bad = runner.invoke(cli, ["search", "--like", "beta/conv1/1", "--top-k", "5000"], env=env)
    assert isinstance(bad.exception, E.InvalidArgument)


def test_serve_command_runs_and_stops_on_sigterm(tmp_path, home: Path) -> None:
    with EdgeStore(home / "store") as store:
        fill(store, {"m": ModelStatus.INDEXED})
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(f"read:{READ}\n")
    env = {**os.environ, "NEURONATLAS_HOME": str(home)}
    env.pop("NEURONATLAS_TOKENS", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from neuronatlas.cli import main; main()",
            "serve",
            "--address",
            "127.0.0.1:0",
            "--no-embedder",
            "--tokens-file",
            str(tokens),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        address, log = None, []
        deadline = time.monotonic() + 120
        while address is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            log.append(line)
            if "serving on" in line and line.startswith("neuronatlas"):
                address = line.split()[-1]
        assert address, "".join(log)
        with Client(address, token=READ) as c:
            assert c.get_model("m").status is ModelStatus.INDEXED
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
        assert proc.returncode == 0, rest
        assert READ not in "".join(log) + rest  # tokens never reach the log
    finally:
        if proc.poll() is None:
            proc.kill()
