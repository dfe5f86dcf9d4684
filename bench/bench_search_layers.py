"""Where a SearchNeurons call's server time goes, layer by layer, in one process.

Opens a store that ``bench_grpc.py`` built (``--store``; default its 100k store) and runs the
same vector queries through each layer of the server's path, one thread, no network:

- **engine**: Qdrant Edge's ``query`` with a request built beforehand (what the store sends:
  the same ef, rescoring and payload fields), nothing of ours;
- **store**: ``KnowledgeStore.search(fields=HIT_FIELDS)``: the request built from the query,
  the answer turned into ``Hit`` records;
- **queries**: ``Atlas.search_neurons`` (checks, normalisation, paging);
- **servicer**: ``NeuronAtlasServicer.SearchNeurons`` (the request read, the hits written as
  protobuf, the page token);
- **served call**: the request bytes parsed, the interceptors applied for this call (request
  id, access log, metrics, malformed-request guard) and the response serialised, as the server
  does it; gRPC's own work (HTTP/2, completion queues, the event loop) is not in any row:
  ``bench_grpc.py`` measures the whole call.

Each row is the best of ``--passes`` passes over the queries, in microseconds per call; the
increment over the row above is what that layer adds. At 1M the engine's own swings are as
large as our layers, so a last figure times the served call with the engine's answers replayed
from a recording: what our code costs a call, to a few microseconds. Appends a section to
bench/results/search_layers.md (``--out``).

    python bench/bench_search_layers.py                      # after bench_grpc.py --neurons 100000
    python bench/bench_search_layers.py --store /tmp/g1m/grpc-1000000-512
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
import qdrant_edge as qe
from bench_grpc import WORK, synthetic_vectors

from neuronatlas.core.queries import Atlas, VectorQuery
from neuronatlas.core.store.base import HIT_FIELDS
from neuronatlas.core.store.edge import EdgeStore
from neuronatlas.service.metrics import CallInterceptor
from neuronatlas.service.paging import PageTokens
from neuronatlas.service.servicer import NeuronAtlasServicer
from neuronatlas.service.wire import MalformedRequestInterceptor
from neuronatlas.v1 import neuronatlas_pb2 as pb

ROOT = Path(__file__).resolve().parent
METHOD = "/neuronatlas.v1.NeuronAtlasService/SearchNeurons"
_Details = collections.namedtuple("_Details", "method invocation_metadata")


class _Context:
    """The ``grpc.ServicerContext`` methods the service's handler path uses."""

    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None

    def invocation_metadata(self) -> tuple:
        return ()

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        pass

    def send_initial_metadata(self, metadata: Any) -> None:
        pass

    def is_active(self) -> bool:
        return True

    def time_remaining(self) -> float | None:
        return None


def best_us(fn: Callable[[Any], Any], items: list, passes: int) -> float:
    """Best of ``passes`` passes over ``items``: microseconds per call."""
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        for it in items:
            fn(it)
        best = min(best, (time.perf_counter() - t) / len(items) * 1e6)
    return best


def served(servicer: NeuronAtlasServicer) -> Callable[[bytes], bytes]:
    """One call as the server runs it, minus gRPC: parse, intercept (per call), handle,
    serialise."""
    base = grpc.unary_unary_rpc_method_handler(
        servicer.SearchNeurons,
        request_deserializer=pb.SearchNeuronsRequest.FromString,
        response_serializer=pb.SearchNeuronsResponse.SerializeToString,
    )
    interceptors = [CallInterceptor(None), MalformedRequestInterceptor()]
    details = _Details(METHOD, (("user-agent", "bench"),))

    def chain(i: int, d: Any) -> grpc.RpcMethodHandler:
        if i == len(interceptors):
            return base
        return interceptors[i].intercept_service(lambda d2: chain(i + 1, d2), d)

    def call(raw: bytes) -> bytes:
        handler = chain(0, details)
        request = handler.request_deserializer(raw)
        out: bytes = handler.response_serializer(handler.unary_unary(request, _Context()))
        return out

    return call


class _Replay:
    """The neuron shard with its ``query`` answered from a recording: the store's other
    calls pass through to the real shard."""

    def __init__(self, shard: Any) -> None:
        self.shard, self.answers = shard, list[Any]()
        self.recording, self.next = True, iter(self.answers)

    def query(self, request: Any) -> Any:
        if self.recording:
            self.answers.append(self.shard.query(request))
            return self.answers[-1]
        return next(self.next)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.shard, name)


def ours_us(store: EdgeStore, call: Callable[[bytes], bytes], raw: list, passes: int) -> float:
    """A served call (``served``) with the engine's answers replayed: everything of ours a
    call costs, without the engine's time and its swings (us, best of ``passes``)."""
    replay = _Replay(store._shard("neurons"))
    shard = store._shard
    store._shard = lambda name: replay if name == "neurons" else shard(name)  # type: ignore[method-assign]
    try:
        for r in raw:  # record the engine's answers to these calls
            call(r)
        replay.recording = False
        best = float("inf")
        for _ in range(passes):
            replay.next = iter(replay.answers)
            t = time.perf_counter()
            for r in raw:
                call(r)
            best = min(best, (time.perf_counter() - t) / len(raw) * 1e6)
        return best
    finally:
        store._shard = shard  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--store", type=Path, default=WORK / "grpc-100000-512")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "search_layers.md")
    args = ap.parse_args()
    if not (args.store / "store.json").exists():
        raise SystemExit(f"no store at {args.store}: run bench/bench_grpc.py --build-only first")
    load0 = os.getloadavg()[0]
    store = EdgeStore(args.store)
    atlas = Atlas(store, None)
    servicer = NeuronAtlasServicer(atlas, PageTokens.load(None, atlas.home))
    dim = store.embedder.dim if store.embedder is not None else 512
    n = store.count()
    vectors = synthetic_vectors(args.queries, dim, seed=7)
    requests = [pb.SearchNeuronsRequest(vector=pb.Vector(values=v), top_k=10) for v in vectors]
    raw = [r.SerializeToString() for r in requests]
    shard = store._shard("neurons")  # the engine itself, for the first row
    params = qe.SearchParams(
        hnsw_ef=store.search_ef,
        quantization=qe.QuantizationSearchParams(
            rescore=True, oversampling=store.quantization_oversampling
        ),
    )
    engine_requests = [
        qe.QueryRequest(
            limit=10,
            query=qe.Query.Nearest(v.tolist()),
            with_payload=qe.PayloadSelector.Include(list(HIT_FIELDS)),
            params=params,
        )
        for v in vectors
    ]
    for v in vectors:  # warm the page cache and every code path once
        store.search(v, limit=10, fields=HIT_FIELDS)
    call = served(servicer)
    rows: list[tuple[str, float]] = []
    layers: Iterable[tuple[str, Callable[[Any], Any], list]] = [
        ("engine: Edge `query`, request built beforehand", shard.query, engine_requests),
        (
            "store: `search(fields=HIT_FIELDS)`",
            lambda v: store.search(v, limit=10, fields=HIT_FIELDS),
            list(vectors),
        ),
        (
            "queries: `Atlas.search_neurons`",
            lambda v: atlas.search_neurons(VectorQuery(v), top_k=10, fields=HIT_FIELDS),
            list(vectors),
        ),
        (
            "servicer: `SearchNeurons(request, context)`",
            lambda r: servicer.SearchNeurons(r, _Context()),
            requests,
        ),
        ("served call: parse + interceptors + handler + serialise", call, raw),
    ]
    for name, fn, items in layers:
        rows.append((name, best_us(fn, items, args.passes)))
        print(f"{name:60s} {rows[-1][1]:8.1f} us", flush=True)
    ours = ours_us(store, call, raw, 2 * args.passes + 1)
    print(f"{'ours: served call, engine answers replayed':60s} {ours:8.1f} us", flush=True)
    store.close()
    lines = [
        f"### bench_search_layers: {args.store.name} ({n:,} neurons)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} CPUs · load average "
        f"{load0:.2f} at start, {os.getloadavg()[0]:.2f} at the end · {args.queries} vector "
        f"queries, top_k=10, best of {args.passes} passes",
        "",
        "| layer | us per call | added by this layer |",
        "|---|---|---|",
    ]
    previous = None
    for name, us in rows:
        added = "" if previous is None else f"{us - previous:+.1f}"
        lines.append(f"| {name} | {us:.1f} | {added} |")
        previous = us
    lines += [
        "",
        f"Everything of ours in a served call (the engine's answers replayed from a recording, "
        f"so its time and its swings are left out): **{ours:.1f} us**.",
        "",
    ]
    with args.out.open("a") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
