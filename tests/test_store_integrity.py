"""Damaged embedded stores: what opening them, querying them and ``verify`` do.

The template store holds three synthetic models of 400 neurons (128-d): m0 and m1 were
optimised into an HNSW segment (a small indexing threshold makes that happen for a few hundred
points), m2 was written afterwards and sits in the appendable segment. Each test damages a copy
the way a disk or a careless hand would, then checks:

- open: counts are checked per model (cheap); a model that lost points or vectors is marked
  ``failed`` with the reason and never served partially, the others keep serving;
- reads of a store whose files cannot be decoded raise ``StoreCorrupted``, never an engine error;
- ``verify`` (the store method, the CLI command, the admin RPC) reads every point and reports
  each damaged model by count or content digest; the CLI exits 1 on a problem and 2 (one line)
  on an error.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import add_model, copy_store, make_records

from neuronatlas.core import errors as E
from neuronatlas.core.queries import Atlas
from neuronatlas.core.records import EmbedderInfo, ModelStatus
from neuronatlas.core.store.base import SearchFilter
from neuronatlas.core.store.edge import EdgeStore

DIM = 128
INFO = EmbedderInfo("test:emb", "random:0", DIM)
LAYERS = {"l1": 200, "l2": 200}
N = sum(LAYERS.values())
OPTIMISED = ("m0", "m1")  # in the HNSW segment
APPENDED = "m2"  # in the appendable segment


class SmallSegments(EdgeStore):
    indexing_threshold_kb = 64  # 400 x 128-d vectors (200 KiB) get an HNSW segment


def segments(path: Path) -> list[Path]:
    return sorted((path / "neurons" / "segments").iterdir())


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The store, and the name of its HNSW segment directory (holding m0 and m1)."""
    path = tmp_path_factory.mktemp("integrity") / "store"
    with SmallSegments(path) as store:
        store.bind_embedder(INFO)
        for i, model_id in enumerate(OPTIMISED):
            add_model(store, model_id, LAYERS, seed=i, dim=DIM)
        store.optimize()
    hnsw = [d.name for d in segments(path) if (d / "vector_index").is_dir()]
    assert len(hnsw) == 1, hnsw
    with SmallSegments(path) as store:
        add_model(store, APPENDED, LAYERS, seed=2, dim=DIM)  # not optimised: appendable segment
    return path, hnsw[0]


@pytest.fixture()
def damaged(template: tuple[Path, str], tmp_path: Path) -> tuple[Path, Path]:
    """A fresh copy of the template: (store path, its HNSW segment directory)."""
    src, hnsw = template
    path = tmp_path / "store"
    copy_store(src, path)
    return path, path / "neurons" / "segments" / hnsw


def run_cli(home: Path, path: Path, *args: str, capsys: pytest.CaptureFixture[str]):
    """``neuronatlas --home HOME --store PATH ARGS`` through the real entry point (its error
    handling included): (exit code, stdout, stderr)."""
    from neuronatlas.cli import main

    argv = sys.argv
    sys.argv = ["neuronatlas", "--home", str(home), "--store", str(path), *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


def query(model_id: str = APPENDED) -> np.ndarray:
    return make_records(model_id, LAYERS, seed=9, dim=DIM)[0].vector


def assert_serves(store: EdgeStore, model_id: str) -> None:
    assert store.get_model(model_id).status == ModelStatus.INDEXED
    assert store.count(model_id, 0) == N
    assert store.counts_by_layer()[model_id] == LAYERS
    hits = store.search(query(model_id), limit=10, flt=SearchFilter(model_ids=(model_id,)))
    assert len(hits) == 10


def test_an_intact_store_verifies(damaged: tuple[Path, Path], home: Path, capsys) -> None:
    path, _ = damaged
    with EdgeStore(path) as store:
        report = store.verify()
        assert report.ok and report.points_scanned == 3 * N and not report.problems
        assert [(m.model_id, m.found_neurons, m.expected_neurons) for m in report.models] == [
            (m, N, N) for m in ("m0", "m1", "m2")
        ]
        assert all(m.found_digest == m.expected_digest != "" for m in report.models)
    code, out, err = run_cli(home, path, "verify", capsys=capsys)
    assert code == 0 and out.startswith("store OK: 3 models, 1200 points") and not err


def test_deleted_segment_marks_its_models_failed(
    damaged: tuple[Path, Path], home: Path, capsys
) -> None:
    """(a) Open marks the models that lost their points ``failed`` (choice: mark, not refuse,
    so the intact models keep serving); nothing of them is served; verify reports them."""
    path, hnsw = damaged
    shutil.rmtree(hnsw)
    with EdgeStore(path) as store:
        for model_id in OPTIMISED:
            entry = store.get_model(model_id)
            assert entry.status == ModelStatus.FAILED
            assert f"should hold {N} neurons but 0 are readable" in entry.status_reason
            with pytest.raises(E.NotIndexed):
                store.search(query(), flt=SearchFilter(model_ids=(model_id,)))
        assert_serves(store, APPENDED)
        assert {h.record.model_id for h in store.search(query(), limit=100)} == {APPENDED}
        assert store.counts_by_layer().keys() == {APPENDED}
        stats = Atlas(store).stats()
        assert {m.model_id: m.neurons for m in stats.models} == {"m0": 0, "m1": 0, "m2": N}
        report = store.verify()
        assert not report.ok
        assert [m.model_id for m in report.models if not m.ok] == list(OPTIMISED)
        assert "marked failed: store damaged" in report.models[0].problems[0]
    code, out, err = run_cli(home, path, "verify", capsys=capsys)
    assert code == 1 and "store DAMAGED" in out and "m0: marked failed" in out and not err
    code, out, err = run_cli(home, path, "models", capsys=capsys)
    assert code == 0 and out.count("failed") == 2


def test_truncated_vector_file_marks_its_models_failed(damaged: tuple[Path, Path]) -> None:
    """(b) A vector file cut in half: points keep their payload but lose their vector. The
    open-time count (points *with* a vector) catches it."""
    path, hnsw = damaged
    matrix = hnsw / "vector_storage" / "matrix.dat"
    with open(matrix, "r+b") as f:
        f.truncate(matrix.stat().st_size // 2)
    with EdgeStore(path) as store:
        failed = [m.model_id for m in store.list_models() if m.status == ModelStatus.FAILED]
        assert failed and set(failed) <= set(OPTIMISED)
        assert "are readable" in store.get_model(failed[0]).status_reason
        assert_serves(store, APPENDED)
        for model_id in set(OPTIMISED) - set(failed):
            assert_serves(store, model_id)
        hits = store.search(query(), limit=3 * N, with_vectors=True)
        assert {h.record.model_id for h in hits} <= {APPENDED, *OPTIMISED} - set(failed)
        assert all(h.record.vector.shape == (DIM,) for h in hits)  # never a vector-less record
        report = store.verify()
        assert not report.ok and {m.model_id for m in report.models if not m.ok} == set(failed)


def test_truncated_payload_file_is_store_corrupted(
    damaged: tuple[Path, Path], home: Path, capsys
) -> None:
    """(b) A payload file cut short: counts still match (they come from the indexes), so the
    store opens; reads that touch the lost payloads raise StoreCorrupted (never the engine's
    own exception) and verify pins the damage to the models."""
    path, hnsw = damaged
    page = hnsw / "payload_storage" / "page_0.dat"
    with open(page, "r+b") as f:
        f.truncate(1000)
    with EdgeStore(path) as store:
        with pytest.raises(E.StoreCorrupted, match=r"neurons shard .* failed .*neuronatlas verify"):
            store.search(query(), limit=50)
        with pytest.raises(E.StoreCorrupted):
            list(store.scroll_neurons("m0"))
        assert_serves(store, APPENDED)  # its segment is intact
        lost = None
        for unit in range(N // 2):
            try:
                store.get_neuron("m0", "l1", unit)
            except E.StoreCorrupted:
                lost = f"m0/l1/{unit}"
                break
        assert lost is not None
        report = store.verify()
        assert not report.ok
        assert {m.model_id for m in report.models if not m.ok} == set(OPTIMISED)
        assert "cannot be read" in report.models[0].problems[0]
    code, out, err = run_cli(home, path, "neuron", lost, capsys=capsys)
    assert code == 2 and not out and err.count("\n") == 1
    assert err.startswith("error: the neurons shard of") and "neuronatlas verify" in err
    code, out, err = run_cli(home, path, "stats", capsys=capsys)
    assert code == 0  # counts come from the indexes
    code, out, err = run_cli(home, path, "verify", "--json", capsys=capsys)
    assert code == 1 and '"ok": false' in out and "Traceback" not in err


def test_garbage_in_a_vector_file_is_caught_by_verify(
    damaged: tuple[Path, Path], home: Path, capsys
) -> None:
    """(c) 4 KiB of garbage over stored vectors: every count still matches, so open does not
    notice (a full digest on open would read every vector: see bench/results/verify.md);
    the served vectors change; verify catches it by digest and names the model(s)."""
    path, hnsw = damaged
    with EdgeStore(path) as store:
        before = {r.key: r.vector for m in OPTIMISED for r in store.scroll_neurons(m)}
    with open(hnsw / "vector_storage" / "matrix.dat", "r+b") as f:
        f.seek(8 * 1024)
        f.write(np.random.default_rng(0).bytes(4096))
    with EdgeStore(path) as store:
        assert all(m.status == ModelStatus.INDEXED for m in store.list_models())
        after = {r.key: r.vector for m in OPTIMISED for r in store.scroll_neurons(m)}
        changed = {k for k in before if not np.array_equal(before[k], after[k], equal_nan=True)}
        assert 1 <= len(changed) <= 4096 // (4 * DIM) + 1
        report = store.verify()
        bad = {m.model_id for m in report.models if not m.ok}
        assert not report.ok and bad == {k.split("/")[0] for k in changed}
        for m in report.models:
            if m.model_id in bad:
                assert m.found_neurons == m.expected_neurons == N  # counts agree ...
                assert m.found_digest != m.expected_digest  # ... the digest does not
                assert any("content digest differs" in p for p in m.problems)
    code, out, _ = run_cli(home, path, "verify", capsys=capsys)
    assert code == 1 and "content digest differs" in out
    assert all(f"{m}: the content digest" in out for m in bad)


def test_missing_marker_is_a_one_line_error(damaged: tuple[Path, Path], home: Path, capsys):
    """(d) store.json gone: refused (tests/test_store_edge.py covers the store itself); the CLI
    says so in one line and exits 2, for verify as for any command."""
    path, _ = damaged
    (path / "store.json").unlink()
    for cmd in ("verify", "models"):
        code, out, err = run_cli(home, path, cmd, capsys=capsys)
        assert code == 2 and not out
        assert err.count("\n") == 1 and err.startswith("error: ") and "store.json" in err


def test_unreadable_catalogue_refuses_to_open(damaged: tuple[Path, Path]) -> None:
    path, _ = damaged
    shutil.rmtree(path / "models")
    with pytest.raises(E.StoreCorrupted, match="no models/ shard"):
        EdgeStore(path)


def test_verify_store_rpc_needs_admin(damaged: tuple[Path, Path]) -> None:
    from neuronatlas.service.auth import TokenSet
    from neuronatlas.service.client import Client
    from neuronatlas.service.server import build_server

    path, hnsw = damaged
    shutil.rmtree(hnsw)
    read, admin = "read-token-verify", "admin-token-verify"
    tokens = TokenSet({read: "read", admin: "admin"})
    srv = build_server(Atlas(EdgeStore(path)), "127.0.0.1:0", close_atlas=True, tokens=tokens)
    srv.start()
    try:
        with Client(srv.address, token=read) as c, pytest.raises(E.PermissionDenied):
            c.verify_store()
        with Client(srv.address, token=admin) as c:
            remote = c.verify_store()
        local = srv.atlas.verify_store()
    finally:
        srv.stop(grace=0.5)
    assert not remote.ok and [m.model_id for m in remote.models if not m.ok] == list(OPTIMISED)
    assert remote.models[2].found_neurons == remote.models[2].expected_neurons == N
    assert (remote.models[0].found_neurons, remote.models[0].expected_neurons) == (0, N)
    assert remote.points_scanned == local.points_scanned == N
    for a, b in zip(local.models, remote.models, strict=True):
        assert (a.model_id, a.status, a.ok, a.problems, a.notes, a.found_digest) == (
            b.model_id,
            b.status,
            b.ok,
            b.problems,
            b.notes,
            b.found_digest,
        )
