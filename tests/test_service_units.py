"""Service building blocks without a server: paging tokens, token parsing, the error mapping
and the proto <-> record conversions."""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2

from neuronatlas.core import errors as E
from neuronatlas.core.queries import Description, ModelCount, StoreStats
from neuronatlas.core.records import (
    EmbedderInfo,
    Label,
    LayerInfo,
    ModelEntry,
    ModelStatus,
    NeuronRecord,
    TopSample,
)
from neuronatlas.core.store.base import Hit, SearchFilter
from neuronatlas.service import convert as C
from neuronatlas.service import paging
from neuronatlas.service.auth import ADMIN, READ, TokenSet, required_scope
from neuronatlas.service.errors import (
    DeadlineExceeded,
    ServiceUnavailable,
    code_for,
    from_rpc_error,
    to_rpc_status,
)
from neuronatlas.v1 import neuronatlas_pb2 as pb


# -- paging ----------------------------------------------------------------------------------------
def test_page_size_follows_aip158() -> None:
    assert paging.page_size(0, default=20, maximum=100) == 20
    assert paging.page_size(7, default=20, maximum=100) == 7
    assert paging.page_size(10_000, default=20, maximum=100) == 100
    with pytest.raises(E.InvalidArgument) as e:
        paging.page_size(-1, default=20, maximum=100)
    assert e.value.field == "page_size"


def test_page_token_round_trip_and_binding() -> None:
    pages = paging.PageTokens.random()
    req = pb.SearchNeuronsRequest(text="dog", top_k=50, page_size=10)
    token = pages.encode(req, 30)
    assert token and token.isascii() and "=" not in token and len(token) == paging.TOKEN_CHARS
    req.page_token = token
    req.page_size = 25  # page size may change between pages
    assert pages.decode(req) == 30
    other = pb.SearchNeuronsRequest(text="cat", top_k=50, page_token=token)
    with pytest.raises(E.InvalidArgument, match="not issued for this request"):
        pages.decode(other)
    assert pages.encode(req, None) == ""
    assert pages.decode(pb.SearchNeuronsRequest(text="dog")) == 0
    # another server's key, another method, garbage, a valid token cut short or grown
    foreign = paging.PageTokens.random().encode(req, 30)
    for bad in (
        "%%%",
        "bm90IGpzb24",
        foreign,
        pages.encode(pb.ListModelsRequest(), 30),
        token[:-1],
        token + "A",
        token[:-2] + ("AA" if token[-2:] != "AA" else "BB"),
        "eyJvIjogMWUzMDAsICJmIjogIngifQ",  # the old JSON format
    ):
        with pytest.raises(E.InvalidArgument) as e:
            pages.decode(pb.SearchNeuronsRequest(text="dog", page_token=bad))
        assert e.value.field == "page_token"


def test_page_token_keys(tmp_path) -> None:
    req = pb.ListModelsRequest()
    # a shared secret: two replicas accept each other's tokens
    a = paging.PageTokens.load("a-shared-secret-0123", env={})
    b = paging.PageTokens.load(env={paging.KEY_ENV: "a-shared-secret-0123"})
    assert b.offset_of(req, a.encode(req, 7)) == 7
    with pytest.raises(E.InvalidArgument) as e:
        paging.PageTokens.load(env={paging.KEY_ENV: "short"})
    assert e.value.field == "page_token_key"
    # the key kept in the home survives a restart and is private
    home = tmp_path / "home"
    first = paging.PageTokens.load(home=home, env={})
    again = paging.PageTokens.load(home=home, env={})
    assert first.source == "home" and again.offset_of(req, first.encode(req, 3)) == 3
    key_file = home / "page_token.key"
    assert key_file.stat().st_mode & 0o077 == 0
    key_file.write_text("not hex\n")  # a damaged key file is replaced
    fresh = paging.PageTokens.load(home=home, env={})
    assert len(bytes.fromhex(key_file.read_text().strip())) == 32
    with pytest.raises(E.InvalidArgument):
        fresh.offset_of(req, first.encode(req, 3))
    # no usable home: a key for this process
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert paging.PageTokens.load(home=blocker / "home", env={}).source == "process"
    assert repr(first) == "PageTokens(source='home')"  # never the key


def test_public_status_messages_and_details() -> None:
    from google.rpc import error_details_pb2

    from neuronatlas.service.errors import MAX_MESSAGE_BYTES, public_message

    leaky = "cannot identify image file <_io.BytesIO object at 0x7f3a2b1c>"
    assert public_message(leaky) == "cannot identify image file an object"
    assert public_message("no sketch (expected /srv/na/home/sketches/m/gen0.npz)") == (
        "no sketch (expected …/gen0.npz)"
    )
    assert public_message("no neuron resnet20/layer1.0.conv1/3") == (
        "no neuron resnet20/layer1.0.conv1/3"
    )
    huge = public_message("é" * 10_000)
    assert len(huge.encode()) <= MAX_MESSAGE_BYTES and huge.endswith("…")
    status = to_rpc_status(
        E.NotFound("unknown model 'm'", resource_type="model", resource_name="m")
    )
    proto = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    info = error_details_pb2.ResourceInfo()
    assert proto.details[1].Unpack(info) and (info.resource_type, info.resource_name) == (
        "model",
        "m",
    )
    long = to_rpc_status(E.InvalidArgument("x" * 100_000, field="f" * 1000))
    assert len(dict(long.trailing_metadata)["grpc-status-details-bin"]) <= 2048


# -- auth ------------------------------------------------------------------------------------------
def test_tokens_from_env_and_file(tmp_path) -> None:
    f = tmp_path / "tokens.txt"
    f.write_text("# service tokens\nread:reader-secret-1\n\nadmin:admin-secret-2  # ops\n")
    tokens = TokenSet.load(
        env={
            "NEURONATLAS_TOKENS": "read:env-reader-3, admin:env-admin-4",
            "NEURONATLAS_TOKENS_FILE": str(f),
        }
    )
    assert tokens.scope_of("reader-secret-1") == READ
    assert tokens.scope_of("admin-secret-2") == ADMIN
    assert tokens.scope_of("env-reader-3") == READ and tokens.scope_of("env-admin-4") == ADMIN
    assert tokens.scope_of("reader-secret") is None and tokens.scope_of("") is None
    shown = repr(tokens) + str(tokens)
    assert "secret" not in shown and "env-" not in shown and "read=2" in shown
    assert not TokenSet.load(env={})


@pytest.mark.parametrize(
    "text, secret",
    [
        ("reader-secret-1", "reader-secret-1"),  # no scope
        ("owner:abcdefghijk", "abcdefghijk"),  # unknown scope
        ("read:tiny", "tiny"),  # too short
        ("read:", None),  # empty
    ],
)
def test_bad_token_entries_are_rejected_without_echoing_them(text: str, secret: str | None) -> None:
    with pytest.raises(E.InvalidArgument) as e:
        TokenSet.load(env={"NEURONATLAS_TOKENS": text})
    assert "NEURONATLAS_TOKENS line 1" in str(e.value)
    if secret:
        assert secret not in str(e.value)


def test_missing_tokens_file(tmp_path) -> None:
    with pytest.raises(E.InvalidArgument, match="cannot read tokens file"):
        TokenSet.load(tmp_path / "absent.txt", env={})


def test_required_scopes() -> None:
    assert required_scope("/neuronatlas.v1.NeuronAtlasService/SearchNeurons") == READ
    assert required_scope("/neuronatlas.v1.NeuronAtlasService/DeleteModel") == ADMIN
    assert required_scope("/neuronatlas.v1.NeuronAtlasService/VerifyStore") == ADMIN
    assert required_scope("/grpc.health.v1.Health/Check") is None
    assert required_scope("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo") is None
    assert required_scope("/some.Other/Method") == READ


# -- error mapping ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc, code",
    [
        (E.InvalidArgument("bad", field="top_k"), grpc.StatusCode.INVALID_ARGUMENT),
        (E.NotFound("gone"), grpc.StatusCode.NOT_FOUND),
        (E.NotIndexed("empty"), grpc.StatusCode.FAILED_PRECONDITION),
        (E.EmbedderMismatch("other"), grpc.StatusCode.FAILED_PRECONDITION),
        (E.StoreUnavailable("down"), grpc.StatusCode.UNAVAILABLE),
        (E.StoreCorrupted("broken"), grpc.StatusCode.DATA_LOSS),
        (E.Unauthenticated("who"), grpc.StatusCode.UNAUTHENTICATED),
        (E.PermissionDenied("no"), grpc.StatusCode.PERMISSION_DENIED),
        (E.WeightsUnavailable("offline"), grpc.StatusCode.FAILED_PRECONDITION),
        (KeyError("bug"), grpc.StatusCode.INTERNAL),
    ],
)
def test_error_codes(exc, code) -> None:
    assert code_for(exc)[0] is code
    status = to_rpc_status(exc)
    assert status.code is code
    if code is grpc.StatusCode.INTERNAL:
        assert "bug" not in status.details  # no internals leak to the caller


class _FakeRpcError(grpc.RpcError):
    def __init__(self, status: grpc.Status):
        self._s = status

    def code(self):
        return self._s.code

    def details(self):
        return self._s.details

    def trailing_metadata(self):
        return self._s.trailing_metadata


def test_status_details_round_trip_to_our_errors() -> None:
    status = to_rpc_status(E.InvalidArgument("top_k must be in 1..1000", field="top_k"))
    raw = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    br = error_details_pb2.BadRequest()
    assert any(d.Unpack(br) for d in raw.details if d.Is(br.DESCRIPTOR))
    assert br.field_violations[0].field == "top_k"
    back = from_rpc_error(_FakeRpcError(status))
    assert isinstance(back, E.InvalidArgument) and back.field == "top_k" and "1..1000" in str(back)
    assert isinstance(from_rpc_error(_FakeRpcError(to_rpc_status(E.NotIndexed("x")))), E.NotIndexed)
    assert isinstance(
        from_rpc_error(_FakeRpcError(to_rpc_status(E.StoreUnavailable("x")))), E.StoreUnavailable
    )
    assert isinstance(
        from_rpc_error(_FakeRpcError(to_rpc_status(ServiceUnavailable("x")))), ServiceUnavailable
    )
    assert isinstance(
        from_rpc_error(_FakeRpcError(to_rpc_status(DeadlineExceeded("x")))), DeadlineExceeded
    )


# -- conversions -----------------------------------------------------------------------------------
def _record() -> NeuronRecord:
    return NeuronRecord(
        model_id="m1",
        layer="layer2.0.conv1",
        layer_index=3,
        depth=0.5,
        unit=7,
        vector=np.linspace(-1, 1, 8, dtype=np.float32),
        top_samples=[TopSample("cat/0001.jpg", 1, 2.5), TopSample("dog/0002.jpg", 2, 1.5)],
        labels={
            "broden": [Label("striped", 0.2), Label("dotted", 0.1)],
            "places": [Label("beach", 0.3)],
        },
        label_set=["striped", "beach"],
        clarity=0.7,
        polysemanticity=0.2,
        redundancy=0.9,
        stats={"mean": 0.1, "max": 2.5},
        generation=1,
    )


def test_neuron_round_trip() -> None:
    rec = _record()
    back = C.neuron_from_pb(
        pb.Neuron.FromString(C.neuron_to_pb(rec, include_vector=True).SerializeToString())
    )
    np.testing.assert_allclose(back.vector, rec.vector)
    assert back.labels["broden"][0].label == "striped" and back.labels["places"][
        0
    ].score == pytest.approx(0.3)
    assert back.top_samples[0].sample_id == "cat/0001.jpg" and back.generation == 1
    assert back.label_set == rec.label_set and back.stats["max"] == pytest.approx(2.5)
    assert C.neuron_to_pb(rec).vector == []


def test_hit_carries_best_label_per_vocabulary() -> None:
    hit = C.hit_to_pb(Hit(_record(), 0.42))
    assert hit.key == "m1/layer2.0.conv1/7" and [l.label for l in hit.top_labels] == [
        "beach",
        "striped",
    ]
    back = C.hit_from_pb(hit)
    assert back.score == pytest.approx(0.42) and back.record.key == "m1/layer2.0.conv1/7"
    assert back.record.top_label.label == "beach"
    assert hit.neuron == C.ref_to_pb("m1", "layer2.0.conv1", 7) and hit.neuron.kind == ""
    assert (hit.layer_index, hit.depth, hit.quality) == (3, 0.5, C._quality(_record()))
    # written in place into a response (what the servicer does): the same message; a
    # component's kind is named on the wire, a neuron's is not
    component = dataclasses.replace(_record(), kind="nmf", unit=2)
    response = pb.SearchNeuronsResponse()
    C.hits_to_pb([Hit(_record(), 0.42), Hit(component, 0.3)], response.results)
    assert response.results[0] == hit
    assert response.results[1].neuron == C.ref_to_pb("m1", "layer2.0.conv1", 2, "nmf")
    assert response.results[1].neuron.kind == "nmf" and response.results[1].key.endswith("2")


def test_model_and_stats_round_trip() -> None:
    m = ModelEntry(
        "m1",
        architecture="resnet20",
        source={"kind": "cifar_resnet", "depth": 20},
        layers=[LayerInfo("conv1", 0, 0.0, 16, "conv")],
        status=ModelStatus.INDEXED,
        created_at=1_700_000_000.5,
        indexed_at=1_700_000_100.0,
        tags=["cifar"],
    )
    back = C.model_from_pb(C.model_to_pb(m))
    assert (
        back.source == {"kind": "cifar_resnet", "depth": 20} and back.status is ModelStatus.INDEXED
    )
    assert (
        back.layers == m.layers
        and back.created_at == pytest.approx(m.created_at)
        and back.tags == ["cifar"]
    )
    assert C.model_to_pb(ModelEntry("m2", indexed_at=0.0)).HasField("index_time") is False
    s = StoreStats(
        16,
        [ModelCount("m1", ModelStatus.INDEXED, 16, {"conv1": 16})],
        1024,
        EmbedderInfo("e", "w", 8),
        "edge",
    )
    assert C.stats_from_pb(C.stats_to_pb(s)) == s


def test_filter_and_description_round_trip() -> None:
    assert C.filter_from_pb(pb.NeuronFilter()) is None
    flt = SearchFilter(
        model_ids=("a", "b"),
        layers=("l",),
        depth_min=0.0,
        depth_max=0.5,
        min_clarity=0.25,
        label="x",
    )
    assert C.filter_from_pb(C.filter_to_pb(flt)) == flt
    d = Description("m", "l", 1, {"custom": [Label("a", 0.5)]}, ["a"])
    back = C.description_from_pb(C.description_to_pb(d))
    assert back.labels["custom"][0].label == "a" and back.label_set == ["a"]
