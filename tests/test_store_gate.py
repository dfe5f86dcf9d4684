"""Reads that leave the visibility filters out never overlap a neuron write: a model being
indexed in the serving process is never seen half written (``_common._ReadGate``)."""

from __future__ import annotations

import threading
import time

from helpers import ALPHA, INFO, entry, make_records

from neuronatlas.core.records import ModelStatus
from neuronatlas.core.store._common import _ReadGate


def test_a_write_waits_for_unfiltered_reads_and_reads_during_a_write_filter():
    gate = _ReadGate()
    with gate.read():
        assert gate.may_skip
        with gate.read():  # nested: the outer read decides
            assert gate.may_skip
    assert not gate.may_skip  # outside a read

    order: list[str] = []
    in_read, writing, release = threading.Event(), threading.Event(), threading.Event()

    def reader() -> None:
        with gate.read():
            in_read.set()
            release.wait(5)
            order.append("read done")

    def writer() -> None:
        in_read.wait(5)
        with gate.write():
            order.append("write")
            writing.set()
            time.sleep(0.05)

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    in_read.wait(5)
    time.sleep(0.05)
    assert order == []  # the write waits for the read that skips the filters
    release.set()
    writing.wait(5)
    with gate.read():
        assert not gate.may_skip  # a read during the write keeps the filters
    for t in threads:
        t.join(5)
    assert order == ["read done", "write"]
    with gate.read():
        assert gate.may_skip


def test_searches_during_a_new_models_writes_only_see_indexed_models(edge_store):
    """Many searches while another model's neurons are written: none returns it."""
    store = edge_store
    store.bind_embedder(INFO)
    store.upsert_neurons(make_records("alpha", ALPHA, seed=1))
    store.put_model(entry("alpha", layers=ALPHA))
    store.put_model(entry("beta", status=ModelStatus.INDEXING))
    records = make_records("alpha", ALPHA, seed=1)
    stop, seen = threading.Event(), set()

    def search() -> None:
        while not stop.is_set():
            for r in records[:3]:
                seen.update(h.record.model_id for h in store.search(r.vector, limit=50))

    t = threading.Thread(target=search)
    t.start()
    try:
        for seed in range(40):
            store.upsert_neurons(make_records("beta", {f"l{seed}": 6}, seed=seed + 10))
            time.sleep(0.01)  # a stale "every slot is visible" would be used meanwhile
    finally:
        stop.set()
        t.join(10)
    assert seen == {"alpha"}
