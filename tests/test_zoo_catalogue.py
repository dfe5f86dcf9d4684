"""The catalogue half of ZooService over a real server on loopback: uploads, RegisterModel
(real CIFAR ResNet weights), UpdateModel, probe sets and thumbnails, scopes, the CLI commands
that use them (`register --server`, `models update`, `delete`, `show --server`), the
register/replace path of the indexer, and a bad-input table in the style of
``test_bad_input.py`` (0 INTERNAL / UNKNOWN, details on every refusal, nothing half-written).

Write tests each get a fresh store and server (function scope); the table shares one server
over an empty store and checks afterwards that none of its cases wrote anything.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from helpers import (
    ADMIN_TOKEN,
    READ_TOKEN,
    WORKER_TOKEN,
    WRITE_TOKEN,
    check_refusal,
    cifar_args,
    unknown_field,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from neuronatlas.core import errors as E
from neuronatlas.v1 import neuronatlas_pb2 as pb
from neuronatlas.v1 import zoo_pb2 as zpb
from neuronatlas.v1 import zoo_pb2_grpc

pytestmark = pytest.mark.integration

Code = grpc.StatusCode
ZOO = zpb.DESCRIPTOR.services_by_name["ZooService"]
TOKENS = {
    READ_TOKEN: "read",
    WRITE_TOKEN: "write",
    WORKER_TOKEN: "worker",
    ADMIN_TOKEN: "admin",
}


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


READ, WRITE, WORKER, ADMIN = md(READ_TOKEN), md(WRITE_TOKEN), md(WORKER_TOKEN), md(ADMIN_TOKEN)


# -- servers over fresh stores --------------------------------------------------------------------
def start_server(home: Path, **kwargs: Any):
    from neuronatlas.core.queries import Atlas
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.service.auth import TokenSet
    from neuronatlas.service.server import build_server

    atlas = Atlas(EdgeStore(home / "store"), None, backend="edge", home=home)
    return build_server(
        atlas, "127.0.0.1:0", tokens=TokenSet(TOKENS), close_atlas=True, home=home, **kwargs
    ).start()


@pytest.fixture()
def zoo(tmp_path: Path):
    """A started server over an empty store in this test's temp dir (function scope: the
    tests write)."""
    srv = start_server(tmp_path / "zoo-home")
    yield srv
    srv.stop(grace=1.0)


@pytest.fixture()
def writer(zoo):
    from neuronatlas.service.client import Client

    with Client(zoo.address, token=WRITE_TOKEN, timeout=60) as c:
        yield c


@pytest.fixture()
def reader(zoo):
    from neuronatlas.service.client import Client

    with Client(zoo.address, token=READ_TOKEN, timeout=60) as c:
        yield c


def stub_of(srv) -> tuple[grpc.Channel, zoo_pb2_grpc.ZooServiceStub]:
    channel = grpc.insecure_channel(srv.address)
    return channel, zoo_pb2_grpc.ZooServiceStub(channel)


def artifacts_on_disk(srv) -> list[str]:
    root = srv.zoo.artifacts.root
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def refusal(err: grpc.RpcError) -> tuple[Code, list[str]]:
    """Code and BadRequest fields of a refusal that passed the service's checks."""
    return check_refusal(err, ("/tmp/", "/work/"))


def struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def upload_stream(data: bytes, *, sha: str | None = None, size: int | None = None, **kw):
    header = zpb.ArtifactHeader(
        sha256=sha if sha is not None else hashlib.sha256(data).hexdigest(),
        size=len(data) if size is None else size,
        name=kw.get("name", "blob.bin"),
        kind=kw.get("kind", zpb.ARTIFACT_KIND_OTHER),
    )
    msgs = [zpb.UploadArtifactRequest(header=header)]
    step = kw.get("chunk", 64 * 1024)
    msgs += [zpb.UploadArtifactRequest(chunk=data[i : i + step]) for i in range(0, len(data), step)]
    return msgs


def png_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
        im.load()
        return im.size


# -- RegisterModel with an uploaded weights file --------------------------------------------------
def test_register_resnet32_by_uploading_its_weights(zoo, writer, reader, cifar_models) -> None:
    weights = cifar_models[32]
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    art = writer.upload_artifact(weights, "weights")
    assert (art.sha256, art.size, art.kind, art.ref) == (
        sha,
        weights.stat().st_size,
        "weights",
        f"artifact:{sha}",
    )
    assert writer.upload_artifact(weights, "weights").sha256 == sha  # stored once
    assert artifacts_on_disk(zoo) == [sha, f"{sha}.json"]

    source = {"kind": "cifar_resnet", "depth": 32, "weights": art.ref}
    entry = writer.register_model(
        "resnet32", source, display_name="ResNet-32", tags=["cifar"], request_id="req-1"
    )
    assert entry.weights_sha256 == sha
    assert entry.source["weights"] == art.ref  # the catalogue keeps the portable reference
    assert entry.status.value == "registered" and entry.architecture == "cifar_resnet32"
    assert entry.transform["input_size"] == [32, 32]
    seen = reader.get_model("resnet32")
    assert (seen.weights_sha256, seen.display_name, seen.tags) == (sha, "ResNet-32", ["cifar"])

    # a retry with the same request_id returns the same entry, writes nothing
    again = writer.register_model(
        "resnet32", source, display_name="ResNet-32", tags=["cifar"], request_id="req-1"
    )
    assert again.updated_at == pytest.approx(entry.updated_at, abs=1e-3)
    assert again.weights_sha256 == sha
    # the same request_id with another request is refused
    with pytest.raises(E.InvalidArgument) as e:
        writer.register_model("resnet32", {**source, "depth": 20}, request_id="req-1")
    assert e.value.field == "request_id"
    with pytest.raises(E.InvalidArgument):
        writer.register_model("other", source, request_id="req-1")
    assert [m.model_id for m in reader.list_models().items] == ["resnet32"]
    # the same source again, without a request id: the existing entry
    assert writer.register_model("resnet32", source).created_at == pytest.approx(entry.created_at)
    # another source needs replace
    with pytest.raises(E.AlreadyExists):
        writer.register_model("resnet32", {**source, "interpolation": "bicubic"})
    replaced = writer.register_model("resnet32", {**source, "mean": [0.5, 0.5, 0.5]}, replace=True)
    assert replaced.transform["mean"] == [0.5, 0.5, 0.5]
    assert replaced.created_at == pytest.approx(entry.created_at)
    assert replaced.status.value == "registered"


def test_register_refusals_write_nothing(zoo, writer, reader, cifar_models, tmp_path) -> None:
    art = writer.upload_artifact(cifar_models[32], "weights")
    bad = {
        "unknown kind": ({"kind": "keras", "path": "x"}, E.InvalidArgument, "source.kind"),
        "no source": ({}, E.InvalidArgument, "source"),
        "typo key": (
            {"kind": "cifar_resnet", "depth": 32, "weigths": art.ref},
            E.InvalidArgument,
            "source.weigths",
        ),
        "bad depth": (
            {"kind": "cifar_resnet", "depth": 21, "weights": art.ref},
            E.InvalidArgument,
            "source.depth",
        ),
        "huge depth": (
            {"kind": "cifar_resnet", "depth": 10**7, "weights": art.ref},
            E.InvalidArgument,
            "source.depth",
        ),
        "huge input": (
            {"kind": "cifar_resnet", "depth": 32, "weights": art.ref, "input_size": 100_000},
            E.InvalidArgument,
            "source.input_size",
        ),
        "weights of another depth": (
            {"kind": "cifar_resnet", "depth": 20, "weights": art.ref},
            E.WeightsUnavailable,
            None,
        ),
        "not uploaded": (
            {"kind": "cifar_resnet", "depth": 32, "weights": "artifact:" + "0" * 64},
            E.NotFound,
            None,
        ),
        "bad artifact ref": (
            {"kind": "cifar_resnet", "depth": 32, "weights": "artifact:xyz"},
            E.InvalidArgument,
            "source.weights",
        ),
        "missing server file": (
            {"kind": "cifar_resnet", "depth": 32, "weights": str(tmp_path / "none.th")},
            E.WeightsUnavailable,
            None,
        ),
        "python factory": (
            {"kind": "python", "factory": "os:getcwd"},
            E.PermissionDenied,
            None,
        ),
        "random init without saying so": (
            {"kind": "cifar_resnet", "depth": 20},
            E.InvalidArgument,
            "source.weights",
        ),
    }
    for name, (source, error, field) in bad.items():
        with pytest.raises(error) as e:
            writer.register_model("m1", source)
        if field is not None:
            assert e.value.field == field, (name, e.value.field, str(e.value))
        assert "Traceback" not in str(e.value)
    with pytest.raises(E.InvalidArgument) as e:
        writer.register_model("bad/id", {"kind": "cifar_resnet", "depth": 32, "weights": art.ref})
    assert e.value.field == "model_id"
    with pytest.raises(E.InvalidArgument) as e:
        writer.register_model(
            "m1", {"kind": "cifar_resnet", "depth": 32, "weights": art.ref}, tags=[" x"]
        )
    assert e.value.field == "tags[0]"
    assert reader.list_models().items == []


# -- uploads --------------------------------------------------------------------------------------
def test_bad_uploads_keep_nothing(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "home", max_upload_bytes=200_000)
    channel, stub = stub_of(srv)
    data = bytes(range(256)) * 400  # 102,400 bytes
    sha = hashlib.sha256(data).hexdigest()
    header = upload_stream(data)[0]
    cases: dict[str, tuple[list[zpb.UploadArtifactRequest], Code, str]] = {
        "sha256 mismatch": (
            upload_stream(data, sha=hashlib.sha256(b"other").hexdigest()),
            Code.INVALID_ARGUMENT,
            "header.sha256",
        ),
        "truncated": (upload_stream(data)[:-1], Code.INVALID_ARGUMENT, "chunk"),
        "size mismatch (announced more)": (
            upload_stream(data, size=len(data) + 1),
            Code.INVALID_ARGUMENT,
            "chunk",
        ),
        "more bytes than announced": (
            upload_stream(data, size=len(data) - 1),
            Code.INVALID_ARGUMENT,
            "chunk",
        ),
        "oversized (announced)": (
            upload_stream(data * 3),
            Code.INVALID_ARGUMENT,
            "header.size",
        ),
        "oversized (sent past the limit)": (
            [
                zpb.UploadArtifactRequest(
                    header=zpb.ArtifactHeader(sha256=sha, size=150_000, name="x")
                ),
                *upload_stream(data * 3)[1:],
            ],
            Code.INVALID_ARGUMENT,
            "chunk",
        ),
        "chunk before header": (
            [zpb.UploadArtifactRequest(chunk=data[:10]), header],
            Code.INVALID_ARGUMENT,
            "header",
        ),
        "second header": (
            [*upload_stream(data)[:2], header, *upload_stream(data)[2:]],
            Code.INVALID_ARGUMENT,
            "header",
        ),
        "empty stream": ([], Code.INVALID_ARGUMENT, "header"),
        "chunk over 1 MiB": (
            [
                zpb.UploadArtifactRequest(
                    header=zpb.ArtifactHeader(sha256=sha, size=150_000, name="x")
                ),
                zpb.UploadArtifactRequest(chunk=b"\0" * ((1 << 20) + 1)),
            ],
            Code.INVALID_ARGUMENT,
            "chunk",
        ),
        "empty message": (
            [header, zpb.UploadArtifactRequest()],
            Code.INVALID_ARGUMENT,
            "chunk",
        ),
        "name with a directory": (
            upload_stream(data, name="../../etc/passwd"),
            Code.INVALID_ARGUMENT,
            "header.name",
        ),
        "unknown kind": (upload_stream(data, kind=99), Code.INVALID_ARGUMENT, "header.kind"),
        "negative size": (upload_stream(data, size=-1), Code.INVALID_ARGUMENT, "header.size"),
        "read token": (upload_stream(data), Code.PERMISSION_DENIED, ""),
    }
    try:
        for name, (msgs, code, field) in cases.items():
            with pytest.raises(grpc.RpcError) as e:
                stub.UploadArtifact(
                    iter(msgs), metadata=READ if name == "read token" else WRITE, timeout=30
                )
            got, fields = refusal(e.value)
            assert got is code, (name, got, e.value.details())
            if field:
                assert field in fields, (name, fields, e.value.details())
            assert artifacts_on_disk(srv) == [], name
        # and the same bytes, sent right, are kept
        ok = stub.UploadArtifact(iter(upload_stream(data)), metadata=WRITE, timeout=30)
        assert ok.artifact.ref == f"artifact:{sha}" and ok.artifact.size == len(data)
        assert artifacts_on_disk(srv) == [sha, f"{sha}.json"]
    finally:
        channel.close()
        srv.stop(grace=1.0)


# -- UpdateModel ----------------------------------------------------------------------------------
def _registered(writer, cifar_models) -> None:
    art = writer.upload_artifact(cifar_models[20], "weights")
    writer.register_model("r20", {"kind": "cifar_resnet", "depth": 20, "weights": art.ref})


def test_update_model(zoo, writer, reader, cifar_models) -> None:
    _registered(writer, cifar_models)
    before = reader.get_model("r20")
    entry = writer.update_model("r20", display_name="ResNet-20", tags=["cifar", "small"])
    assert (entry.display_name, entry.tags, entry.notes) == ("ResNet-20", ["cifar", "small"], "")
    assert entry.updated_at > before.updated_at
    entry = writer.update_model("r20", notes="from the model zoo", training_data="CIFAR-10 train")
    assert (entry.display_name, entry.notes, entry.training_data) == (
        "ResNet-20",
        "from the model zoo",
        "CIFAR-10 train",
    )
    assert writer.update_model("r20", tags=[]).tags == []
    assert writer.update_model("r20", display_name="").display_name == "r20"
    # refusals, over the wire
    channel, stub = stub_of(zoo)
    try:
        mask = field_mask_pb2.FieldMask
        cases = {
            "unknown field": (
                zpb.UpdateModelRequest(
                    model=pb.Model(model_id="r20", status=pb.MODEL_STATUS_INDEXED),
                    update_mask=mask(paths=["display_name", "status"]),
                ),
                Code.INVALID_ARGUMENT,
                "update_mask.paths[1]",
                WRITE,
            ),
            "empty mask": (
                zpb.UpdateModelRequest(model=pb.Model(model_id="r20", notes="x")),
                Code.INVALID_ARGUMENT,
                "update_mask",
                WRITE,
            ),
            "unknown model": (
                zpb.UpdateModelRequest(
                    model=pb.Model(model_id="r999", notes="x"), update_mask=mask(paths=["notes"])
                ),
                Code.NOT_FOUND,
                None,
                WRITE,
            ),
            "read token": (
                zpb.UpdateModelRequest(
                    model=pb.Model(model_id="r20", notes="x"), update_mask=mask(paths=["notes"])
                ),
                Code.PERMISSION_DENIED,
                None,
                READ,
            ),
            "worker token": (
                zpb.UpdateModelRequest(
                    model=pb.Model(model_id="r20", notes="x"), update_mask=mask(paths=["notes"])
                ),
                Code.PERMISSION_DENIED,
                None,
                WORKER,
            ),
            "long notes": (
                zpb.UpdateModelRequest(
                    model=pb.Model(model_id="r20", notes="x" * 5000),
                    update_mask=mask(paths=["notes"]),
                ),
                Code.INVALID_ARGUMENT,
                "model.notes",
                WRITE,
            ),
        }
        for name, (req, code, field, meta) in cases.items():
            with pytest.raises(grpc.RpcError) as e:
                stub.UpdateModel(req, metadata=meta, timeout=30)
            got, fields = refusal(e.value)
            assert got is code, (name, got, e.value.details())
            if field:
                assert field in fields, (name, fields)
            if name == "unknown field":
                assert "status" in e.value.details()
    finally:
        channel.close()
    after = reader.get_model("r20")
    assert (after.display_name, after.notes, after.status) == (
        "r20",
        "from the model zoo",
        before.status,
    )


# -- scopes ---------------------------------------------------------------------------------------
def test_every_zoo_method_has_the_scope_of_the_proto_header() -> None:
    from neuronatlas.service.auth import ADMIN as A
    from neuronatlas.service.auth import READ as R
    from neuronatlas.service.auth import WORKER as K
    from neuronatlas.service.auth import WRITE as W
    from neuronatlas.service.auth import allows, required_scope

    header = (Path(__file__).parents[1] / "protos/neuronatlas/v1/zoo.proto").read_text()
    header = " ".join(header.split("syntax =")[0].replace("//", " ").split())
    for scope, names in (
        (R, "ListProbeSets, GetOperation, ListOperations, WaitOperation and GetSampleImages"),
        (
            W,
            "RegisterModel, UpdateModel, UploadArtifact, RegisterProbeSet, IndexModel and "
            "CancelOperation",
        ),
        (K, "ClaimJob and ReportJob"),
    ):
        assert f'{names} need "{scope}"' in header
    expected = {
        **dict.fromkeys(
            ["ListProbeSets", "GetOperation", "ListOperations", "WaitOperation", "GetSampleImages"],
            R,
        ),
        **dict.fromkeys(
            [
                "RegisterModel",
                "UpdateModel",
                "UploadArtifact",
                "RegisterProbeSet",
                "IndexModel",
                "CancelOperation",
            ],
            W,
        ),
        "ClaimJob": K,
        "ReportJob": K,
    }
    assert set(expected) == {m.name for m in ZOO.methods}
    for name, scope in expected.items():
        assert required_scope(f"/{ZOO.full_name}/{name}") == scope, name
    assert required_scope("/neuronatlas.v1.NeuronAtlasService/DeleteModel") == A
    # a method of another of our services that has no scope of its own needs admin
    from neuronatlas.service.auth import METHOD_SCOPES, _our_services

    for service, methods in _our_services().items():
        for m in methods:
            path = f"/{service}/{m}"
            if path not in METHOD_SCOPES and not service.endswith(".NeuronAtlasService"):
                assert required_scope(path) == A, path
    assert required_scope(f"/{ZOO.full_name}/NoSuchMethod") == R  # then UNIMPLEMENTED
    # the order: read < write < admin; worker reads and leases; admin everything
    assert allows("write", R) and allows("write", W) and not allows("write", K)
    assert allows("worker", R) and allows("worker", K) and not allows("worker", W)
    assert not allows("read", W) and not allows("write", A) and not allows("worker", A)
    assert all(allows("admin", s) for s in (R, W, K, A))
    assert allows(["write", "worker"], K) and not allows(None, R)


def test_tokens_file_knows_write_and_worker(tmp_path: Path) -> None:
    from neuronatlas.service.auth import TokenSet

    f = tmp_path / "tokens"
    f.write_text("read:reader-0001\nwrite:writer-0002\nworker:worker-0003 # pool\nadmin:adm-0004\n")
    tokens = TokenSet.load(f, env={})
    assert [
        tokens.scope_of(t) for t in ("reader-0001", "writer-0002", "worker-0003", "adm-0004")
    ] == [
        "read",
        "write",
        "worker",
        "admin",
    ]
    assert "write=1" in repr(tokens) and "writer-0002" not in repr(tokens)


def test_scopes_over_the_wire(zoo, writer, cifar_models) -> None:
    from neuronatlas.service.client import Client

    _registered(writer, cifar_models)
    with Client(zoo.address, token=READ_TOKEN) as r, pytest.raises(E.PermissionDenied):
        r.register_model("x", {"kind": "cifar_resnet", "depth": 20, "random_init": True})
    with Client(zoo.address, token=WORKER_TOKEN) as w:
        assert w.list_probe_sets() == [] and w.get_model("r20").model_id == "r20"
        with pytest.raises(E.PermissionDenied):
            w.update_model("r20", notes="x")
    with pytest.raises(E.PermissionDenied) as e:
        writer.delete_model("r20")  # admin only
    assert "admin" in str(e.value)
    with Client(zoo.address, token=ADMIN_TOKEN) as a:
        assert a.update_model("r20", notes="admin may").notes == "admin may"
        assert a.delete_model("r20") == 0
        assert a.list_models().items == []


# -- probe sets and thumbnails --------------------------------------------------------------------
def _small_probe_folder(cifar_dir: Path, dest: Path, per_class: int = 2) -> Path:
    for cls in ("cat", "dog", "ship"):
        (dest / cls).mkdir(parents=True)
        for f in sorted((cifar_dir / cls).glob("*.jpg"))[:per_class]:
            shutil.copy(f, dest / cls / f.name)
    return dest


def test_probe_sets_from_a_folder_and_an_uploaded_archive(zoo, writer, reader, cifar_dir, tmp_path):
    folder = _small_probe_folder(cifar_dir, tmp_path / "probe")
    ps = writer.register_probe_set("tiny", folder=str(folder))
    assert (ps.images, ps.classes, ps.origin) == (6, ["cat", "dog", "ship"], str(folder))
    assert writer.register_probe_set("tiny", folder=str(folder)).sha256 == ps.sha256  # no-op
    # an archive wrapping everything in one top folder, with a big "image" of a bad format
    archive = tmp_path / "probe.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.rglob("*.jpg")):
            z.write(f, f"wrapped/{f.relative_to(folder).as_posix()}")
    art = writer.upload_artifact(archive, "probe_archive")
    ps2 = writer.register_probe_set("tiny-zip", artifact=art.ref, limit=3)
    assert (ps2.images, ps2.classes, ps2.origin) == (3, ["cat", "dog", "ship"], art.ref)
    with pytest.raises(E.AlreadyExists):
        writer.register_probe_set("tiny", artifact=art.ref, limit=3)
    assert writer.register_probe_set("tiny", artifact=art.ref, limit=3, replace=True).images == 3
    assert [p.name for p in reader.list_probe_sets()] == ["tiny", "tiny-zip"]
    # thumbnails: decodable PNGs of the asked size (never enlarged), in the order asked
    images = reader.get_sample_images("tiny-zip", [2, 0], max_size=20)
    assert [i.index for i in images] == [2, 0] and images[0].label == "ship"
    for img in images:
        assert png_size(img.png) == (img.width, img.height) == (20, 20)
    assert {png_size(i.png) for i in reader.get_sample_images("tiny-zip", [1])} == {(32, 32)}
    with pytest.raises(E.NotFound):
        reader.get_sample_images("absent", [0])
    for indices, size, field in (
        ([3], 0, "indices[0]"),
        ([0, -1], 0, "indices[1]"),
        (list(range(65)), 0, "indices"),
        ([0], 513, "max_size"),
        ([], 0, "indices"),
    ):
        with pytest.raises(E.InvalidArgument) as e:
            reader.get_sample_images("tiny-zip", indices, max_size=size)
        assert e.value.field == field
    # a probe archive that is not an archive, an unknown artifact, a missing folder
    junk = writer.upload_artifact(_write(tmp_path / "junk.zip", b"not a zip"), "probe_archive")
    with pytest.raises(E.InvalidArgument) as e:
        writer.register_probe_set("junk", artifact=junk.ref)
    assert e.value.field == "artifact"
    with pytest.raises(E.NotFound):
        writer.register_probe_set("junk", artifact="artifact:" + "1" * 64)
    with pytest.raises(E.NotFound):
        writer.register_probe_set("junk", folder=str(tmp_path / "nowhere"))
    with pytest.raises(E.PermissionDenied):
        reader.register_probe_set("r", folder=str(folder))
    assert [p.name for p in reader.list_probe_sets()] == ["tiny", "tiny-zip"]


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_neuron_thumbnails_over_grpc(server, client, tmp_path) -> None:
    """GetNeuron / SearchNeurons with include_thumbnails on the session's indexed store, and
    `show --server` drawing its grid from them."""
    from click.testing import CliRunner

    from neuronatlas.cli import cli

    record, thumbs = client.get_neuron_thumbnails("resnet20", "layer3.0.conv2", 3)
    assert len(thumbs) == len(record.top_samples) == 8
    for t in thumbs:
        w, h = png_size(t)
        assert max(w, h) <= 96 and (w, h) == (32, 32)  # CIFAR images: never enlarged
    channel = grpc.insecure_channel(server.address)
    try:
        stub = pb_grpc_stub(channel)
        resp = stub.SearchNeurons(
            pb.SearchNeuronsRequest(text="dog", top_k=12, include_thumbnails=True),
            metadata=READ,
            timeout=60,
        )
        counts = [len(h.top_samples) for h in resp.results]
        assert all(c <= 8 for c in counts) and sum(counts) <= 64 and counts[0] == 8
        assert all(png_size(s.thumbnail) == (32, 32) for h in resp.results for s in h.top_samples)
        plain = stub.SearchNeurons(pb.SearchNeuronsRequest(text="dog", top_k=12), metadata=READ)
        assert all(not h.top_samples for h in plain.results)
        n = stub.GetNeuron(
            pb.GetNeuronRequest(neuron=pb.NeuronRef(model_id="resnet20", layer="layer3.0.conv2")),
            metadata=READ,
        ).neuron
        assert all(not s.thumbnail for s in n.top_samples)
    finally:
        channel.close()
    out = tmp_path / "grid.png"
    res = CliRunner().invoke(
        cli,
        ["show", "resnet20/layer3.0.conv2/3", "--out", str(out), "--server", server.address],
        env={"NEURONATLAS_TOKEN": READ_TOKEN},
    )
    assert res.exit_code == 0, res.output
    assert png_size(out.read_bytes())[0] > 300


def pb_grpc_stub(channel):
    from neuronatlas.v1 import neuronatlas_pb2_grpc

    return neuronatlas_pb2_grpc.NeuronAtlasServiceStub(channel)


# -- the CLI: register --server, models update, delete --------------------------------------------
def test_cli_register_update_delete(zoo, reader, cifar_models, home, tmp_path) -> None:
    from click.testing import CliRunner

    from neuronatlas.cli import cli

    runner = CliRunner()
    weights = cifar_models[32]
    remote = {"NEURONATLAS_SERVER": zoo.address, "NEURONATLAS_TOKEN": WRITE_TOKEN}
    res = runner.invoke(
        cli,
        [
            "register",
            "r32",
            *cifar_args(32, weights),
            "--tag",
            "zoo",
        ],
        env=remote,
    )
    assert res.exit_code == 0, res.output
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert f"artifact:{sha}" in res.output and "status registered" in res.output
    entry = reader.get_model("r32")
    assert entry.weights_sha256 == sha and entry.source["weights"] == f"artifact:{sha}"
    res = runner.invoke(
        cli,
        [
            "models",
            "update",
            "r32",
            "--display-name",
            "ResNet 32",
            "--tag",
            "a",
            "--tag",
            "b",
            "--json",
        ],
        env=remote,
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["tags"] == ["a", "b"]
    assert reader.get_model("r32").display_name == "ResNet 32"
    listed = runner.invoke(cli, ["models"], env=remote)
    assert listed.exit_code == 0 and "r32" in listed.output
    misplaced = runner.invoke(
        cli, ["models", "--json", "update", "r32", "--notes", "x"], env=remote
    )
    assert misplaced.exit_code != 0 and "after the sub-command" in misplaced.output
    # delete: asks first; a write token may not; admin may
    no = runner.invoke(cli, ["delete", "r32"], env=remote)
    assert no.exit_code != 0 and "--yes" in no.output
    denied = runner.invoke(cli, ["delete", "r32", "--yes"], env=remote)
    assert isinstance(denied.exception, E.PermissionDenied)
    admin = {**remote, "NEURONATLAS_TOKEN": ADMIN_TOKEN}
    gone = runner.invoke(cli, ["delete", "r32", "--yes"], env=admin)
    assert gone.exit_code == 0 and "deleted r32" in gone.output
    assert reader.list_models().items == []

    # direct mode, on the local store of NEURONATLAS_HOME (the home fixture)
    local = {"NEURONATLAS_SERVER": ""}
    res = runner.invoke(
        cli,
        [
            "register",
            "r20",
            *cifar_args(20, cifar_models[20]),
            "--notes",
            "local",
        ],
        env=local,
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        cli, ["models", "update", "r20", "--training-data", "CIFAR-10", "--clear-tags"], env=local
    )
    assert res.exit_code == 0 and "CIFAR-10" in res.output, res.output
    assert "r20" in runner.invoke(cli, ["models"], env=local).output
    unknown = runner.invoke(cli, ["models", "update", "nope", "--notes", "x"], env=local)
    assert isinstance(unknown.exception, E.NotFound)
    nothing = runner.invoke(cli, ["models", "update", "r20"], env=local)
    assert nothing.exit_code == 2 and "at least one" in nothing.output
    gone = runner.invoke(cli, ["delete", "r20", "--yes", "--json"], env=local)
    assert gone.exit_code == 0 and json.loads(gone.output)["model_id"] == "r20"
    assert "no models" in runner.invoke(cli, ["models"], env=local).output


# -- register / replace in the indexer: a failed or stale first registration is replaced ----------
def test_failed_registration_is_replaced_and_artifacts_resolve_at_build_time(
    tmp_path, cifar_dir, cifar_models, tiny_embedder
) -> None:
    from neuronatlas.core.artifacts import ArtifactStore
    from neuronatlas.core.config import Home
    from neuronatlas.core.records import ModelStatus
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import build_index, register_model
    from neuronatlas.indexer.sources import build_model

    home = Home(tmp_path / "home")
    weights = cifar_models[20]
    art = ArtifactStore(home.artifacts).put(
        [weights.read_bytes()], sha256=hashlib.sha256(weights.read_bytes()).hexdigest()
    )
    source = {"kind": "cifar_resnet", "depth": 20, "weights": art.ref}
    with pytest.raises(E.FailedPrecondition):
        build_model(source)  # a reference needs the artifacts to build
    probe = _small_probe_folder(cifar_dir, tmp_path / "probe")
    with EdgeStore(home.store) as store:
        wrong = {**source, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
        register_model(store, "r20", wrong, resolve=ArtifactStore(home.artifacts).resolve)
        with pytest.raises(E.InvalidArgument):  # a first index that fails: no such layer
            build_index(
                store,
                tiny_embedder,
                model_id="r20",
                source=wrong,
                probe_dir=probe,
                probe_name="p",
                home=home,
                layers=["nope*"],
                k=2,
                progress=False,
            )
        entry = store.get_model("r20")
        entry.status = ModelStatus.INDEXING  # and even a stale "indexing" left by a killed run
        store.put_model(entry)
        with pytest.raises(E.AlreadyExists, match="--replace"):
            build_index(
                store,
                tiny_embedder,
                model_id="r20",
                source=source,
                probe_dir=probe,
                probe_name="p",
                home=home,
                layers=["linear"],
                k=2,
                progress=False,
            )
        done = build_index(
            store,
            tiny_embedder,
            model_id="r20",
            source=source,
            probe_dir=probe,
            probe_name="p",
            home=home,
            layers=["linear"],
            k=2,
            progress=False,
            replace=True,
        )
        assert done.status is ModelStatus.INDEXED and done.source["weights"] == art.ref
        assert done.weights_sha256 == art.sha256 and done.neuron_count == 10


# -- the bad-input table over the catalogue methods -----------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    method: str
    request: Any  # a message, raw bytes, or (UploadArtifact) a list of messages
    expect: Code | str
    field: str | None = None
    metadata: Any = WRITE


CASES: list[Case] = []
OK = "OK"


def case(id, method, request, expect=Code.INVALID_ARGUMENT, field=None, metadata=WRITE) -> None:
    CASES.append(Case(f"{method}: {id}", method, request, expect, field, metadata))


RM = zpb.RegisterModelRequest
GOOD_SOURCE = {"kind": "cifar_resnet", "depth": 20, "weights": "artifact:" + "a" * 64}
for name, mid in (("empty", ""), ("slash", "a/b"), ("4000 chars", "m" * 4000), ("space", "a b")):
    case(
        f"model id {name}",
        "RegisterModel",
        RM(model_id=mid, source=struct(GOOD_SOURCE)),
        field="model_id",
    )
case("no source", "RegisterModel", RM(model_id="m"), field="source")
case(
    "source without kind",
    "RegisterModel",
    RM(model_id="m", source=struct({"depth": 20})),
    field="source.kind",
)
case(
    "source kind a number",
    "RegisterModel",
    RM(model_id="m", source=struct({"kind": 5})),
    field="source.kind",
)
case(
    "unknown kind",
    "RegisterModel",
    RM(model_id="m", source=struct({"kind": "onnx"})),
    field="source.kind",
)
case(
    "4000-char kind",
    "RegisterModel",
    RM(model_id="m", source=struct({"kind": "k" * 4000})),
    field="source.kind",
)
case(
    "unknown key",
    "RegisterModel",
    RM(model_id="m", source=struct({**GOOD_SOURCE, "lr": 0.1})),
    field="source.lr",
)
case(
    "NaN depth",
    "RegisterModel",
    RM(model_id="m", source=struct({**GOOD_SOURCE, "depth": float("nan")})),
    field="source.depth",
)
case(
    "depth 1e300",
    "RegisterModel",
    RM(model_id="m", source=struct({**GOOD_SOURCE, "depth": 1e300})),
    field="source.depth",
)
case(
    "depth as text",
    "RegisterModel",
    RM(model_id="m", source=struct({**GOOD_SOURCE, "depth": "20"})),
    field="source.depth",
)
case(
    "input_size 1e6",
    "RegisterModel",
    RM(model_id="m", source=struct({**GOOD_SOURCE, "input_size": 1e6})),
    field="source.input_size",
)
case(
    "resize 5000x5000",
    "RegisterModel",
    RM(model_id="m", source=struct({**GOOD_SOURCE, "resize": [5000, 5000]})),
    field="source.resize",
)
case(
    "weights a number",
    "RegisterModel",
    RM(model_id="m", source=struct({**GOOD_SOURCE, "weights": 7})),
    field="source.weights",
)
case(
    "kwargs huge",
    "RegisterModel",
    RM(
        model_id="m",
        source=struct(
            {
                "kind": "torchvision",
                "name": "resnet18",
                "random_init": True,
                "kwargs": {"num_classes": 1e9},
            }
        ),
    ),
    field="source.kwargs.num_classes",
)
case(
    "kwargs not an object",
    "RegisterModel",
    RM(model_id="m", source=struct({**GOOD_SOURCE, "kwargs": [1]})),
    field="source.kwargs",
)
DEEP: dict[str, Any] = {"z": 1}
for _key in "abcdefghijkl":
    DEEP = {_key: DEEP}
case(
    "deep source",
    "RegisterModel",
    RM(model_id="m", source=struct({**GOOD_SOURCE, "kwargs": DEEP})),
    field=None,
)
case(
    "python factory",
    "RegisterModel",
    RM(model_id="m", source=struct({"kind": "python", "factory": "os:getcwd"})),
    Code.PERMISSION_DENIED,
)
case(
    "artifact not uploaded",
    "RegisterModel",
    RM(model_id="m", source=struct(GOOD_SOURCE)),
    Code.NOT_FOUND,
)
case(
    "artifact ref not hex",
    "RegisterModel",
    RM(model_id="m", source=struct({**GOOD_SOURCE, "weights": "artifact:zz"})),
    field="source.weights",
)
case(
    "server file missing",
    "RegisterModel",
    RM(model_id="m", source=struct({**GOOD_SOURCE, "weights": "/nonexistent/w.th"})),
    Code.FAILED_PRECONDITION,
)
case(
    "torchvision unknown name",
    "RegisterModel",
    RM(model_id="m", source=struct({"kind": "torchvision", "name": "nonet", "random_init": True})),
    field="source.name",
)
case(
    "random_init not a bool",
    "RegisterModel",
    RM(model_id="m", source=struct({"kind": "cifar_resnet", "depth": 20, "random_init": "yes"})),
    field="source.random_init",
)
case(
    "65 tags",
    "RegisterModel",
    RM(model_id="m", source=struct(GOOD_SOURCE), tags=[f"t{i}" for i in range(65)]),
    field="tags",
)
case(
    "blank tag",
    "RegisterModel",
    RM(model_id="m", source=struct(GOOD_SOURCE), tags=["ok", " "]),
    field="tags[1]",
)
case(
    "201-char display name",
    "RegisterModel",
    RM(model_id="m", source=struct(GOOD_SOURCE), display_name="d" * 201),
    field="display_name",
)
case(
    "NUL in notes",
    "RegisterModel",
    RM(model_id="m", source=struct(GOOD_SOURCE), notes="a\x00b"),
    field="notes",
)
case(
    "65-char request_id",
    "RegisterModel",
    RM(model_id="m", source=struct(GOOD_SOURCE), request_id="r" * 65),
    field="request_id",
)
case(
    "request_id with spaces",
    "RegisterModel",
    RM(model_id="m", source=struct(GOOD_SOURCE), request_id="a b"),
    field="request_id",
)
case(
    "read token",
    "RegisterModel",
    RM(model_id="m", source=struct(GOOD_SOURCE)),
    Code.PERMISSION_DENIED,
    metadata=READ,
)
case(
    "worker token",
    "RegisterModel",
    RM(model_id="m", source=struct(GOOD_SOURCE)),
    Code.PERMISSION_DENIED,
    metadata=WORKER,
)

UM = zpb.UpdateModelRequest
FM = field_mask_pb2.FieldMask
case("empty mask", "UpdateModel", UM(model=pb.Model(model_id="m")), field="update_mask")
case(
    "unknown path",
    "UpdateModel",
    UM(model=pb.Model(model_id="m"), update_mask=FM(paths=["weights_sha256"])),
    field="update_mask.paths[0]",
)
case(
    "4000-char path",
    "UpdateModel",
    UM(model=pb.Model(model_id="m"), update_mask=FM(paths=["p" * 4000])),
    field="update_mask.paths[0]",
)
case(
    "unknown model",
    "UpdateModel",
    UM(model=pb.Model(model_id="m"), update_mask=FM(paths=["notes"])),
    Code.NOT_FOUND,
)
case(
    "bad model id",
    "UpdateModel",
    UM(model=pb.Model(model_id="a/b"), update_mask=FM(paths=["notes"])),
    field="model.model_id",
)
case("no model", "UpdateModel", UM(update_mask=FM(paths=["notes"])), field="model.model_id")
case(
    "too many tags",
    "UpdateModel",
    UM(model=pb.Model(model_id="m", tags=["t"] * 65), update_mask=FM(paths=["tags"])),
    field="model.tags",
)
case(
    "read token",
    "UpdateModel",
    UM(model=pb.Model(model_id="m"), update_mask=FM(paths=["notes"])),
    Code.PERMISSION_DENIED,
    metadata=READ,
)

RP = zpb.RegisterProbeSetRequest
case("no origin", "RegisterProbeSet", RP(name="p"), field="origin")
case("bad name", "RegisterProbeSet", RP(name="../p", folder="/tmp"), field="name")
case("empty name", "RegisterProbeSet", RP(folder="/tmp"), field="name")
case("negative limit", "RegisterProbeSet", RP(name="p", folder="/tmp", limit=-1), field="limit")
case("empty folder", "RegisterProbeSet", RP(name="p", folder=""), field="folder")
case("NUL in folder", "RegisterProbeSet", RP(name="p", folder="/tmp/\x00x"), field="folder")
case(
    "missing folder", "RegisterProbeSet", RP(name="p", folder="/nonexistent/images"), Code.NOT_FOUND
)
case(
    "artifact not a ref", "RegisterProbeSet", RP(name="p", artifact="/tmp/x.zip"), field="artifact"
)
case(
    "artifact not hex", "RegisterProbeSet", RP(name="p", artifact="artifact:xyz"), field="artifact"
)
case(
    "artifact unknown",
    "RegisterProbeSet",
    RP(name="p", artifact="artifact:" + "b" * 64),
    Code.NOT_FOUND,
)
case(
    "read token",
    "RegisterProbeSet",
    RP(name="p", folder="/tmp"),
    Code.PERMISSION_DENIED,
    metadata=READ,
)

case("read token is enough", "ListProbeSets", zpb.ListProbeSetsRequest(), OK, metadata=READ)
case("no token", "ListProbeSets", zpb.ListProbeSetsRequest(), Code.UNAUTHENTICATED, metadata=())

GS = zpb.GetSampleImagesRequest
case("no probe set", "GetSampleImages", GS(indices=[0]), field="probe_set", metadata=READ)
case(
    "bad probe set name",
    "GetSampleImages",
    GS(probe_set="a/b", indices=[0]),
    field="probe_set",
    metadata=READ,
)
case(
    "unknown probe set",
    "GetSampleImages",
    GS(probe_set="nope", indices=[0]),
    Code.NOT_FOUND,
    metadata=READ,
)
case("no indices", "GetSampleImages", GS(probe_set="nope"), field="indices", metadata=READ)
case(
    "65 indices",
    "GetSampleImages",
    GS(probe_set="nope", indices=list(range(65))),
    field="indices",
    metadata=READ,
)
for v in (-1, 513, 2**31 - 1, -(2**31)):
    case(
        f"max_size {v}",
        "GetSampleImages",
        GS(probe_set="nope", indices=[0], max_size=v),
        field="max_size",
        metadata=READ,
    )

SHA = hashlib.sha256(b"payload").hexdigest()
HEADER = zpb.UploadArtifactRequest(header=zpb.ArtifactHeader(sha256=SHA, size=7, name="p.bin"))
CHUNK = zpb.UploadArtifactRequest(chunk=b"payload")
case("empty stream", "UploadArtifact", [], field="header")
case("chunk first", "UploadArtifact", [CHUNK, HEADER], field="header")
case("two headers", "UploadArtifact", [HEADER, HEADER, CHUNK], field="header")
case(
    "digest mismatch",
    "UploadArtifact",
    [zpb.UploadArtifactRequest(header=zpb.ArtifactHeader(sha256="0" * 64, size=7)), CHUNK],
    field="header.sha256",
)
case(
    "digest not hex",
    "UploadArtifact",
    [zpb.UploadArtifactRequest(header=zpb.ArtifactHeader(sha256="xyz", size=7)), CHUNK],
    field="header.sha256",
)
case("truncated", "UploadArtifact", [HEADER], field="chunk")
case("longer than announced", "UploadArtifact", [HEADER, CHUNK, CHUNK], field="chunk")
case(
    "size over the limit",
    "UploadArtifact",
    [zpb.UploadArtifactRequest(header=zpb.ArtifactHeader(sha256=SHA, size=2**62)), CHUNK],
    field="header.size",
)
case(
    "negative size",
    "UploadArtifact",
    [zpb.UploadArtifactRequest(header=zpb.ArtifactHeader(sha256=SHA, size=-7)), CHUNK],
    field="header.size",
)
case(
    "name with a path",
    "UploadArtifact",
    [zpb.UploadArtifactRequest(header=zpb.ArtifactHeader(sha256=SHA, size=7, name="a/b")), CHUNK],
    field="header.name",
)
case(
    "unknown kind",
    "UploadArtifact",
    [zpb.UploadArtifactRequest(header=zpb.ArtifactHeader(sha256=SHA, size=7, kind=42)), CHUNK],
    field="header.kind",
)
case("read token", "UploadArtifact", [HEADER, CHUNK], Code.PERMISSION_DENIED, metadata=READ)
case("no token", "UploadArtifact", [HEADER, CHUNK], Code.UNAUTHENTICATED, metadata=())
case(
    "malformed chunk bytes",
    "UploadArtifact",
    [HEADER.SerializeToString(), b"\x12\xff"],
    field="request",
)


# malformed wire bytes and oversized requests on every unary catalogue method
OVERSIZED = unknown_field(4_600_000)  # unknown field 1023
UNARY = ["RegisterModel", "UpdateModel", "RegisterProbeSet", "ListProbeSets", "GetSampleImages"]
for method in UNARY:
    meta = READ if method in ("ListProbeSets", "GetSampleImages") else WRITE
    case("truncated varint", method, b"\x08\xff", field="request", metadata=meta)
    case("length past the end", method, b"\x0a\xff\xff\xff\x0f", field="request", metadata=meta)
    case("4.6 MB unknown field", method, OVERSIZED, field="request", metadata=meta)


@pytest.fixture(scope="module")
def table_server(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("zoo-table"))
    channel = grpc.insecure_channel(
        srv.address, options=[("grpc.max_send_message_length", 16 * 1024 * 1024)]
    )
    yield srv, channel
    channel.close()
    srv.stop(grace=1.0)


def _call(channel: grpc.Channel, c: Case) -> bytes:
    path = f"/{ZOO.full_name}/{c.method}"
    if c.method == "UploadArtifact":
        fn = channel.stream_unary(path)
        msgs = [m if isinstance(m, bytes) else m.SerializeToString() for m in c.request]
        return fn(iter(msgs), metadata=c.metadata, timeout=60)
    payload = c.request if isinstance(c.request, bytes) else c.request.SerializeToString()
    return channel.unary_unary(path)(payload, metadata=c.metadata, timeout=60)


def test_table_has_40_catalogue_cases() -> None:
    assert len(CASES) >= 40, len(CASES)
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.method for c in CASES} == set(UNARY) | {"UploadArtifact"}


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_catalogue_input(c: Case, table_server) -> None:
    _, channel = table_server
    try:
        _call(channel, c)
    except grpc.RpcError as err:
        code, fields = refusal(err)
        assert c.expect is not OK, f"refused with {code.name}: {err.details()}"
        assert code is c.expect, f"{code.name} ({err.details()}), expected {c.expect}"
        if c.field is not None:
            assert c.field in fields, (fields, err.details())
        return
    assert c.expect == OK, "accepted"


PROPERTY = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


@pytest.mark.parametrize("method", [*UNARY, "UploadArtifact"])
@PROPERTY
@given(payload=st.binary(max_size=300))
def test_random_bytes_to_catalogue_methods(method: str, payload: bytes, table_server) -> None:
    """Random bytes (as the only message of an upload stream, too) never end in INTERNAL."""
    _, channel = table_server
    meta = READ if method in ("ListProbeSets", "GetSampleImages") else WRITE
    c = Case("random", method, [payload] if method == "UploadArtifact" else payload, "ANY")
    try:
        _call(channel, Case(c.id, c.method, c.request, c.expect, None, meta))
    except grpc.RpcError as err:
        refusal(err)


@PROPERTY
@given(
    probe_set=st.one_of(st.text(max_size=20), st.sampled_from(["nope", "", "a/b", "..", "p"])),
    indices=st.lists(st.integers(-(2**31), 2**31 - 1), max_size=70),
    max_size=st.integers(-(2**31), 2**31 - 1),
)
def test_random_sample_image_requests(probe_set, indices, max_size, table_server) -> None:
    _, channel = table_server
    req = GS(probe_set=probe_set, indices=indices, max_size=max_size)
    try:
        _call(channel, Case("random", "GetSampleImages", req, "ANY", None, READ))
    except grpc.RpcError as err:
        refusal(err)


def test_zz_table_wrote_nothing_and_server_serves(table_server) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    srv, channel = table_server
    assert srv.atlas.store.list_models() == []
    assert artifacts_on_disk(srv) == []
    assert not srv.zoo.home.probes.exists() or not list(srv.zoo.home.probes.iterdir())
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "neuronatlas.v1.ZooService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
