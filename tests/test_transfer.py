"""Moving data (``neuronatlas.core.store.transfer``): migrate between stores (embedded Edge and
a remote Qdrant, here qdrant-client's in-process mode), resumable; backup and restore; and the
CLI commands ``migrate``, ``backup``, ``restore``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import ALPHA, BETA, INFO, add_model, entry, make_records
from qdrant_client import QdrantClient

from neuronatlas.core.errors import FailedPrecondition, InvalidArgument
from neuronatlas.core.jobs import JobQueue
from neuronatlas.core.records import ModelStatus
from neuronatlas.core.store import transfer as T
from neuronatlas.core.store.edge import EdgeStore
from neuronatlas.core.store.remote import RemoteStore

STALE = {"conv1": 3}  # points of a generation nobody serves (a re-index in progress)


def _fill(store) -> None:
    """Two indexed models, a job record, and points of an unserved generation of alpha."""
    store.bind_embedder(INFO)
    add_model(store, "alpha", ALPHA)
    add_model(store, "beta", BETA, seed=1)
    JobQueue(store).submit("index", "alpha", {"probe_set": "p"}, request_id="r1")
    store.upsert_neurons(make_records("alpha", STALE, seed=9, generation=1))


@pytest.fixture()
def source(tmp_path: Path):
    store = EdgeStore(tmp_path / "source")
    _fill(store)
    yield store
    store.close()


def _memory() -> RemoteStore:
    return RemoteStore(QdrantClient(":memory:"))


def _same(a: T.StoreExport, b: T.StoreExport, result: T.MigrateResult | None = None) -> None:
    """Identical exports; when the destination re-normalised vectors (the in-process double),
    those differ by float32 rounding and their models' seals were recomputed."""
    if result is not None and result.changed_vectors:
        assert result.max_vector_change < 1e-6
        assert T.compare_exports(a, b, vector_tolerance=1e-6, ignore_seals=True) == []
    else:
        assert T.compare_exports(a, b) == []


# -- migrate ---------------------------------------------------------------------------------------
def test_migrate_edge_to_remote_and_back_keeps_every_point(source, tmp_path: Path) -> None:
    before = T.export_store(source)
    assert len(before.points) == 12 + 5 + 3
    assert {p["kind"] for p in before.catalogue.values()} == {"model", "job"}
    remote = _memory()
    there = T.migrate(source, remote)
    assert there.neurons == there.neurons_total == 20 and there.catalogue == 3
    exported = T.export_store(remote)
    _same(before, exported, there)
    assert remote.verify().ok
    assert remote.all_jobs() == source.all_jobs()
    assert [m.model_id for m in remote.list_models()] == ["alpha", "beta"]

    back = EdgeStore(tmp_path / "back")
    home = T.migrate(remote, back)
    assert home.changed_vectors == 0  # Edge keeps what it is given, bit for bit
    assert T.compare_exports(exported, T.export_store(back)) == []
    _same(before, T.export_store(back), there)
    report = back.verify()
    assert report.ok, report
    back.close()


def test_migrate_edge_to_edge_is_bit_identical(source, tmp_path: Path) -> None:
    copy = EdgeStore(tmp_path / "copy")
    result = T.migrate(source, copy, batch_size=3)
    assert result.changed_vectors == 0 and result.resealed == []
    assert T.compare_exports(T.export_store(source), T.export_store(copy)) == []
    assert copy.verify().ok
    copy.close()


def test_migrate_resumes_after_an_interruption(source, tmp_path: Path) -> None:
    remote, ck = _memory(), tmp_path / "ck.json"
    seen: list[tuple[str, int, int]] = []
    first = T.migrate(source, remote, checkpoint=ck, batch_size=4, stop_after=2)
    assert first.neurons == 8 and first.batches == 2
    state = json.loads(ck.read_text())
    assert state["copied"] == 8 and state["batches"] == 2
    assert remote.list_models() == []  # the catalogue comes last: nothing served half copied
    assert T.neuron_count(remote) == 8
    second = T.migrate(
        source, remote, checkpoint=ck, batch_size=4, progress=lambda *a: seen.append(a)
    )
    assert second.resumed_at == 8 and second.neurons == 12 and second.batches == 3
    assert not ck.exists()  # done: the next run starts over
    assert seen[0] == ("neurons", 12, 20) and seen[-1][0] == "catalogue"
    _same(T.export_store(source), T.export_store(remote), second)


def test_migrate_refuses_a_store_with_data_and_a_foreign_checkpoint(source, tmp_path: Path) -> None:
    other = EdgeStore(tmp_path / "other")
    other.bind_embedder(INFO)
    add_model(other, "gamma", BETA)
    with pytest.raises(FailedPrecondition, match="not empty"):
        T.migrate(source, other)
    T.migrate(source, other, force=True)  # merges: same ids replaced, gamma kept
    assert [m.model_id for m in other.list_models()] == ["alpha", "beta", "gamma"]
    ck = tmp_path / "ck.json"
    T.migrate(source, _memory(), checkpoint=ck, batch_size=4, stop_after=1)
    with pytest.raises(InvalidArgument, match="belongs to the migration"):
        T.migrate(source, EdgeStore(tmp_path / "third"), checkpoint=ck)
    with pytest.raises(InvalidArgument, match="same store"):
        T.migrate(source, source)
    other.close()


# -- backup and restore ----------------------------------------------------------------------------
def _live(export: T.StoreExport) -> T.StoreExport:
    """An export without the points of unserved generations (a backup leaves them out)."""
    live = {
        f"{p['model_id']}#{p['generation']}"
        for p in export.catalogue.values()
        if p.get("kind") == "model" and p.get("status") == "indexed"
    }
    points = {k: v for k, v in export.points.items() if v[1]["slot"] in live}
    return T.StoreExport(export.embedder, export.catalogue, points)


def test_backup_and_restore_round_trip(source, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar"
    manifest = T.write_backup(source, archive, batch_size=4)
    assert [m["model_id"] for m in manifest["models"]] == ["alpha", "beta"]
    assert manifest["neuron_points"] == 17 and manifest["warnings"] == []
    target = EdgeStore(tmp_path / "restored")
    target, result = T.restore(target, archive)
    assert result.neurons == 17 and result.catalogue == 3 and not result.wiped
    assert target.verify().ok
    assert T.compare_exports(_live(T.export_store(source)), T.export_store(target)) == []
    assert target.all_jobs() == source.all_jobs()
    with pytest.raises(FailedPrecondition, match="not empty"):
        T.restore(target, archive)
    target, again = T.restore(target, archive, force=True)
    assert again.wiped and target.verify().ok
    target.close()


def test_restore_refuses_a_damaged_or_foreign_archive(source, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar"
    T.write_backup(source, archive)
    data = bytearray(archive.read_bytes())
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidArgument):
        T.read_manifest(cut)
    (tmp_path / "x.tar").write_bytes(b"not a tar")
    with pytest.raises(InvalidArgument, match="not a backup"):
        T.read_manifest(tmp_path / "x.tar")
    i = data.index(b'"payload"')  # flip a byte inside the first neuron member
    data[i + 20] ^= 1
    (tmp_path / "bad.tar").write_bytes(bytes(data))
    target = EdgeStore(tmp_path / "t")
    with pytest.raises(Exception, match=r"sha256|damaged"):
        T.restore(target, tmp_path / "bad.tar")
    target.close()


def test_backup_is_consistent_when_models_change_midway(source, tmp_path: Path) -> None:
    """A model re-indexed (flip to generation 1, generation 0 deleted) and another deleted
    while the backup reads: the archive holds the new generation and no trace of the deleted
    model, and the restored store verifies."""
    stream = T.backup_stream(source, batch_size=2)
    head = [next(stream)]  # alpha's first batch is read and streamed
    new = make_records("alpha", ALPHA, seed=5, generation=1)
    source.delete_neurons("alpha", 1)  # the stale points of the fixture
    source.upsert_neurons(new)
    source.put_model(entry("alpha", ModelStatus.INDEXED, 1, ALPHA))
    source.delete_neurons("alpha", 0)
    source.delete_model("beta")
    archive = tmp_path / "b.tar"
    manifest = T.save_stream(iter(head + list(stream)), archive)
    assert [(m["model_id"], m["generation"]) for m in manifest["models"]] == [("alpha", 1)]
    target, _ = T.restore(EdgeStore(tmp_path / "t"), archive)
    assert target.verify().ok
    assert [(m.model_id, m.generation) for m in target.list_models()] == [("alpha", 1)]
    assert T.compare_exports(T.export_store(source), T.export_store(target)) == []
    target.close()


# -- the CLI ---------------------------------------------------------------------------------------
def _run(*args: str):
    from click.testing import CliRunner

    from neuronatlas.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def test_cli_migrate_backup_restore(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    with EdgeStore(src) as store:
        _fill(store)
    dst = tmp_path / "dst"
    r = _run("--store", str(src), "migrate", "--to", str(dst), "--batch-size", "4", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["neurons_total"] == 20 and out["verified"] is True
    assert not list((home / "transfers").glob("*.json"))  # checkpoint removed when done

    archive = tmp_path / "b.tar"
    r = _run("--store", str(src), "backup", str(archive), "--quiet")
    assert r.exit_code == 0, r.output
    assert "2 models, 17 neuron points" in r.stdout
    r = _run("--store", str(tmp_path / "new"), "restore", str(archive), "--quiet")
    assert r.exit_code == 0, r.output
    assert "store OK" in r.stdout
    r = _run("--store", str(tmp_path / "new"), "restore", str(archive), "--quiet")
    assert isinstance(r.exception, FailedPrecondition) and "--force" in str(r.exception)
    r = _run("--store", str(tmp_path / "new"), "restore", str(archive), "--force", "--quiet")
    assert r.exit_code == 0 and "previous contents were deleted" in r.stdout
    r = _run("--store", str(tmp_path / "new"), "verify")
    assert r.exit_code == 0, r.output


# -- a store the real indexer filled ---------------------------------------------------------------
@pytest.fixture()
def indexed_copy(indexed_home: Path, tmp_path: Path) -> Path:
    """A copy of the session's indexed store (the session server may hold the original)."""
    dst = tmp_path / "indexed"
    shutil.copytree(indexed_home / "store", dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


@pytest.mark.integration
def test_migrate_round_trip_of_a_real_index(indexed_copy: Path, tmp_path: Path) -> None:
    """Edge -> remote (in-process qdrant-client) -> Edge with identical exports (ids,
    payloads, catalogue; vectors bit for bit where the backend keeps them), every store
    verified."""
    with EdgeStore(indexed_copy) as source:
        before = T.export_store(source)
        assert len(before.points) > 100
        remote = _memory()
        there = T.migrate(source, remote, checkpoint=tmp_path / "ck.json")
        on_remote = T.export_store(remote)
        _same(before, on_remote, there)
        assert remote.verify().ok
        back = EdgeStore(tmp_path / "back")
        again = T.migrate(remote, back)
        assert again.changed_vectors == 0
        assert T.compare_exports(on_remote, T.export_store(back)) == []
        _same(before, T.export_store(back), there)
        assert back.verify().ok
        back.close()
        copy = EdgeStore(tmp_path / "copy")
        T.migrate(source, copy)
        assert T.compare_exports(before, T.export_store(copy)) == []  # bit for bit
        copy.close()
