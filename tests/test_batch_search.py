"""Several searches in one call: ``Atlas.search_many`` in process and ``BatchSearchNeurons``
over gRPC. Each search is answered as it would be alone, in order; the batch's text queries
are embedded in one text-model call; a batch is all or nothing, its errors naming the search.
(Both backends giving the same answers and refusals: ``test_congruence.py``.)"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from helpers import AUTH, DIM, INFO, FakeEmbedder, add_model, call_fails, check_refusal

from neuronatlas.core import errors as E
from neuronatlas.core import validate as V
from neuronatlas.core.queries import Atlas, NeuronQuery, Search, TextQuery, VectorQuery
from neuronatlas.core.store.base import SearchFilter
from neuronatlas.v1 import neuronatlas_pb2 as pb


@pytest.fixture()
def atlas(edge_store) -> Atlas:
    edge_store.bind_embedder(INFO)
    add_model(edge_store, "a", {"conv1": 12, "conv2": 20}, seed=1)
    add_model(edge_store, "b", {"conv1": 12, "conv2": 20}, seed=2)
    return Atlas(edge_store, FakeEmbedder())


def _alone(atlas: Atlas, s: Search):
    return atlas.search_neurons(
        s.query, s.flt, top_k=s.top_k, per_model=s.per_model, offset=s.offset, limit=s.limit
    )


def test_each_search_is_answered_as_alone_in_order(atlas: Atlas) -> None:
    rng = np.random.default_rng(0)
    searches = [
        Search(TextQuery("striped texture"), top_k=7),
        Search(VectorQuery(rng.standard_normal(DIM).astype(np.float32)), top_k=5),
        Search(NeuronQuery("a", "conv2", 3), SearchFilter(model_ids=("b",)), top_k=4),
        Search(TextQuery("dog"), per_model=2, top_k=2),
        Search(TextQuery("dog"), top_k=20, offset=5, limit=5),
    ]
    pages = atlas.search_many(searches)
    assert len(pages) == len(searches)
    for s, page in zip(searches, pages, strict=True):
        alone = _alone(atlas, s)
        assert [(h.record.key, h.score) for h in page.items] == [
            (h.record.key, h.score) for h in alone.items
        ]
        assert page.next_offset == alone.next_offset
    # the filter and the per-model grouping did their work (not a vacuous comparison)
    assert {h.record.model_id for h in pages[2].items} == {"b"} and len(pages[2].items) == 4
    assert [h.record.model_id for h in pages[3].items].count("a") == 2
    assert pages[4].next_offset == 10


def test_the_texts_of_a_batch_are_embedded_in_one_model_call(atlas: Atlas) -> None:
    emb = atlas.embedder()
    assert isinstance(emb, FakeEmbedder) and emb.calls == 0
    texts = ["dog", "cat", "dog", "striped texture"]
    atlas.search_many([Search(TextQuery(t), top_k=3) for t in texts])
    assert emb.calls == 1  # three different texts, one call
    atlas.search_many([Search(TextQuery(t)) for t in ("cat", "dog")])
    assert emb.calls == 1  # cached: no call
    rows = atlas.embed_texts(texts)
    assert rows.shape == (4, DIM) and np.array_equal(rows[0], rows[2])
    assert np.array_equal(rows[1], atlas.embed_text("cat"))


@pytest.mark.parametrize(
    ("searches", "error", "field"),
    [
        ([], E.InvalidArgument, "searches"),
        ([Search(TextQuery("dog"))] * (V.MAX_BATCH_SEARCHES + 1), E.InvalidArgument, "searches"),
        (
            [Search(TextQuery("dog")), Search(TextQuery("x"), top_k=0)],
            E.InvalidArgument,
            "searches[1].top_k",
        ),
        ([Search(TextQuery(" "))], E.InvalidArgument, "searches[0].text"),
        (
            [Search(TextQuery("dog")), Search(VectorQuery(np.ones(3)))],
            E.InvalidArgument,
            "searches[1].vector",
        ),
        ([Search(TextQuery("dog")), Search(NeuronQuery("a", "conv1", 99))], E.NotFound, None),
    ],
)
def test_a_bad_search_fails_the_batch_naming_it(atlas: Atlas, searches, error, field) -> None:
    emb = atlas.embedder()
    assert isinstance(emb, FakeEmbedder)
    with pytest.raises(error) as caught:
        atlas.search_many(searches)
    assert getattr(caught.value, "field", None) == field
    if field and field.startswith("searches["):
        assert str(caught.value).startswith(field.split(".")[0] + ": ")
    if error is E.NotFound:
        assert str(caught.value).startswith("searches[1]: no neuron")
    # a search that is invalid as given is refused before any text is embedded
    if error is E.InvalidArgument:
        assert emb.calls == 0


# -- over gRPC ---------------------------------------------------------------------------------
def _requests() -> list[pb.SearchNeuronsRequest]:
    return [
        pb.SearchNeuronsRequest(text="striped texture", top_k=6),
        pb.SearchNeuronsRequest(
            neuron=pb.NeuronRef(model_id="resnet20", layer="layer2.0.conv2", unit=4),
            filter=pb.NeuronFilter(model_ids=["resnet32"]),
            top_k=5,
        ),
        pb.SearchNeuronsRequest(text="airplane", per_model=2, top_k=2),
        pb.SearchNeuronsRequest(text="dog", top_k=30, page_size=10),
    ]


def test_the_batch_call_answers_as_the_single_calls(stub, cifar_dir) -> None:
    image = next(iter(sorted(cifar_dir.glob("*/*.jpg")))).read_bytes()
    requests = [*_requests(), pb.SearchNeuronsRequest(image=image, top_k=3)]
    batch = stub.BatchSearchNeurons(pb.BatchSearchNeuronsRequest(requests=requests), metadata=AUTH)
    assert len(batch.responses) == len(requests)
    for req, got in zip(requests, batch.responses, strict=True):
        alone = stub.SearchNeurons(req, metadata=AUTH)
        assert len(got.results) > 0
        assert got == alone  # hits, scores and the next page's token alike
    # the page token of a batch answer continues that search with SearchNeurons
    nxt = pb.SearchNeuronsRequest()
    nxt.CopyFrom(requests[3])
    nxt.page_token = batch.responses[3].next_page_token
    second = stub.SearchNeurons(nxt, metadata=AUTH)
    assert len(second.results) == 10
    whole = stub.SearchNeurons(pb.SearchNeuronsRequest(text="dog", top_k=30), metadata=AUTH)
    keys = [(h.neuron.model_id, h.neuron.layer, h.neuron.unit) for h in whole.results]
    assert [(h.neuron.model_id, h.neuron.layer, h.neuron.unit) for h in second.results] == keys[
        10:20
    ]


@pytest.mark.parametrize(
    ("requests", "code", "field"),
    [
        ([], grpc.StatusCode.INVALID_ARGUMENT, "requests"),
        (
            [pb.SearchNeuronsRequest(text="dog")] * (V.MAX_BATCH_SEARCHES + 1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests",
        ),
        (
            [pb.SearchNeuronsRequest(text="dog"), pb.SearchNeuronsRequest(text="cat", top_k=-1)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests[1].top_k",
        ),
        (
            [pb.SearchNeuronsRequest(text="dog"), pb.SearchNeuronsRequest()],
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests[1].query",
        ),
        (
            [pb.SearchNeuronsRequest(text="dog", page_token="not-a-token")],
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests[0].page_token",
        ),
        (
            [
                pb.SearchNeuronsRequest(
                    neuron=pb.NeuronRef(model_id="resnet20", layer="layer2.0.conv2", unit=9999)
                )
            ],
            grpc.StatusCode.NOT_FOUND,
            None,
        ),
    ],
)
def test_a_bad_batch_gets_its_own_status_naming_the_request(stub, requests, code, field) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.BatchSearchNeurons(pb.BatchSearchNeuronsRequest(requests=requests), metadata=AUTH)
    got, fields = check_refusal(caught.value, leaks=())
    assert got == code
    if field is not None:
        assert fields == [field]
    if len(requests) == 1:
        assert (caught.value.details() or "").startswith("requests[0]: ")


def test_the_batch_call_needs_the_read_scope(stub) -> None:
    code, _, _ = call_fails(
        stub.BatchSearchNeurons,
        pb.BatchSearchNeuronsRequest(requests=[pb.SearchNeuronsRequest(text="dog")]),
        metadata=(),
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED


# -- the CLI: several texts, one batch ---------------------------------------------------------
def test_the_cli_searches_several_texts_in_one_batch(server) -> None:
    import json

    from click.testing import CliRunner
    from helpers import READ_TOKEN

    from neuronatlas.cli import cli

    runner = CliRunner()
    env = {"NEURONATLAS_SERVER": server.address, "NEURONATLAS_TOKEN": READ_TOKEN}
    texts = ["striped texture", "airplane", "dog"]
    out = runner.invoke(cli, ["search", *texts, "--top-k", "4", "--json"], env=env)
    assert out.exit_code == 0, out.output
    got = json.loads(out.output)
    assert [g["query"] for g in got] == texts
    for text, g in zip(texts, got, strict=True):
        alone = runner.invoke(cli, ["search", text, "--top-k", "4", "--json"], env=env)
        assert [h["neuron"] for h in g["hits"]] == [h["neuron"] for h in json.loads(alone.output)]
        assert len(g["hits"]) == 4
    table = runner.invoke(cli, ["search", *texts[:2], "--top-k", "3"], env=env)
    assert table.exit_code == 0, table.output
    assert "== striped texture" in table.output and "== airplane" in table.output
    assert table.output.count("resnet") == 6
    both = runner.invoke(cli, ["search", "dog", "--like", "resnet20/layer1.0.conv1/2"], env=env)
    assert both.exit_code != 0 and "exactly one of TEXT" in str(both.exception)


class _Late:
    """A servicer context whose deadline passes after ``calls`` looks at the time left."""

    def __init__(self, calls: int):
        self.calls, self.status = calls, None

    def time_remaining(self) -> float:
        self.calls -= 1
        return 1.0 if self.calls >= 0 else 0.0

    def is_active(self) -> bool:
        return True

    def abort_with_status(self, status) -> None:
        self.status = status
        raise RuntimeError("aborted")


def test_a_batch_stops_at_its_deadline_between_searches(server) -> None:
    from neuronatlas.service.servicer import NeuronAtlasServicer

    servicer = NeuronAtlasServicer(server.atlas)
    vec = server.atlas.store.get_neuron("resnet20", "layer2.0.conv2", 1, with_vector=True).vector
    request = pb.BatchSearchNeuronsRequest(
        requests=[pb.SearchNeuronsRequest(vector=pb.Vector(values=vec.tolist()))] * 5
    )
    assert len(servicer.BatchSearchNeurons(request, _Late(100)).responses) == 5
    late = _Late(3)  # the call's own check, then two searches in time
    with pytest.raises(RuntimeError, match="aborted"):
        servicer.BatchSearchNeurons(request, late)
    assert late.status.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert late.status.details == "the deadline passed after 2 of 5 searches"


def test_a_batch_shares_one_thumbnail_budget(stub) -> None:
    from neuronatlas.service.zoo_catalogue import BATCH_THUMBNAILS, RESPONSE_THUMBNAILS

    one = pb.SearchNeuronsRequest(text="dog", top_k=20, include_thumbnails=True)
    alone = stub.SearchNeurons(one, metadata=AUTH, timeout=60)
    assert sum(len(h.top_samples) for h in alone.results) == RESPONSE_THUMBNAILS
    batch = stub.BatchSearchNeurons(
        pb.BatchSearchNeuronsRequest(requests=[one] * 3), metadata=AUTH, timeout=60
    )
    counts = [sum(len(h.top_samples) for h in r.results) for r in batch.responses]
    # earlier searches first, each within its own response's budget, all within the batch's
    assert counts == [RESPONSE_THUMBNAILS, BATCH_THUMBNAILS - RESPONSE_THUMBNAILS, 0]
    assert batch.responses[0] == alone  # thumbnails and all
    assert all(len(r.results) == 20 for r in batch.responses)  # the hits themselves all there
