"""The QueryBackend pieces around the two implementations: the CLI's ``compare`` / ``audit``
against a server, ``serve --grace``, one text cache, one embedder check and one wording of a
refused filter (checked at the Atlas and at the store alike)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from neuronatlas.core import errors as E
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.embedder.text_cache import TextCache
from neuronatlas.core.queries import Atlas, TextQuery
from neuronatlas.core.records import EmbedderInfo
from neuronatlas.core.store.base import LabelScope, SearchFilter
from neuronatlas.core.validate import check_filter
from neuronatlas.service.server import build_server

INFO = EmbedderInfo("test:counting", "w0", 8)


class Counting(Embedder):
    """Counts text-tower calls; with ``own_cache`` it caches texts itself (like open_clip)."""

    def __init__(self, own_cache: bool, info: EmbedderInfo = INFO):
        self.info = info
        self.preprocess = lambda img: img
        self.calls = 0
        if own_cache:
            self.text_cache = TextCache(16)

    def encode_text(self, texts):
        cache = getattr(self, "text_cache", None)
        rows = cache.lookup(texts) if cache is not None else [None] * len(texts)
        if any(r is None for r in rows):
            self.calls += 1
        out = np.ones((len(texts), self.info.dim), np.float32) / np.sqrt(self.info.dim)
        if cache is not None:
            cache.store(texts, out)
        return out

    def encode_images(self, images, batch_size=64):
        raise E.FailedPrecondition("no image tower")


class _NoStore:
    """Just enough of a store for the embedder check."""

    embedder = INFO

    def close(self) -> None:
        pass


@pytest.mark.parametrize("own_cache", [False, True])
def test_a_text_query_is_cached_once(own_cache: bool) -> None:
    emb = Counting(own_cache)
    atlas = Atlas(_NoStore(), emb)
    first = atlas.embed_text("striped texture")
    again = atlas.embed_text("striped texture")
    assert emb.calls == 1 and np.array_equal(first, again)
    assert atlas.text_cache.hits == 1 and atlas.text_cache.misses == 1
    assert (atlas.text_cache is emb.text_cache) if own_cache else not hasattr(emb, "text_cache")
    if own_cache:  # the Atlas keeps no second copy
        assert len(atlas._text_cache) == 0


def test_one_embedder_check_for_atlas_and_store(edge_store) -> None:
    edge_store.bind_embedder(INFO)
    other = EmbedderInfo("test:other", "w1", 8)
    with pytest.raises(E.EmbedderMismatch) as at_store:
        edge_store.bind_embedder(other)
    with pytest.raises(E.EmbedderMismatch) as at_atlas:
        Atlas(edge_store, Counting(False, other)).embedder()
    assert str(at_store.value) == str(at_atlas.value)


@pytest.mark.parametrize(
    "flt",
    [
        SearchFilter(depth_min=0.8, depth_max=0.2),
        SearchFilter(model_ids=()),
        SearchFilter(layers=()),
        SearchFilter(min_clarity=float("nan")),
        SearchFilter(label=" "),
        SearchFilter(label_scope=LabelScope.TOP1),  # a scope needs a label
        SearchFilter(label="cat", label_scope="top3"),  # type: ignore[arg-type]
    ],
)
def test_one_wording_for_a_bad_filter(edge_store, flt: SearchFilter) -> None:
    from helpers import DIM, add_model
    from helpers import INFO as STORE_INFO

    edge_store.bind_embedder(STORE_INFO)
    add_model(edge_store, "m", {"conv1": 4})
    with pytest.raises(E.InvalidArgument) as direct:
        check_filter(flt)
    with pytest.raises(E.InvalidArgument) as at_store:
        edge_store.search(np.ones(DIM), flt=flt)
    with pytest.raises(E.InvalidArgument) as at_atlas:
        Atlas(edge_store).search_neurons(TextQuery("x"), flt)
    assert str(at_store.value) == str(at_atlas.value) == str(direct.value)
    assert at_store.value.field == at_atlas.value.field == direct.value.field


def test_serve_grace_reaches_the_server(edge_store, monkeypatch) -> None:
    srv = build_server(Atlas(edge_store), "127.0.0.1:0", grace=0.25)
    seen: list[float] = []
    real_stop = srv.grpc_server.stop
    monkeypatch.setattr(srv.grpc_server, "stop", lambda g: seen.append(g) or real_stop(g))
    srv.start()
    srv.stop()  # what SIGTERM does
    assert seen == [0.25]


# -- compare and audit through --server ---------------------------------------------------------
@pytest.fixture(scope="module")
def open_server(server, tiny_embedder, indexed_home):
    """A server without tokens over the session server's store and home."""
    atlas = Atlas(server.atlas.store, tiny_embedder, backend="edge", home=indexed_home)
    with build_server(atlas, "127.0.0.1:0") as srv:
        yield srv


@pytest.mark.integration
def test_compare_and_audit_commands_talk_to_a_server(open_server, tmp_path: Path) -> None:
    from neuronatlas.cli import cli

    runner = CliRunner()
    env = {"NEURONATLAS_SERVER": open_server.address, "NEURONATLAS_TOKEN": ""}
    out = runner.invoke(
        cli, ["compare", "resnet20", "resnet32", "--out", str(tmp_path / "cmp")], env=env
    )
    assert out.exit_code == 0, out.output
    cmp = open_server.atlas.compare_models("resnet20", "resnet32", limit=None)
    rows = (tmp_path / "cmp" / "pairs.tsv").read_text().splitlines()
    assert len(rows) == 1 + cmp.pairs_total
    first = rows[1].split("\t")
    best = cmp.pairs[0]
    assert first[1:3] == [best.a_layer, str(best.a_unit)] and first[4:6] == [
        best.b_layer,
        str(best.b_unit),
    ]
    assert "Activation view" in (tmp_path / "cmp" / "summary.txt").read_text()
    assert {p.name for p in (tmp_path / "cmp").glob("*.png")} == {
        "semantic_heatmap.png",
        "cka_heatmap.png",
        "depth_alignment.png",
    }
    refused = runner.invoke(
        cli,
        ["compare", "resnet20", "resnet32", "--out", str(tmp_path / "x"), "--no-cache"],
        env=env,
    )
    assert isinstance(refused.exception, E.InvalidArgument)
    audit = runner.invoke(
        cli,
        [
            *("audit", "resnet20", "--valid", "dog,airplane", "--spurious", "sky"),
            *("--out", str(tmp_path / "audit")),
        ],
        env=env,
    )
    assert audit.exit_code == 0, audit.output
    text = (tmp_path / "audit" / "audit.txt").read_text()
    assert "Concept audit of resnet20" in text and "airplane" in text and "sky" in text
