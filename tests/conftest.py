"""Shared fixtures. Real data lives in ../shared/data (next to the repository); tests that
need it skip with the reason when it is absent. Shared test data and helpers that are not
fixtures are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import (
    ADMIN_TOKEN,
    READ_TOKEN,
    SERVICE_LAYERS,
    TINY_EMBEDDER,
    WORKER_TOKEN,
    WRITE_TOKEN,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NEURONATLAS_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"real data not found at {path} (expects ../shared/data next to the repository)"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def cifar_dir(shared_data: Path) -> Path:
    return _need(shared_data / "cifar10-test")


@pytest.fixture(scope="session")
def cifar_models(shared_data: Path) -> dict[int, Path]:
    models = _need(shared_data / "models")
    out = {}
    for depth in (20, 32, 44, 56):
        hits = sorted(models.glob(f"cifar10-resnet{depth}-*.th"))
        if hits:
            out[depth] = hits[0]
    if not out:
        pytest.skip(f"no CIFAR ResNet checkpoints in {models}")
    return out


@pytest.fixture(scope="session")
def concepts_dir(shared_data: Path) -> Path:
    return _need(shared_data / "concepts")


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated NEURONATLAS_HOME for one test."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("NEURONATLAS_HOME", str(h))
    for var in (
        "NEURONATLAS_BACKEND",
        "NEURONATLAS_URL",
        "NEURONATLAS_CONFIG",
        "NEURONATLAS_STORE_PATH",
    ):
        monkeypatch.delenv(var, raising=False)
    return h


@pytest.fixture()
def edge_store(tmp_path: Path):
    """An empty Edge store in the test's temp dir, closed afterwards."""
    from neuronatlas.core.store.edge import EdgeStore

    store = EdgeStore(tmp_path / "store")
    yield store
    store.close()


# -- the gRPC service over a store the real indexer filled -----------------------------------------
# Built once per session and shared by test_service_grpc.py and test_service_compare.py: the
# server only reads the store (the tests make no successful writes through it).
@pytest.fixture(scope="session")
def tiny_embedder():
    """The tiny random open_clip embedder, on the CPU."""
    from neuronatlas.core.embedder import load_embedder

    return load_embedder(TINY_EMBEDDER, device="cpu")


@pytest.fixture(scope="session")
def indexed_home(
    tmp_path_factory: pytest.TempPathFactory,
    cifar_dir: Path,
    cifar_models: dict[int, Path],
    concepts_dir: Path,
    tiny_embedder,
) -> Path:
    """A home whose store the real indexer filled: resnet20 + resnet32 on 200 CIFAR-10 test
    images, layers ``SERVICE_LAYERS``, k=8, a 300-label slice of the Broden vocabulary."""
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import build_index

    if 20 not in cifar_models or 32 not in cifar_models:
        pytest.skip("needs the resnet20 and resnet32 checkpoints")
    home = tmp_path_factory.mktemp("service-home")
    vocab = home / "broden300.txt"  # a slice of the real vocabulary keeps label scoring fast
    vocab.write_text(
        "\n".join((concepts_dir / "broden_labels_clean.txt").read_text().splitlines()[:300]) + "\n"
    )
    with EdgeStore(home / "store") as store:
        for depth in (20, 32):
            entry = build_index(
                store,
                tiny_embedder,
                model_id=f"resnet{depth}",
                source={
                    "kind": "cifar_resnet",
                    "depth": depth,
                    "weights": str(cifar_models[depth]),
                },
                probe_dir=cifar_dir,
                probe_name="cifar200",
                home=home,
                vocabularies={"broden": vocab},
                layers=SERVICE_LAYERS,
                k=8,
                probe_limit=200,
                progress=False,
            )
            assert entry.status.value == "indexed"
    return home


@pytest.fixture(scope="session")
def server(indexed_home: Path, tiny_embedder):
    """A started server on an ephemeral port over ``indexed_home``, with a read, an admin, a
    write and a worker token (``READ_TOKEN``, ``ADMIN_TOKEN``, ``WRITE_TOKEN``,
    ``WORKER_TOKEN``)."""
    from neuronatlas.core.queries import Atlas
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.service.auth import TokenSet
    from neuronatlas.service.server import build_server

    atlas = Atlas(EdgeStore(indexed_home / "store"), tiny_embedder, backend="edge")
    tokens = TokenSet(
        {READ_TOKEN: "read", ADMIN_TOKEN: "admin", WRITE_TOKEN: "write", WORKER_TOKEN: "worker"}
    )
    srv = build_server(
        atlas, "127.0.0.1:0", tokens=tokens, close_atlas=True, home=indexed_home
    ).start()
    yield srv
    srv.stop(grace=1.0)


@pytest.fixture(scope="session")
def client(server):
    """The typed client, with the read token."""
    from neuronatlas.service.client import Client

    with Client(server.address, token=READ_TOKEN, timeout=20) as c:
        yield c


@pytest.fixture(scope="session")
def stub(server):
    """A raw gRPC stub on an insecure channel; pass ``metadata=AUTH`` for the read token."""
    import grpc

    from neuronatlas.v1 import neuronatlas_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(server.address)
    yield pb_grpc.NeuronAtlasServiceStub(channel)
    channel.close()
