"""Crash safety of the store's multi-step writes: a process killed (SIGKILL) at any moment of a
model delete or of a re-index flip leaves, once the store is opened again, the model either
fully as before or fully as after: never an entry without its neurons, never neurons nobody
can see.

A synthetic store (two models, one of them big enough that the delete takes a while) is copied
for every kill; a worker process opens it, says "go", and runs the operation. Two ways to kill:

- after a delay, from 0 to past the end of the operation (a kill may land inside an engine
  write, which Qdrant Edge's write-ahead log must make all-or-nothing);
- deterministically, the worker killing itself right after its k-th store write (catalogue
  put/delete, neuron upsert/delete), for every k: every boundary between two writes is hit.

Each time the test reopens the store (which finishes an interrupted delete or flip) and checks
it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import add_model, copy_store, make_records

from neuronatlas.core.errors import NotFound
from neuronatlas.core.records import EmbedderInfo, ModelStatus
from neuronatlas.core.store.base import SearchFilter
from neuronatlas.core.store.edge import EdgeStore

pytestmark = pytest.mark.slow

DIM = 64
INFO = EmbedderInfo("test:emb", "random:0", DIM)
VICTIM = {"conv1": 600, "layer1.conv": 600, "layer2.conv": 600}  # 1,800 neurons
KEEP = {"conv1": 100}
KILLS = 12  # delays spread over the operation, plus one after it
TESTS = Path(__file__).resolve().parent

_WORKER = textwrap.dedent(
    """
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[3])
    from helpers import make_records
    from neuronatlas.core.records import ModelStatus
    from neuronatlas.core.store.edge import EdgeStore

    store = EdgeStore(sys.argv[1])
    kill_after, writes = int(sys.argv[4]), 0

    def counted(fn):
        def write(*args, **kwargs):
            global writes
            out = fn(*args, **kwargs)
            writes += 1
            if writes == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        return write

    for name in ("_m_put", "_m_delete", "_n_upsert", "_n_delete"):
        setattr(store, name, counted(getattr(store, name)))
    layers = {"conv1": 600, "layer1.conv": 600, "layer2.conv": 600}
    if sys.argv[2] == "reindex":
        records = make_records("victim", layers, seed=7, generation=1, dim=64)
    print("go", flush=True)
    t0 = time.perf_counter()
    if sys.argv[2] == "delete":
        store.delete_model("victim")
    else:  # what the indexer does: write the other slot, flip, delete the old slot
        store.upsert_neurons(records)
        entry = store.get_model("victim")
        entry.generation = 1
        store.put_model(entry)
        store.delete_neurons("victim", 0)
    print(f"done {time.perf_counter() - t0:.4f} {writes}", flush=True)
    store.close()
    """
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("atomic") / "store"
    with EdgeStore(path) as store:
        store.bind_embedder(INFO)
        add_model(store, "keep", KEEP, seed=1, dim=DIM)
        add_model(store, "victim", VICTIM, seed=2, dim=DIM)
        store.optimize()
    return path


def _start(path: Path, op: str, kill_after: int = 0) -> subprocess.Popen[str]:
    worker = subprocess.Popen(
        [sys.executable, "-c", _WORKER, str(path), op, str(TESTS), str(kill_after)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    line = worker.stdout.readline().strip()
    assert line == "go", line + worker.communicate(timeout=60)[1]
    return worker


def _run(template: Path, path: Path, op: str) -> tuple[float, int]:
    """One uninterrupted run: (its duration in seconds, its number of store writes)."""
    copy_store(template, path)
    worker = _start(path, op)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 0, err
    shutil.rmtree(path)
    return float(out.split()[1]), int(out.split()[2])


def _kill_at(template: Path, path: Path, op: str, delay: float) -> None:
    copy_store(template, path)
    worker = _start(path, op)
    time.sleep(delay)
    os.kill(worker.pid, signal.SIGKILL)
    worker.communicate(timeout=60)


def _assert_fully_present(store: EdgeStore, model_id: str, layers: dict[str, int], gen: int):
    entry = store.get_model(model_id)
    assert entry.status == ModelStatus.INDEXED and entry.generation == gen
    assert store.count(model_id, gen) == sum(layers.values())
    assert store.counts_by_layer()[model_id] == dict(sorted(layers.items()))
    q = make_records(model_id, layers, seed=3, dim=DIM)[0].vector
    hits = store.search(q, limit=5, flt=SearchFilter(model_ids=(model_id,)))
    assert len(hits) == 5 and {h.record.generation for h in hits} == {gen}


def _assert_state(store: EdgeStore) -> str:
    """The victim is fully there or fully gone; the other model is untouched. Returns which.
    No point is left that no reader can see, except the unfinished new generation of a re-index
    killed before its flip (the indexer resumes or clears it; ``verify`` notes it)."""
    _assert_fully_present(store, "keep", KEEP, 0)
    report = store.verify()
    assert report.ok, (report.problems, [m.problems for m in report.models])
    served = sum(m.found_neurons or 0 for m in report.models)
    if "victim" in {e.model_id for e in store.list_models()}:
        gen = store.get_model("victim").generation
        _assert_fully_present(store, "victim", VICTIM, gen)
        unfinished = store.count("victim", 1) if gen == 0 else 0
        assert store.count() == served + unfinished
        if unfinished:
            victim = next(m for m in report.models if m.model_id == "victim")
            assert victim.notes == [f"generation 1: {unfinished} points, not served"]
        return f"present@{gen}"
    assert store.count() == served
    with pytest.raises(NotFound):
        store.get_model("victim")
    assert store.count("victim") == 0
    assert store.counts_by_layer().keys() == {"keep"}
    q = np.ones(DIM, np.float32)
    assert {h.record.model_id for h in store.search(q, limit=50)} == {"keep"}
    return "gone"


def _reopen_and_check(path: Path, caplog: pytest.LogCaptureFixture) -> tuple[str, bool]:
    """(the state after reopening, whether opening had to finish something)."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neuronatlas.store"):
        with EdgeStore(path) as store:  # opening finishes an interrupted delete or flip
            outcome = _assert_state(store)
    recovered = any("store recovery" in r.getMessage() for r in caplog.records)
    if recovered:
        with EdgeStore(path) as store:  # a second open finds the same, finished state
            assert _assert_state(store) == outcome
    shutil.rmtree(path)
    return outcome, recovered


AFTER = {"delete": "gone", "reindex": "present@1"}


@pytest.mark.parametrize("op", ["delete", "reindex"])
def test_kill_at_any_moment_leaves_the_model_whole(
    template: Path, tmp_path: Path, op: str, caplog: pytest.LogCaptureFixture
) -> None:
    # the fastest of three runs: kill runs see the same warm page cache as a fast run
    duration = min(_run(template, tmp_path / "calibrate", op)[0] for _ in range(3))
    delays = [duration * i / (KILLS - 1) for i in range(KILLS)] + [duration * 2 + 0.2]
    outcomes, recovered = [], 0
    for i, delay in enumerate(delays):
        path = tmp_path / f"kill{i}"
        _kill_at(template, path, op, delay)
        outcome, did_recover = _reopen_and_check(path, caplog)
        outcomes.append(outcome)
        recovered += did_recover
    assert outcomes[-1] == AFTER[op], outcomes  # killed after it finished
    assert set(outcomes) <= {"present@0", AFTER[op]}, outcomes
    print(f"{op}: {duration * 1000:.0f} ms; outcomes {outcomes}; {recovered} recoveries on open")


@pytest.mark.parametrize("op", ["delete", "reindex"])
def test_kill_after_any_write_leaves_the_model_whole(
    template: Path, tmp_path: Path, op: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, writes = _run(template, tmp_path / "count", op)
    assert writes >= 3
    outcomes = []
    for k in range(1, writes + 1):
        path = tmp_path / f"write{k}"
        copy_store(template, path)
        worker = _start(path, op, kill_after=k)
        worker.communicate(timeout=120)
        assert worker.returncode == -signal.SIGKILL
        outcomes.append(_reopen_and_check(path, caplog))
    print(f"{op}: {writes} writes; (state, recovered) after each: {outcomes}")
    if op == "delete":  # tombstone, neurons, entry: the first write already hides the model
        assert outcomes == [("gone", True), ("gone", True), ("gone", False)]
    else:  # upserts of the new generation, the flip, the old generation's delete, its mark
        flip = next(i for i, (state, _) in enumerate(outcomes) if state == AFTER[op])
        assert all(state == "present@0" for state, _ in outcomes[:flip])
        assert all(state == AFTER[op] for state, _ in outcomes[flip:])
        assert outcomes[flip][1] and not outcomes[-1][1]  # the flip's old slot was retired
