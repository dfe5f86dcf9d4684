"""The gRPC service end to end: a real server on an ephemeral port, called over the network,
over a store filled by the real indexer (two CIFAR ResNets, 200 CIFAR-10 test images, the tiny
random open_clip embedder)."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from helpers import ADMIN_TOKEN, AUTH, READ_TOKEN, call_fails
from helpers import SERVICE_LAYERS as LAYERS

from neuronatlas.core.backend import all_models
from neuronatlas.core.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from neuronatlas.core.store.base import LabelScope, SearchFilter
from neuronatlas.service.client import Client
from neuronatlas.service.errors import DeadlineExceeded
from neuronatlas.v1 import neuronatlas_pb2 as pb

pytestmark = pytest.mark.integration


# -- health, reflection, auth ------------------------------------------------------------------
def test_health_reports_serving(client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.health("neuronatlas.v1.NeuronAtlasService") == "SERVING"


def test_reflection_lists_the_service(server) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.insecure_channel(server.address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"neuronatlas.v1.NeuronAtlasService", "grpc.health.v1.Health"} <= services
        fd = db.FindFileContainingSymbol("neuronatlas.v1.NeuronAtlasService")
        assert fd.package == "neuronatlas.v1"


def test_buf_curl_works_through_reflection(server) -> None:
    buf = shutil.which("buf") or shutil.which("buf", path=str(Path(sys.executable).parent))
    if not buf:
        pytest.skip("buf binary not found (pip install buf-bin)")
    out = subprocess.run(
        [
            buf,
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            "-H",
            f"Authorization: Bearer {READ_TOKEN}",
            "--data",
            '{"text": "striped texture", "top_k": 3}',
            f"http://{server.address}/neuronatlas.v1.NeuronAtlasService/SearchNeurons",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)["results"]
    assert len(results) == 3 and all(r["key"].startswith("resnet") for r in results)


def test_missing_token_is_unauthenticated(stub) -> None:
    code, _, reason = call_fails(stub.GetStats, pb.GetStatsRequest(), metadata=())
    assert code is grpc.StatusCode.UNAUTHENTICATED and reason == "UNAUTHENTICATED"
    code, _, _ = call_fails(
        stub.GetStats, pb.GetStatsRequest(), metadata=(("authorization", "Bearer nope-nope-nope"),)
    )
    assert code is grpc.StatusCode.UNAUTHENTICATED


def test_client_raises_our_error_types_for_auth(server) -> None:
    with Client(server.address) as anon, pytest.raises(Unauthenticated):
        anon.stats()
    with Client(server.address, token=READ_TOKEN) as reader, pytest.raises(PermissionDenied):
        reader.delete_model("resnet20")
    with Client(server.address, token=ADMIN_TOKEN) as admin:  # admin can read too; unknown model
        assert admin.stats().total_neurons > 0
        with pytest.raises(NotFound):
            admin.delete_model("no-such-model")


# -- catalogue and stats ---------------------------------------------------------------------------
def test_list_get_models_and_stats(client: Client) -> None:
    models = list(all_models(client))
    assert [m.model_id for m in models] == ["resnet20", "resnet32"]
    assert all(m.status.value == "indexed" and [l.name for l in m.layers] == LAYERS for m in models)
    page = client.list_models(limit=1)
    assert [m.model_id for m in page.items] == ["resnet20"] and page.next_offset == 1
    second = client.list_models(offset=page.next_offset, limit=1)
    assert [m.model_id for m in second.items] == ["resnet32"] and second.next_offset is None
    m = client.get_model("resnet32")
    assert m.source["depth"] == 32 and m.neuron_count == 16 + 32 + 64
    stats = client.stats()
    assert stats.total_neurons == 2 * (16 + 32 + 64)
    assert {c.model_id: c.layers for c in stats.models}["resnet20"] == dict(
        zip(LAYERS, (16, 32, 64), strict=False)
    )
    assert stats.size_bytes > 0 and stats.embedder.dim == 64 and stats.backend == "edge"


def test_get_model_unknown_is_not_found(stub) -> None:
    code, _, _ = call_fails(stub.GetModel, pb.GetModelRequest(model_id="resnet99"))
    assert code is grpc.StatusCode.NOT_FOUND
    code, fields, _ = call_fails(stub.GetModel, pb.GetModelRequest(model_id="bad/id"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and fields == ["model_id"]


# -- search ----------------------------------------------------------------------------------------
def test_text_search_matches_exact_cosine_ranking(client: Client, tiny_embedder, server) -> None:
    hits = client.search("striped texture", top_k=20).items
    assert len(hits) == 20
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    # recompute the ranking from the stored vectors
    q = tiny_embedder.encode_text(["striped texture"])[0]
    store = server.atlas.store
    vecs = {r.key: r.vector for m in ("resnet20", "resnet32") for r in store.scroll_neurons(m)}
    exact = sorted(vecs, key=lambda k: -float(vecs[k] @ q))[:20]
    assert len(set(exact) & {h.record.key for h in hits}) >= 18
    top = hits[0]
    assert top.score == pytest.approx(float(vecs[top.record.key] @ q), abs=1e-3)
    assert top.record.labels["broden"] and 0 <= top.record.depth <= 1  # best label per vocabulary


def test_repeated_text_query_hits_the_cache(client: Client, server) -> None:
    cache = server.atlas.text_cache
    client.search("a unique phrase for the cache test", top_k=3)
    misses, hits = cache.misses, cache.hits
    again = client.search("a unique phrase for the cache test", top_k=3)
    assert cache.misses == misses and cache.hits == hits + 1
    assert len(again.items) == 3


def test_search_by_vector_neuron_and_image(client: Client, cifar_dir: Path) -> None:
    ref = client.get_neuron("resnet20", "layer3.0.conv2", 5, with_vector=True)
    by_vec = client.search(vector=ref.vector, top_k=5).items
    assert by_vec[0].record.key == "resnet20/layer3.0.conv2/5" and by_vec[0].score == pytest.approx(
        1.0, abs=1e-3
    )
    by_ref = client.search(neuron="resnet20/layer3.0.conv2/5", top_k=5).items
    assert [h.record.key for h in by_ref] == [h.record.key for h in by_vec]
    image = next(iter(sorted((cifar_dir / "cat").glob("*.jpg")))).read_bytes()
    by_img = client.search(image=image, top_k=4).items
    assert len(by_img) == 4 and by_img[0].score >= by_img[-1].score


def test_search_pagination_walks_the_same_ranking(client: Client) -> None:
    full = [h.record.key for h in client.search("dog", top_k=25).items]
    paged, offset, pages = [], 0, 0
    while offset is not None:
        page = client.search("dog", top_k=25, offset=offset, limit=10)
        paged += [h.record.key for h in page.items]
        pages += 1
        offset = page.next_offset
    assert pages == 3 and paged == full


def test_page_token_is_bound_to_its_query(stub) -> None:
    first = stub.SearchNeurons(
        pb.SearchNeuronsRequest(text="dog", top_k=25, page_size=10), metadata=AUTH, timeout=20
    )
    assert first.next_page_token
    code, fields, _ = call_fails(
        stub.SearchNeurons,
        pb.SearchNeuronsRequest(
            text="cat", top_k=25, page_size=10, page_token=first.next_page_token
        ),
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and fields == ["page_token"]
    code, fields, _ = call_fails(
        stub.SearchNeurons, pb.SearchNeuronsRequest(text="dog", page_token="garbage!")
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and fields == ["page_token"]


def test_page_size_zero_defaults_and_large_is_clamped(client: Client, stub) -> None:
    assert len(client.search("dog").items) == 10  # top_k 0 -> 10, page_size 0 -> top_k
    resp = stub.SearchNeurons(
        pb.SearchNeuronsRequest(text="dog", top_k=300, page_size=10_000), metadata=AUTH, timeout=20
    )
    assert len(resp.results) == 100 and resp.next_page_token
    code, fields, _ = call_fails(
        stub.SearchNeurons, pb.SearchNeuronsRequest(text="dog", page_size=-1)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and fields == ["page_size"]


def test_filters_restrict_results(client: Client, server) -> None:
    flt = SearchFilter(model_ids=("resnet32",), layers=("layer2.0.conv2",))
    hits = client.search("wheel", filter=flt, top_k=50).items
    assert len(hits) == 32 and {(h.record.model_id, h.record.layer) for h in hits} == {
        ("resnet32", "layer2.0.conv2")
    }
    deep = client.search("wheel", filter=SearchFilter(depth_min=0.6), top_k=200).items
    assert deep and all(h.record.depth >= 0.6 for h in deep)
    clear = client.search("wheel", filter=SearchFilter(min_clarity=0.9), top_k=200).items
    assert all(h.record.clarity >= 0.9 for h in clear)
    label = client.get_neuron("resnet20", "layer1.0.conv1", 0).label_set[0]
    records = [
        r
        for m in ("resnet20", "resnet32")
        for r in server.atlas.store.scroll_neurons(m, with_vectors=False)
    ]
    carriers = {
        None: {r.key for r in records if label in r.label_set},  # default: the label set
        LabelScope.SET: {r.key for r in records if label in r.label_set},
        LabelScope.TOP1: {r.key for r in records if r.top_label and r.top_label.label == label},
        LabelScope.TOP5: {
            r.key
            for r in records
            if label in r.label_set or any(l.label == label for ls in r.labels.values() for l in ls)
        },
    }
    assert carriers[LabelScope.TOP1] <= carriers[LabelScope.SET] <= carriers[LabelScope.TOP5]
    for scope, want in carriers.items():
        flt = SearchFilter(label=label, label_scope=scope)
        labelled = client.search("wheel", filter=flt, top_k=1000).items
        assert {h.record.key for h in labelled} == want, scope


def test_per_model_grouping(client: Client) -> None:
    hits = client.search("airplane", per_model=2, top_k=10).items
    assert len(hits) == 4
    models = [h.record.model_id for h in hits]
    assert (
        models[0] == models[1]
        and models[2] == models[3]
        and set(models) == {"resnet20", "resnet32"}
    )
    assert hits[0].score >= hits[2].score and hits[0].score >= hits[1].score
    one_model_pages = client.search("airplane", per_model=1, top_k=10, limit=1)
    assert len(one_model_pages.items) == 1 and one_model_pages.next_offset == 1
    rest = client.search(
        "airplane", per_model=1, top_k=10, offset=one_model_pages.next_offset, limit=1
    )
    assert [h.record.model_id for h in one_model_pages.items + rest.items] == [models[0], models[2]]
    assert rest.next_offset is None


@pytest.mark.parametrize(
    "request_kwargs, field",
    [
        ({}, "query"),
        ({"text": ""}, "text"),
        ({"text": "x" * 1001}, "text"),
        ({"text": "dog", "top_k": 1001}, "top_k"),
        ({"text": "dog", "top_k": -3}, "top_k"),
        ({"text": "dog", "per_model": 101}, "per_model"),
        ({"image": b"not an image"}, "image"),
        ({"image": b"\xff" * (4 * 1024 * 1024 + 1)}, "image"),
        ({"vector": pb.Vector(values=[1.0, 2.0])}, "vector"),
        ({"vector": pb.Vector(values=[float("nan")] * 64)}, "vector"),
        ({"vector": pb.Vector(values=[0.0] * 64)}, "vector"),
        ({"neuron": pb.NeuronRef(model_id="resnet20", layer="conv1", unit=-1)}, "neuron.unit"),
        (
            {"text": "dog", "filter": pb.NeuronFilter(depth_min=0.8, depth_max=0.2)},
            "filter.depth_min",
        ),
        ({"text": "dog", "filter": pb.NeuronFilter(depth_max=1.5)}, "filter.depth_max"),
        (
            {"text": "dog", "filter": pb.NeuronFilter(label_scope=pb.LABEL_SCOPE_TOP1)},
            "filter.label_scope",
        ),
        (
            {"text": "dog", "filter": pb.NeuronFilter(label="dog", label_scope=99)},
            "filter.label_scope",
        ),
    ],
)
def test_bad_search_input_is_invalid_argument(stub, request_kwargs, field) -> None:
    code, fields, _ = call_fails(stub.SearchNeurons, pb.SearchNeuronsRequest(**request_kwargs))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert fields == [field]


def test_oversized_message_is_invalid_argument(stub) -> None:
    req = pb.SearchNeuronsRequest(text="dog", filter=pb.NeuronFilter(layers=["l" * 1000] * 5000))
    code, fields, _ = call_fails(stub.SearchNeurons, req)
    assert code is grpc.StatusCode.INVALID_ARGUMENT and fields == ["request"]


def test_unknown_or_unindexed_filter_model(stub) -> None:
    req = pb.SearchNeuronsRequest(text="dog", filter=pb.NeuronFilter(model_ids=["resnet99"]))
    assert call_fails(stub.SearchNeurons, req)[0] is grpc.StatusCode.NOT_FOUND


def test_deadline_is_honoured(server) -> None:
    with (
        Client(server.address, token=READ_TOKEN, timeout=1e-6) as hasty,
        pytest.raises(DeadlineExceeded),
    ):
        hasty.search("a query that cannot finish in a microsecond", top_k=5)


def test_concurrent_clients(server) -> None:
    queries = ["dog", "cat", "ship", "truck", "striped", "red", "sky", "grass"] * 4

    def run(q: str) -> list[str]:
        with Client(server.address, token=READ_TOKEN, timeout=30) as c:
            return [h.record.key for h in c.search(q, top_k=5).items]

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(run, queries))
    with Client(server.address, token=READ_TOKEN) as c:
        for q, keys in zip(queries[:8], results[:8], strict=False):
            assert keys == [h.record.key for h in c.search(q, top_k=5).items]


# -- neurons and labels ----------------------------------------------------------------------------
def test_get_neuron_returns_the_whole_record(client: Client, server) -> None:
    rec = client.get_neuron("resnet32", "layer2.0.conv2", 7, with_vector=True)
    stored = server.atlas.store.get_neuron("resnet32", "layer2.0.conv2", 7, with_vector=True)
    assert rec.key == stored.key and rec.layer_index == stored.layer_index
    assert [s.sample_id for s in rec.top_samples] == [s.sample_id for s in stored.top_samples]
    assert len(rec.top_samples) == 8 and rec.top_samples[0].sample_id.endswith(".jpg")
    acts = [s.activation for s in rec.top_samples]
    assert acts == sorted(acts, reverse=True)
    assert rec.clarity == pytest.approx(stored.clarity, abs=1e-6)
    assert set(rec.stats) >= {"mean", "max"} and rec.labels["broden"] and rec.label_set
    np.testing.assert_allclose(rec.vector, stored.vector, atol=1e-6)
    assert client.get_neuron("resnet32", "layer2.0.conv2", 7).vector.size == 0


def test_get_neuron_unknown(client: Client) -> None:
    with pytest.raises(NotFound):
        client.get_neuron("resnet32", "layer2.0.conv2", 999)
    with pytest.raises(NotFound):
        client.get_neuron("resnet77", "layer2.0.conv2", 1)


def test_describe_neuron_stored_and_custom(client: Client, tiny_embedder) -> None:
    stored = client.describe_neuron("resnet20", "layer3.0.conv2", 3, top_n=3)
    assert list(stored.labels) == ["broden"] and len(stored.labels["broden"]) == 3
    custom_labels = ["dog", "cat", "airplane", "stripes", "water"]
    custom = client.describe_neuron("resnet20", "layer3.0.conv2", 3, labels=custom_labels, top_n=5)
    got = custom.labels["custom"]
    assert sorted(l.label for l in got) == sorted(custom_labels)
    assert [l.score for l in got] == sorted((l.score for l in got), reverse=True)
    # the same maths in-process gives the same scores
    from neuronatlas.core.labels import LabelScorer

    vec = client.get_neuron("resnet20", "layer3.0.conv2", 3, with_vector=True).vector
    expect = LabelScorer(tiny_embedder, custom_labels, name="custom").top(vec[None], n=5)[0]
    assert [l.label for l in expect] == [l.label for l in got]
    assert got[0].score == pytest.approx(expect[0].score, abs=1e-4)
    with pytest.raises(InvalidArgument) as e:
        client.describe_neuron("resnet20", "layer3.0.conv2", 3, labels=["ok", ""])
    assert e.value.field == "labels[1]"


def _all_label_hits(client: Client, label: str, **kw) -> list:
    return client.find_by_label(label, limit=10_000, **kw).items  # the client follows pages


def test_find_by_label_exact_prefix_and_pages(client: Client) -> None:
    rec = client.get_neuron("resnet20", "layer2.0.conv2", 1)
    label = rec.labels["broden"][0].label
    hits = _all_label_hits(client, label)
    assert "resnet20/layer2.0.conv2/1" in {h.record.key for h in hits}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    prefix = _all_label_hits(client, label[:2], prefix=True)
    assert {h.record.key for h in hits} <= {h.record.key for h in prefix}
    first = client.find_by_label(label[:1], prefix=True, limit=3)
    assert len(first.items) == 3 and first.next_offset == 3
    second = client.find_by_label(label[:1], prefix=True, offset=first.next_offset, limit=3)
    both = client.find_by_label(label[:1], prefix=True, limit=6).items
    assert [h.record.key for h in first.items + second.items] == [h.record.key for h in both]
    only32 = client.find_by_label(
        label[:1], prefix=True, flt=SearchFilter(model_ids=("resnet32",))
    ).items
    assert only32 and {h.record.model_id for h in only32} == {"resnet32"}
    assert client.find_by_label("no label is called this").items == []


def test_find_by_label_scopes(client: Client, stub, server) -> None:
    rec = client.get_neuron("resnet20", "layer2.0.conv2", 1)
    label = rec.labels["broden"][0].label
    found = {
        scope: {h.record.key for h in _all_label_hits(client, label, scope=scope)}
        for scope in LabelScope
    }
    assert found[LabelScope.TOP1] <= found[LabelScope.SET] <= found[LabelScope.TOP5]
    assert {h.record.key for h in _all_label_hits(client, label)} == found[LabelScope.SET]
    records = [
        r for m in ("resnet20", "resnet32") for r in server.atlas.store.scroll_neurons(m, False)
    ]
    assert found[LabelScope.TOP1] == {
        r.key for r in records if r.top_label is not None and r.top_label.label == label
    }
    # on the wire: UNSPECIFIED is the label set; an unknown scope is INVALID_ARGUMENT
    plain = stub.FindNeuronsByLabel(
        pb.FindNeuronsByLabelRequest(label=label, page_size=100), metadata=AUTH, timeout=20
    )
    explicit = stub.FindNeuronsByLabel(
        pb.FindNeuronsByLabelRequest(label=label, page_size=100, scope=pb.LABEL_SCOPE_SET),
        metadata=AUTH,
        timeout=20,
    )
    assert [h.key for h in plain.results] == [h.key for h in explicit.results]
    code, fields, _ = call_fails(
        stub.FindNeuronsByLabel, pb.FindNeuronsByLabelRequest(label=label, scope=99)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and fields == ["scope"]


def test_cli_match_option(server, home: Path) -> None:
    from click.testing import CliRunner

    from neuronatlas.cli import cli

    runner = CliRunner()
    env = {"NEURONATLAS_SERVER": server.address, "NEURONATLAS_TOKEN": READ_TOKEN}
    label = server.atlas.store.get_neuron("resnet20", "layer2.0.conv2", 1).labels["broden"][0]
    counts = {}
    for match in ("top1", "set", "top5"):
        out = runner.invoke(
            cli,
            ["labels", "find", label.label, "--match", match, "--limit", "1000", "--json"],
            env=env,
        )
        assert out.exit_code == 0, out.output
        counts[match] = len(json.loads(out.output))
        searched = runner.invoke(
            cli,
            ["search", "dog", "--label", label.label, "--match", match, "--top-k", "999", "--json"],
            env=env,
        )
        assert searched.exit_code == 0, searched.output
        assert len(json.loads(searched.output)) == counts[match]
    assert 1 <= counts["top1"] <= counts["set"] <= counts["top5"]
    default = runner.invoke(
        cli, ["labels", "find", label.label, "--limit", "1000", "--json"], env=env
    )
    assert len(json.loads(default.output)) == counts["set"]
    bad = runner.invoke(cli, ["search", "dog", "--match", "top1"], env=env)  # no --label
    assert bad.exit_code != 0


# -- CLI against the server ------------------------------------------------------------------------
def test_cli_talks_to_the_server(server, home: Path) -> None:
    from click.testing import CliRunner

    from neuronatlas.cli import cli

    runner = CliRunner()
    env = {"NEURONATLAS_SERVER": server.address, "NEURONATLAS_TOKEN": READ_TOKEN}
    out = runner.invoke(cli, ["search", "striped texture", "--per-model", "1", "--json"], env=env)
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)
    assert {r["model_id"] for r in rows} == {"resnet20", "resnet32"}
    table = runner.invoke(cli, ["search", "striped texture", "--top-k", "3"], env=env)
    assert table.exit_code == 0 and table.output.count("resnet") == 3 and "score" in table.output
    neuron = runner.invoke(cli, ["neuron", "resnet20/layer1.0.conv1/2", "--json"], env=env)
    assert json.loads(neuron.output)["neuron"] == "resnet20/layer1.0.conv1/2"
    models = runner.invoke(cli, ["models"], env=env)
    assert "resnet20" in models.output and "indexed" in models.output
    stats = json.loads(runner.invoke(cli, ["stats", "--json"], env=env).output)
    assert stats["total_neurons"] == 224
    described = runner.invoke(
        cli,
        [
            "labels",
            "describe",
            "resnet20/layer1.0.conv1/2",
            "--label",
            "red",
            "--label",
            "blue",
            "--json",
        ],
        env=env,
    )
    assert [l["label"] for l in json.loads(described.output)["labels"]["custom"]] in (
        ["red", "blue"],
        ["blue", "red"],
    )
    denied = runner.invoke(
        cli, ["stats"], env={"NEURONATLAS_SERVER": server.address, "NEURONATLAS_TOKEN": ""}
    )
    assert isinstance(denied.exception, Unauthenticated)
