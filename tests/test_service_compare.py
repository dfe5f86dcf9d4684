"""CompareModels and AuditModel over gRPC: a real server on an ephemeral port over the store the
real indexer filled (resnet20 + resnet32; the ``server`` fixtures are in conftest.py)."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest
from helpers import AUTH, call_fails
from helpers import SERVICE_LAYERS as LAYERS

from neuronatlas.core.errors import FailedPrecondition, NotFound
from neuronatlas.core.queries import Atlas
from neuronatlas.service import convert as C
from neuronatlas.service.client import Client
from neuronatlas.v1 import neuronatlas_pb2 as pb

pytestmark = pytest.mark.integration


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def _check_matrix(m: pb.Matrix, rows: list[str], cols: list[str]) -> None:
    assert (m.rows, m.cols) == (len(rows), len(cols))
    assert list(m.row_labels) == rows and list(m.col_labels) == cols
    assert len(m.values) == m.rows * m.cols and _finite(m.values)


# -- CompareModels --------------------------------------------------------------------------------
def test_compare_models_over_grpc(stub) -> None:
    resp = stub.CompareModels(
        pb.CompareModelsRequest(model_a="resnet20", model_b="resnet32", page_size=10),
        metadata=AUTH,
        timeout=60,
    )
    assert resp.model_a.model_id == "resnet20" and resp.model_b.model_id == "resnet32"
    assert list(resp.model_a.layers) == LAYERS and list(resp.model_b.layers) == LAYERS
    assert resp.model_a.neuron_count == sum(resp.model_a.layer_sizes) > 0
    for m in (resp.layer_similarity, resp.layer_similarity_floor):
        _check_matrix(m, LAYERS, LAYERS)
    # activation sketches exist (the indexer wrote them under the server's home)
    assert resp.has_activation and resp.cka_samples >= 2
    for m in (resp.cka, resp.cka_floor):
        _check_matrix(m, LAYERS, LAYERS)
    assert len(resp.alignment.matched_depth) == len(LAYERS) == len(resp.cka_alignment.matched_depth)
    for s in (
        resp.alignment.rho,
        resp.best_match,
        resp.matching,
        resp.coverage_a_to_b,
        resp.coverage_b_to_a,
    ):
        assert math.isfinite(s.value) and math.isfinite(s.noise_floor)
    assert (
        0.0 <= resp.coverage_a_to_b.value <= 1.0 and 0.0 <= resp.coverage_b_to_a.noise_floor <= 1.0
    )
    assert resp.matching.value > resp.matching.noise_floor  # trained nets beat the rotation null
    assert resp.total_pairs == min(resp.model_a.neuron_count, resp.model_b.neuron_count)
    assert len(resp.pairs) == 10 and resp.next_page_token
    sims = [p.similarity for p in resp.pairs]
    assert sims == sorted(sims, reverse=True)
    assert all(p.a.model_id == "resnet20" and p.b.model_id == "resnet32" for p in resp.pairs)


def test_compare_pairs_pagination_walks_every_pair(client: Client) -> None:
    first = client.compare_models("resnet20", "resnet32", limit=40)
    seen = list(first.pairs)
    for offset in range(40, first.pairs_total, 40):
        page = client.compare_models("resnet20", "resnet32", offset=offset, limit=40)
        assert page.cached  # later pages come from the server's compare cache
        seen.extend(page.pairs)
    assert len(seen) == first.pairs_total
    assert client.compare_models("resnet20", "resnet32", limit=None).pairs == seen
    keys = {(p.a_layer, p.a_unit) for p in seen}
    assert len(keys) == len(seen)  # one-to-one
    sims = [p.similarity for p in seen]
    assert sims == sorted(sims, reverse=True)
    sim = first.semantic.layer_similarity
    assert sim.shape == (3, 3) and np.isfinite(sim).all()
    assert first.activation is not None and first.activation.cka.shape == (3, 3)


def test_compare_semantic_only_and_layer_filter(client: Client) -> None:
    cmp = client.compare_models(
        "resnet20", "resnet32", LAYERS[:2], activation=False, tau=0.5, limit=5
    )
    assert cmp.activation is None
    assert cmp.a.layers == LAYERS[:2] and cmp.semantic.layer_similarity.shape == (2, 2)
    assert cmp.semantic.tau == pytest.approx(0.5) and len(cmp.pairs) == 5


def test_compare_unknown_model_is_not_found(client: Client, stub) -> None:
    code, _, _ = call_fails(
        stub.CompareModels, pb.CompareModelsRequest(model_a="resnet20", model_b="nope")
    )
    assert code is grpc.StatusCode.NOT_FOUND
    with pytest.raises(NotFound):
        client.compare_models("nope", "resnet32")


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"model_a": "", "model_b": "resnet32"}, "model_a"),
        ({"model_a": "resnet20", "model_b": ""}, "model_b"),
        ({"model_a": "x" * 200, "model_b": "resnet32"}, "model_a"),
        ({"model_a": "resnet20", "model_b": "resnet32", "tau": 2.0}, "tau"),
        ({"model_a": "resnet20", "model_b": "resnet32", "layers": ["no.such.layer"]}, "layers"),
        ({"model_a": "resnet20", "model_b": "resnet32", "layers": ["x" * 300]}, "layers"),
        ({"model_a": "resnet20", "model_b": "resnet32", "page_size": -1}, "page_size"),
        ({"model_a": "resnet20", "model_b": "resnet32", "page_token": "garbage"}, "page_token"),
    ],
)
def test_compare_bad_args_are_invalid_argument(stub, kwargs, field) -> None:
    code, fields, _ = call_fails(stub.CompareModels, pb.CompareModelsRequest(**kwargs))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and field in fields


def test_compare_page_token_is_bound_to_its_request(stub) -> None:
    first = stub.CompareModels(
        pb.CompareModelsRequest(model_a="resnet20", model_b="resnet32", page_size=5),
        metadata=AUTH,
        timeout=60,
    )
    code, fields, _ = call_fails(
        stub.CompareModels,
        pb.CompareModelsRequest(
            model_a="resnet32", model_b="resnet20", page_size=5, page_token=first.next_page_token
        ),
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and fields == ["page_token"]


# -- AuditModel ------------------------------------------------------------------------------------
def test_audit_model_over_grpc(client: Client, stub) -> None:
    req = pb.AuditModelRequest(
        model_id="resnet20", valid=["airplane", "dog"], spurious=["sky", "grass"]
    )
    resp = stub.AuditModel(req, metadata=AUTH, timeout=60)
    assert [c.concept for c in resp.concepts] == ["airplane", "dog", "sky", "grass"]
    assert [c.kind for c in resp.concepts] == ["valid", "valid", "spurious", "spurious"]
    assert list(resp.layers) == LAYERS and sum(resp.layer_sizes) == resp.neuron_count > 0
    for c in resp.concepts:
        assert 0.0 <= c.share.value <= 1.0 and 0.0 <= c.share.noise_floor <= 1.0
        assert c.aligned_neurons == round(c.share.value * resp.neuron_count)
        assert len(c.layer_share) == len(LAYERS) and all(0.0 <= s <= 1.0 for s in c.layer_share)
        assert math.isfinite(c.threshold)
    for s in (resp.valid_share, resp.spurious_share):
        assert 0.0 <= s.value <= 1.0 and 0.0 <= s.noise_floor <= 1.0
    assert all(
        0.0 <= s <= 1.0 for s in list(resp.layer_valid_share) + list(resp.layer_spurious_share)
    )
    for n in resp.spurious_neurons:
        assert (
            n.concept in ("sky", "grass") and n.neuron.model_id == "resnet20" and n.top_sample_ids
        )
    # the typed client gives the core Audit back
    audit = client.audit_model("resnet20", ["airplane", "dog"], ["sky", "grass"], threshold=0.0)
    assert [c.concept for c in audit.concepts] == ["airplane", "dog", "sky", "grass"]
    assert all(c.threshold == pytest.approx(0.0) for c in audit.concepts)
    assert 0.0 <= audit.spurious_share <= 1.0 and audit.layer_valid_share.shape == (len(LAYERS),)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"model_id": "resnet20"}, "valid"),
        ({"model_id": "", "valid": ["dog"]}, "model_id"),
        ({"model_id": "resnet20", "valid": ["dog"] * 60 + ["cat"] * 60}, "valid"),
        ({"model_id": "resnet20", "spurious": ["x" * 300]}, "spurious[0]"),
        ({"model_id": "resnet20", "valid": ["  "]}, "valid[0]"),
        ({"model_id": "resnet20", "valid": ["dog"], "spurious": ["dog"]}, "spurious"),
    ],
)
def test_audit_bad_args_are_invalid_argument(stub, kwargs, field) -> None:
    code, fields, _ = call_fails(stub.AuditModel, pb.AuditModelRequest(**kwargs))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and field in fields


def test_audit_unknown_model_is_not_found(client: Client) -> None:
    with pytest.raises(NotFound):
        client.audit_model("nope", ["dog"])


def test_audit_without_embedder_is_failed_precondition(server, indexed_home) -> None:
    from neuronatlas.service.server import build_server

    atlas = Atlas(
        server.atlas.store, None, backend="edge"
    )  # like `serve --no-embedder`, same store
    with (
        build_server(atlas, "127.0.0.1:0", home=indexed_home) as srv,
        Client(srv.address, timeout=30) as c,
    ):
        with pytest.raises(FailedPrecondition):
            c.audit_model("resnet20", ["dog"])
        # comparison needs no embedder
        assert c.compare_models("resnet20", "resnet32", activation=False, limit=1).pairs_total > 0


def test_matrix_round_trip() -> None:
    m = np.arange(6, dtype=np.float32).reshape(2, 3)
    msg = C.matrix_to_pb(m, ["a", "b"], ["x", "y", "z"])
    assert (msg.rows, msg.cols) == (2, 3) and list(msg.values) == [0, 1, 2, 3, 4, 5]
    assert np.array_equal(C.matrix_from_pb(msg), m)
