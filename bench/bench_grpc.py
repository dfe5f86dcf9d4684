"""gRPC query benchmark: latency (p50/p99) and throughput with concurrent clients.

Builds (once, cached under bench/_work/) an embedded store of N synthetic neurons: clustered
unit vectors with fake neuron records spread over ~100 models, bound to the benchmark's
embedder. Serves it from a separate process (`neuronatlas.service.server`), then drives it
with C concurrent clients (grpc.aio) for each scenario:

- vector queries, unfiltered and grouped per model (per_model=1), and unfiltered in batches
  (``BatchSearchNeurons``, ``--batch`` searches a call; its rows count searches, not calls);
- cached text queries (a small pool of repeated texts: embedder LRU hits), both modes;
- cold text queries (every text new: one CLIP text-tower pass each), and new texts in
  batches (one text-tower pass a batch);

and measures recall@10 of the served (HNSW) results against exact numpy search, plus the
recall of the per-model best neuron. Prints a markdown table and writes it to
bench/results/grpc.md (replacing an earlier section with the same heading, i.e. of the same
size and number of clients; other sections stay).

    python bench/bench_grpc.py --neurons 100000
    python bench/bench_grpc.py --neurons 1000000 --requests 2000   # long HNSW build on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "_work"
RESULTS = ROOT / "bench" / "results" / "grpc.md"
MODELS = 100
LAYERS = 10
CLUSTERS = 2000


# -- the synthetic store ------------------------------------------------------------------------
def synthetic_vectors(n: int, dim: int, seed: int, centre_seed: int = 0) -> np.ndarray:
    """n unit vectors around CLUSTERS random centres (cosine ~0.7 to their centre). Queries use
    another ``seed`` with the same ``centre_seed``, so they fall near the stored clusters."""
    centres = np.random.default_rng(centre_seed).standard_normal((CLUSTERS, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed + 1000)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):
        e = min(n, s + 100_000)
        v = centres[rng.integers(0, CLUSTERS, e - s)] + rng.standard_normal((e - s, dim)).astype(
            np.float32
        ) * (1.0 / np.sqrt(dim))
        out[s:e] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def layout(n: int) -> tuple[int, int]:
    """(units per layer, neurons per model) so that MODELS x LAYERS x units == n."""
    units = n // (MODELS * LAYERS)
    if units * MODELS * LAYERS != n:
        raise SystemExit(f"--neurons must be a multiple of {MODELS * LAYERS}")
    return units, units * LAYERS


def key_of(i: int, units: int) -> str:
    per_model = units * LAYERS
    m, r = divmod(i, per_model)
    layer, unit = divmod(r, units)
    return f"m{m:03d}/layer{layer}/{unit}"


def build_store(path: Path, vectors: np.ndarray, info) -> float:
    from neuronatlas.core.records import (
        Label,
        LayerInfo,
        ModelEntry,
        ModelStatus,
        NeuronRecord,
        TopSample,
    )
    from neuronatlas.core.store.edge import EdgeStore

    n = len(vectors)
    units, per_model = layout(n)
    vocab = ["striped", "dotted", "red", "sky", "grass", "wheel", "fur", "water", "metal", "text"]
    t0 = time.perf_counter()
    with EdgeStore(path) as store:
        store.bind_embedder(info)
        for m in range(MODELS):
            model_id = f"m{m:03d}"
            layers = [
                LayerInfo(f"layer{l}", l, l / (LAYERS - 1), units, "conv") for l in range(LAYERS)
            ]
            store.put_model(
                ModelEntry(
                    model_id, architecture="synthetic", layers=layers, status=ModelStatus.INDEXING
                )
            )
            recs = []
            for j in range(per_model):
                i = m * per_model + j
                layer, unit = divmod(j, units)
                recs.append(
                    NeuronRecord(
                        model_id,
                        f"layer{layer}",
                        layer,
                        layer / (LAYERS - 1),
                        unit,
                        vectors[i],
                        top_samples=[
                            TopSample(
                                f"probe/{(i * 7 + t) % 10000:05d}.jpg",
                                (i * 7 + t) % 10000,
                                1.0 - t / 10,
                            )
                            for t in range(5)
                        ],
                        labels={
                            "broden": [
                                Label(vocab[(i + t) % len(vocab)], 0.1 - t / 100) for t in range(3)
                            ]
                        },
                        label_set=[vocab[i % len(vocab)]],
                        clarity=float((i % 100) / 100),
                    )
                )
                if len(recs) == 2000:
                    store.upsert_neurons(recs)
                    recs = []
            if recs:
                store.upsert_neurons(recs)
            store.put_model(
                ModelEntry(
                    model_id, architecture="synthetic", layers=layers, status=ModelStatus.INDEXED
                )
            )
            if m % 10 == 9:
                print(
                    f"  wrote {(m + 1) * per_model} neurons ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
        print("  building HNSW ...", flush=True)
        store.optimize()
    return time.perf_counter() - t0


# -- server process ----------------------------------------------------------------------------------
def serve(store: str, embedder: str, port_file: str, workers: int) -> None:
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.queries import Atlas
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.service.server import build_server

    atlas = Atlas(EdgeStore(store), load_embedder(embedder, "cpu"))
    atlas.embedder()
    srv = build_server(atlas, "127.0.0.1:0", max_workers=workers, close_atlas=True).start()
    Path(port_file).write_text(str(srv.port))
    srv.wait()


# -- load generation ------------------------------------------------------------------------------------
async def drive(
    address: str, requests: list, concurrency: int, method: str = "SearchNeurons"
) -> tuple[np.ndarray, float, list]:
    """Send all requests with ``concurrency`` in flight; (latencies s, wall s, responses)."""
    import grpc

    from neuronatlas.v1 import neuronatlas_pb2_grpc as pb_grpc

    channels = [grpc.aio.insecure_channel(address) for _ in range(min(4, concurrency))]
    stubs = [pb_grpc.NeuronAtlasServiceStub(c) for c in channels]
    lat = np.zeros(len(requests))
    responses: list = [None] * len(requests)
    nxt = iter(range(len(requests)))

    async def worker(w: int) -> None:
        call = getattr(stubs[w % len(stubs)], method)
        for i in nxt:
            t = time.perf_counter()
            responses[i] = await call(requests[i], timeout=120)
            lat[i] = time.perf_counter() - t

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - t0
    for c in channels:
        await c.close()
    return lat, wall, responses


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (and its threads) so far (Linux /proc)."""
    return sum(proc_counters(pid)[:2])


def proc_counters(pid: int) -> tuple[float, float, int, int]:
    """(user CPU s, system CPU s, major page faults, minor page faults) of process ``pid`` so
    far (Linux /proc). Major faults are pages read back from disk: on this VM the host's memory
    reclaim (DAMON pageout) evicts a store's cold mapped pages, which the next queries fault
    back in. Minor faults are pages already in memory that the process maps for the first time:
    a new server process pays one for every page of the store its queries touch."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[9]), int(fields[7])


def run_case(
    address: str,
    requests: list,
    concurrency: int,
    warmup: list | None = None,
    server_pid: int | None = None,
    method: str = "SearchNeurons",
    searches: int = 1,
) -> tuple[dict, list]:
    """Warm up (by default with the first requests), then measure every request; with
    ``server_pid``, also the server process's CPU time per search (``searches`` a request)."""
    warmup = requests[: min(len(requests), 2 * concurrency)] if warmup is None else warmup
    asyncio.run(drive(address, warmup, concurrency, method))
    before = proc_counters(server_pid) if server_pid else (0.0, 0.0, 0, 0)
    lat, wall, responses = asyncio.run(drive(address, requests, concurrency, method))
    after = proc_counters(server_pid) if server_pid else (math.nan, math.nan, 0, 0)
    user, system, faults, minor = (a - b for a, b in zip(after, before, strict=True))
    n = len(requests) * searches
    return {
        "p50_ms": float(np.percentile(lat, 50) * 1e3),
        "p99_ms": float(np.percentile(lat, 99) * 1e3),
        "qps": n / wall,
        "n": n,
        "server_cpu_ms": (user + system) / n * 1e3,
        "server_sys_ms": system / n * 1e3,
        "major_faults": faults / n,
        "minor_faults": minor / n,
    }, responses


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--neurons", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512, help="embedding dimension (CLIP ViT-B/32: 512)")
    ap.add_argument(
        "--embedder",
        default="open_clip:ViT-B-32:random:0",
        help="text embedder for text queries (random weights: same cost as the real model)",
    )
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=3000, help="requests per warm scenario")
    ap.add_argument(
        "--group-requests", type=int, default=300, help="requests per per-model scenario"
    )
    ap.add_argument("--cold-requests", type=int, default=300)
    ap.add_argument(
        "--batch", type=int, default=32, help="searches per BatchSearchNeurons call (0: none)"
    )
    ap.add_argument(
        "--workdir", type=Path, default=WORK, help="where the synthetic store is cached"
    )
    ap.add_argument("--recall-queries", type=int, default=200)
    ap.add_argument("--workers", type=int, default=32, help="server RPC threads")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument(
        "--build-only", action="store_true", help="build (or keep) the store, measure nothing"
    )
    ap.add_argument(
        "--vector-only", action="store_true", help="skip the text scenarios (no CLIP text tower)"
    )
    ap.add_argument("--serve", nargs=2, metavar=("STORE", "PORT_FILE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve[0], args.embedder, args.serve[1], args.workers)

    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.v1 import neuronatlas_pb2 as pb

    load0 = os.getloadavg()[0]
    info = load_embedder(args.embedder, "cpu").info
    if info.dim != args.dim:
        raise SystemExit(f"--dim {args.dim} differs from the embedder's dimension {info.dim}")
    units, _ = layout(args.neurons)
    store = args.workdir / f"grpc-{args.neurons}-{args.dim}"
    marker = store / "bench.json"
    vectors = synthetic_vectors(args.neurons, args.dim, seed=0)
    build_s = None
    if args.rebuild or not marker.exists():
        import shutil

        shutil.rmtree(store, ignore_errors=True)
        print(f"building a store of {args.neurons} neurons in {store} ...", flush=True)
        build_s = build_store(store, vectors, info)
        marker.write_text(
            json.dumps({"neurons": args.neurons, "dim": args.dim, "build_s": build_s})
        )
    else:
        build_s = json.loads(marker.read_text()).get("build_s")
    if args.build_only:
        print(f"store ready in {store} (built in {build_s:.0f} s)")
        return

    port_file = args.workdir / f"port-{os.getpid()}"
    port_file.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--serve",
            str(store),
            str(port_file),
            "--embedder",
            args.embedder,
            "--workers",
            str(args.workers),
        ]
    )
    try:
        t0 = time.time()
        while not port_file.exists():
            if proc.poll() is not None or time.time() - t0 > 600:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        time.sleep(0.2)
        address = f"127.0.0.1:{port_file.read_text()}"
        rng = np.random.default_rng(1)
        qvec = synthetic_vectors(max(args.requests, args.recall_queries), args.dim, seed=2)
        texts = [
            f"a photo of something {w}"
            for w in ("striped", "dotted", "red", "furry", "metal", "wet", "round", "tall")
        ] * 8
        cases = []
        vec_reqs = [
            pb.SearchNeuronsRequest(vector=pb.Vector(values=v), top_k=10)
            for v in qvec[: args.requests]
        ]
        n_grp = max(args.group_requests, min(args.recall_queries, args.requests))
        grp_reqs = [
            pb.SearchNeuronsRequest(
                vector=pb.Vector(values=v), top_k=100, per_model=1, page_size=100
            )
            for v in qvec[:n_grp]
        ]
        txt = [texts[i] for i in rng.integers(0, len(texts), args.requests)]
        cases.append(("vector", "unfiltered, top_k=10", vec_reqs))
        cases.append(("vector", "per_model=1, 100 models", grp_reqs))
        cases.append(
            (
                "text (cached)",
                "unfiltered, top_k=10",
                [pb.SearchNeuronsRequest(text=t, top_k=10) for t in txt],
            )
        )
        cases.append(
            (
                "text (cached)",
                "per_model=1, 100 models",
                [
                    pb.SearchNeuronsRequest(text=t, top_k=100, per_model=1, page_size=100)
                    for t in txt[: args.group_requests]
                ],
            )
        )
        cold = [
            pb.SearchNeuronsRequest(
                text=f"cold query number {i} about {texts[i % 8][22:]}", top_k=10
            )
            for i in range(args.cold_requests)
        ]
        cases.append(("text (cold)", "unfiltered, top_k=10", cold))
        rows, responses, agree = [], {}, ""
        for kind, mode, reqs in cases:
            # cold texts must not be warmed up: warm the server with other unseen texts instead
            warm = [
                pb.SearchNeuronsRequest(text=f"warm-up text {i}", top_k=10)
                for i in range(2 * args.concurrency)
            ]
            if args.vector_only and kind != "vector":
                continue
            stats, resp = run_case(
                address, reqs, args.concurrency, warm if reqs is cold else None, proc.pid
            )
            responses[(kind, mode)] = resp
            rows.append((kind, mode, stats))
            print(
                f"  {kind:14s} {mode:26s} p50 {stats['p50_ms']:7.2f} ms  p99 {stats['p99_ms']:7.2f} ms  "
                f"{stats['qps']:7.0f} q/s  server CPU {stats['server_cpu_ms']:.2f} ms/q "
                f"(system {stats['server_sys_ms']:.2f}, {stats['major_faults']:.2f} major faults/q)",
                flush=True,
            )
        single, _ = run_case(address, vec_reqs[:500], 1, server_pid=proc.pid)
        rows.append(("vector", "unfiltered, 1 client", single))
        if args.batch:
            b = args.batch
            batches = [
                pb.BatchSearchNeuronsRequest(requests=vec_reqs[i : i + b])
                for i in range(0, len(vec_reqs) - b + 1, b)
            ]
            batched, answers = run_case(
                address, batches, args.concurrency, None, proc.pid, "BatchSearchNeurons", b
            )
            mode = f"unfiltered, top_k=10, {b} a call"
            rows.append(("vector batch", mode, batched))
            print(f"  vector batch   {mode}: server CPU {batched['server_cpu_ms']:.2f} ms/search")
            # each search of a batch is answered as the same search alone
            alone = responses[("vector", "unfiltered, top_k=10")]
            flat = [r for a in answers for r in a.responses]
            same = sum(
                [h.key for h in x.results] == [h.key for h in y.results]
                for x, y in zip(flat, alone, strict=False)
            )
            agree = f"; batched searches answered as the same search alone: {same} of {len(flat)}"
            if not args.vector_only:  # new texts, embedded b at a time (one text-tower call)
                cold_b = [
                    pb.SearchNeuronsRequest(
                        text=f"cold batched query {i} about {texts[i % 8][22:]}", top_k=10
                    )
                    for i in range(args.cold_requests - args.cold_requests % b)
                ]
                warm_b = [
                    pb.BatchSearchNeuronsRequest(
                        requests=[
                            pb.SearchNeuronsRequest(text=f"warm-up batch {i}.{j}", top_k=10)
                            for j in range(b)
                        ]
                    )
                    for i in range(2)
                ]
                stats, _ = run_case(
                    address,
                    [
                        pb.BatchSearchNeuronsRequest(requests=cold_b[i : i + b])
                        for i in range(0, len(cold_b), b)
                    ],
                    max(1, args.concurrency // b),
                    warm_b,
                    proc.pid,
                    "BatchSearchNeurons",
                    b,
                )
                mode = f"unfiltered, top_k=10, {b} a call"
                rows.append(("text (cold) batch", mode, stats))
                print(f"  text (cold) batch {mode}: {stats['qps']:.0f} searches/s", flush=True)

        # recall@10 against exact search, and of the per-model best neuron
        q = qvec[: args.recall_queries]
        exact = np.argsort(-(q @ vectors.T), axis=1)[:, :10]
        served = responses[("vector", "unfiltered, top_k=10")][: args.recall_queries]
        recall = np.mean(
            [
                len({key_of(i, units) for i in exact[j]} & {h.key for h in served[j].results}) / 10
                for j in range(len(q))
            ]
        )
        per_model = units * LAYERS
        grp = responses[("vector", "per_model=1, 100 models")][: args.recall_queries]
        hits = total = 0
        for j in range(len(q)):
            best = (q[j] @ vectors.T).reshape(MODELS, per_model).argmax(axis=1)
            want = {key_of(m * per_model + b, units) for m, b in enumerate(best)}
            hits += len(want & {h.key for h in grp[j].results})
            total += MODELS
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    size = sum(f.stat().st_blocks * 512 for f in store.rglob("*") if f.is_file())
    load = os.getloadavg()[0]
    header = (
        f"## {args.neurons:,} neurons, dim {args.dim}, {MODELS} models, {args.concurrency} concurrent clients\n\n"
        f"Host: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}; "
        f"server and load generator on the same host; load average {load:.1f} at the end (the host "
        f"is shared with other jobs). Store {size / 2**20:.0f} MiB on disk, "
        f"built in {build_s:.0f} s (write + HNSW). Text embedder `{args.embedder}` on CPU.\n\n"
        f"Command: `python bench/bench_grpc.py --neurons {args.neurons} --requests {args.requests} "
        f"--group-requests {args.group_requests} --cold-requests {args.cold_requests}"
        f"{' --vector-only' if args.vector_only else ''}{' --batch ' + str(args.batch) if args.batch != 32 else ''}`; load average at start "
        f"{load0:.2f}. Server CPU ms/query: the server process's user+system CPU time over the "
        "measured requests / requests (its share of the 2 cores; client and server share the "
        "host); of it system: the kernel's share; major faults: pages the server read back from "
        "disk, per request. Batch rows count searches: requests, throughput and CPU are per "
        "search; p50 / p99 are of the calls.\n\n"
    )
    table = [
        "| query | mode | requests | p50 ms | p99 ms | throughput q/s | server CPU ms/query "
        "| of it system | major faults/query |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, mode, s in rows:
        table.append(
            f"| {kind} | {mode} | {s['n']} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['qps']:.0f} "
            f"| {s['server_cpu_ms']:.2f} | {s['server_sys_ms']:.2f} | {s['major_faults']:.2f} |"
        )
    table.append("")
    table.append(
        f"recall@10 vs exact (unfiltered, {len(q)} queries): **{recall:.3f}**; "
        f"per-model best-neuron recall: **{hits / total:.3f}**{agree}"
    )
    text = header + "\n".join(table) + "\n"
    print("\n" + text)
    write_section(RESULTS, text)


def write_section(path: Path, text: str) -> None:
    """Put ``text`` (a section: its first line a ``## `` heading) into the results file where
    the section with the same heading line was (up to the next heading: hand-written notes go
    under headings of their own), or at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    old = (
        path.read_text()
        if path.exists()
        else "# gRPC benchmark\n\nWritten by `bench/bench_grpc.py`.\n"
    )
    heading = text.split("\n", 1)[0] + "\n"
    sections = old.split("\n## ")
    new = text.removeprefix("## ")
    at = [i for i, s in enumerate(sections) if i and ("## " + s).startswith(heading)]
    if at:
        sections[at[0]] = new
    else:
        sections.append(new)
    path.write_text("\n## ".join(s.rstrip() + "\n" for s in sections))


if __name__ == "__main__":
    main()
