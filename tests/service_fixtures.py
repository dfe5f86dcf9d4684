"""Fixtures shared by the gRPC service tests (test_service_grpc.py, test_service_compare.py):
a real server on an ephemeral port over a store filled by the real indexer (two CIFAR ResNets,
200 CIFAR-10 test images, the tiny random open_clip embedder). Import them into a test module;
the indexed store is built once per session and shared."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from neuronatlas.core.queries import Atlas
from neuronatlas.service.client import Client
from neuronatlas.v1 import neuronatlas_pb2_grpc as pb_grpc

_BUILT: dict[str, Path] = {}  # the indexed home, shared by every module importing these fixtures

EMBEDDER = "open_clip:na-tiny:random:0"
LAYERS = ["layer1.0.conv1", "layer2.0.conv2", "layer3.0.conv2"]
READ_TOKEN, ADMIN_TOKEN = "read-token-0123", "admin-token-4567"


@pytest.fixture(scope="module")
def embedder():
    from neuronatlas.core.embedder import load_embedder

    return load_embedder(EMBEDDER, device="cpu")


@pytest.fixture(scope="module")
def indexed_home(
    tmp_path_factory, cifar_dir: Path, cifar_models: dict, concepts_dir: Path, embedder
) -> Path:
    """A store indexed by the real indexer: resnet20 + resnet32 on 200 probe images."""
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import build_index

    if 20 not in cifar_models or 32 not in cifar_models:
        pytest.skip("needs the resnet20 and resnet32 checkpoints")
    if "home" in _BUILT:
        return _BUILT["home"]
    home = tmp_path_factory.mktemp("service-home")
    vocab = home / "broden300.txt"  # a slice of the real vocabulary keeps label scoring fast
    vocab.write_text(
        "\n".join((concepts_dir / "broden_labels_clean.txt").read_text().splitlines()[:300]) + "\n"
    )
    with EdgeStore(home / "store") as store:
        for depth in (20, 32):
            entry = build_index(
                store,
                embedder,
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
                layers=LAYERS,
                k=8,
                probe_limit=200,
                progress=False,
            )
            assert entry.status.value == "indexed"
    _BUILT["home"] = home
    return home


@pytest.fixture(scope="module")
def server(indexed_home: Path, embedder):
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.service.auth import TokenSet
    from neuronatlas.service.server import build_server

    atlas = Atlas(EdgeStore(indexed_home / "store"), embedder, backend="edge")
    tokens = TokenSet({READ_TOKEN: "read", ADMIN_TOKEN: "admin"})
    srv = build_server(
        atlas, "127.0.0.1:0", tokens=tokens, close_atlas=True, home=indexed_home
    ).start()
    yield srv
    srv.stop(grace=1.0)


@pytest.fixture(scope="module")
def client(server):
    with Client(server.address, token=READ_TOKEN, timeout=20) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.address)
    yield pb_grpc.NeuronAtlasServiceStub(channel)
    channel.close()


AUTH = (("authorization", f"Bearer {READ_TOKEN}"),)


def _status(err: grpc.RpcError):
    """(code, BadRequest field names, ErrorInfo reason) of a failed call."""
    status = rpc_status.from_call(err)
    fields, reason = [], ""
    for d in status.details if status else []:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            fields += [v.field for v in br.field_violations]
        elif d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            reason = info.reason
    return err.code(), fields, reason


def _call_fails(fn, request, metadata=AUTH):
    with pytest.raises(grpc.RpcError) as e:
        fn(request, metadata=metadata, timeout=20)
    return _status(e.value)
