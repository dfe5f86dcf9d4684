"""Knowledge-store benchmark: upsert throughput, search latency and recall@10.

Data: random-but-clustered unit vectors (``--centres`` centres; each point = centre + noise
in a random ``--intrinsic-dim``-d subspace + a little isotropic noise, like real embeddings
whose neighbourhoods have low intrinsic dimension; ``--intrinsic-dim 0`` = isotropic noise,
the hard case). Points belong round-robin to ``--models`` models. Queries are held-out noisy
points. Ground truth is exact numpy brute force.

    python bench/bench_store.py --sizes 100000            # ~ a few minutes on 2 cores
    python bench/bench_store.py --sizes 1000000 --no-remote

Prints a markdown table and appends it to bench/results/store.md (``--out``).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from neuronatlas.core.records import EmbedderInfo, ModelEntry, ModelStatus, NeuronRecord, neuron_key
from neuronatlas.core.store._common import QdrantStoreBase
from neuronatlas.core.store.base import SearchFilter
from neuronatlas.core.store.edge import EdgeStore

ROOT = Path(__file__).resolve().parent


def make_data(n: int, n_queries: int, dim: int, centres: int, intrinsic: int, seed: int):
    """(n, dim) points and (n_queries, dim) held-out queries, unit-normalised float32."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    basis = None
    if intrinsic:
        basis = rng.standard_normal((intrinsic, dim)).astype(np.float32) / np.sqrt(dim)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for i in range(0, m, 100_000):
            k = min(100_000, m - i)
            x = c[rng.integers(0, centres, k)]
            if basis is not None:
                x = x + 0.5 * rng.standard_normal((k, intrinsic)).astype(
                    np.float32
                ) @ basis * np.sqrt(dim / intrinsic)
                x = x + 0.05 * rng.standard_normal((k, dim)).astype(np.float32) / np.sqrt(dim)
            else:
                x = x + 0.6 * rng.standard_normal((k, dim)).astype(np.float32) / np.sqrt(dim)
            out[i : i + k] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    return draw(n), draw(n_queries), rng


def exact_topk(x: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Indices of the k best points per query (cosine = dot on unit vectors)."""
    out = np.empty((len(q), k), np.int64)
    for i in range(0, len(q), 64):
        s = q[i : i + 64] @ x.T
        if mask is not None:
            s = np.where(mask[i : i + 64], s, -np.inf)
        part = np.argpartition(-s, k, axis=1)[:, :k]
        order = np.take_along_axis(s, part, 1).argsort(axis=1)[:, ::-1]
        out[i : i + 64] = np.take_along_axis(part, order, 1)
    return out


def records(x: np.ndarray, models: int, start: int, stop: int) -> list[NeuronRecord]:
    return [
        NeuronRecord(f"m{i % models:03d}", "l", 0, 0.5, i // models, x[i], clarity=0.5)
        for i in range(start, stop)
    ]


def key_of(i: int, models: int) -> str:
    return neuron_key(f"m{i % models:03d}", "l", i // models)


def fill(store: QdrantStoreBase, x: np.ndarray, models: int, dim: int) -> tuple[float, float]:
    store.bind_embedder(EmbedderInfo("bench", "random", dim))
    t0 = time.perf_counter()
    for i in range(0, len(x), 4096):
        store.upsert_neurons(records(x, models, i, min(len(x), i + 4096)))
    t1 = time.perf_counter()
    store.optimize()
    t2 = time.perf_counter()
    for m in range(models):
        store.put_model(ModelEntry(f"m{m:03d}", status=ModelStatus.INDEXED))
    return t1 - t0, t2 - t1


def timed(fn, queries) -> tuple[list, np.ndarray]:
    out, lat = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        lat.append(time.perf_counter() - t)
    return out, np.array(lat) * 1000


def recall(found: list[list[str]], truth: np.ndarray, models: int) -> float:
    hits = sum(
        len(set(f) & {key_of(int(i), models) for i in t})
        for f, t in zip(found, truth, strict=False)
    )
    return hits / truth.size


def row(name, n, lat, rec, upsert=None, opt=None):
    ups = (
        f"{n / (upsert + opt):,.0f}/s ({upsert:.0f}s + opt {opt:.0f}s)"
        if upsert is not None
        else ""
    )
    return f"| {name} | {n:,} | {ups} | {np.percentile(lat, 50):.2f} | {np.percentile(lat, 99):.2f} | {rec:.3f} |"


def bench_size(n: int, args, lines: list[str]) -> None:
    print(f"== N={n:,}: generating data", flush=True)
    x, q, rng = make_data(n, args.queries, args.dim, args.centres, args.intrinsic_dim, args.seed)
    k = 10
    truth = exact_topk(x, q, k)
    qmodel = rng.integers(0, args.models, len(q))
    model_of = np.arange(n) % args.models
    truth_f = exact_topk(x, q, k, mask=model_of[None, :] == qmodel[:, None])
    # per model: best point of every model, then the 10 models with the best best-point
    best = np.empty((len(q), k), np.int64)
    for j in range(0, len(q), 32):
        s = q[j : j + 32] @ x.T
        per = np.full((len(s), args.models), -np.inf, np.float32)
        arg = np.zeros((len(s), args.models), np.int64)
        for m in range(args.models):
            sm = s[:, m :: args.models]
            a = sm.argmax(1)
            per[:, m], arg[:, m] = sm[np.arange(len(s)), a], a * args.models + m
        top = np.argsort(-per, axis=1)[:, :k]
        best[j : j + 32] = np.take_along_axis(arg, top, 1)

    if "numpy" in args.backends:  # the floor every index has to beat
        _, lat = timed(lambda v: np.argpartition(-(x @ v), k)[:k], q)
        lines.append(row("numpy brute force", n, lat, 1.0))
        print(lines[-1], flush=True)
    if "edge" in args.backends:
        for variant in args.edge_variants.split(","):
            bench_edge(n, args, x, q, truth, truth_f, qmodel, best, lines, variant)
    if "remote" in args.backends and n <= args.remote_max:
        bench_remote(n, args, x, q, truth, lines)


# --edge-variants: how the neuron shard keeps its vectors (EdgeStore.quantization,
# EdgeStore.vector_datatype); "f32" is the store before issue 13, "int8" the new default.
VARIANTS = {
    "f32": ("none", "float32"),
    "int8": ("int8", "float32"),
    "f16": ("none", "float16"),
    "f16int8": ("int8", "float16"),
}


def bench_edge(n, args, x, q, truth, truth_f, qmodel, best, lines, variant="int8") -> None:
    k = 10

    work = Path(args.workdir) / f"edge-{n}-{variant}"
    shutil.rmtree(work, ignore_errors=True)
    store = EdgeStore(work)
    store.hnsw_m, store.hnsw_ef_construct = args.m, args.ef_construct
    store.quantization, store.vector_datatype = VARIANTS[variant]
    up, opt = fill(store, x, args.models, args.dim)
    size_mib = store.size_bytes() / 2**20
    print(
        f"edge [{variant}]: upsert {up:.1f}s, optimize {opt:.1f}s, size {size_mib:.0f} MiB, "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    store.close()
    t = time.perf_counter()
    store = EdgeStore(work)  # reopen: open time of a built store (page cache warm)
    open_s = time.perf_counter() - t
    lines.append(
        f"| edge [{variant}] load+build: upsert {up:.0f}s + optimize {opt:.0f}s = "
        f"{up + opt:.0f}s, disk {size_mib:,.0f} MiB, reopen {open_s:.2f}s, process peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB, "
        f"load avg {os.getloadavg()[0]:.1f} | {n:,} | | | | |"
    )
    print(lines[-1], flush=True)
    for ef in args.ef:
        store.search_ef = ef
        res, lat = timed(lambda v: [h.record.key for h in store.search(v, limit=k)], q)
        lines.append(
            row(
                f"edge [{variant}] (m={args.m}, ef_construct={args.ef_construct}, ef={ef})",
                n,
                lat,
                recall(res, truth, args.models),
                up,
                opt,
            )
        )
        print(lines[-1], flush=True)
        flts = [SearchFilter(model_ids=(f"m{m:03d}",)) for m in qmodel]
        res, lat = timed(
            lambda qf: [h.record.key for h in store.search(qf[0], limit=k, flt=qf[1])],
            list(zip(q, flts, strict=False)),
        )
        lines.append(
            row(
                f"edge [{variant}], filtered by one model (ef={ef})",
                n,
                lat,
                recall(res, truth_f, args.models),
            )
        )
        print(lines[-1], flush=True)
    store.search_ef = args.ef[-1]
    res, lat = timed(
        lambda v: [h.record.key for h in store.search_per_model(v, per_model=1, max_models=k)], q
    )
    lines.append(
        row(
            f"edge [{variant}], per model (per_model=1, {args.models} models, ef={store.search_ef})",
            n,
            lat,
            recall(res, best, args.models),
        )
    )
    print(lines[-1], flush=True)
    res, lat = timed(
        lambda v: [h.record.key for h in store.search(v, limit=k, exact=True)],
        q[: min(len(q), 100)],
    )
    lines.append(
        row(
            f"edge [{variant}] exact=True (100 queries)",
            n,
            lat,
            recall(res, truth[: len(res)], args.models),
        )
    )
    print(lines[-1], flush=True)
    store.close()
    shutil.rmtree(work, ignore_errors=True)


def bench_remote(n, args, x, q, truth, lines) -> None:
    from qdrant_client import QdrantClient

    from neuronatlas.core.store.remote import RemoteStore

    k = 10
    rstore = RemoteStore(QdrantClient(":memory:"))
    up, opt = fill(rstore, x, args.models, args.dim)
    res, lat = timed(lambda v: [h.record.key for h in rstore.search(v, limit=k)], q)
    lines.append(
        row(
            "qdrant-client :memory: (brute force test double)",
            n,
            lat,
            recall(res, truth, args.models),
            up,
            opt,
        )
    )
    print(lines[-1], flush=True)
    rstore.close()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes", default="100000", help="comma-separated store sizes, e.g. 100000,1000000"
    )
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--models", type=int, default=100)
    ap.add_argument("--centres", type=int, default=1000)
    ap.add_argument(
        "--intrinsic-dim", type=int, default=32, help="noise subspace dimension (0: isotropic)"
    )
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--m", type=int, default=QdrantStoreBase.hnsw_m)
    ap.add_argument("--ef-construct", type=int, default=QdrantStoreBase.hnsw_ef_construct)
    ap.add_argument(
        "--ef", default=str(QdrantStoreBase.search_ef), help="search ef values to try, e.g. 64,128"
    )
    ap.add_argument(
        "--backends", default="numpy,edge,remote", help="which of numpy,edge,remote to run"
    )
    ap.add_argument(
        "--remote-max",
        type=int,
        default=100_000,
        help="largest N also run on qdrant-client :memory:",
    )
    ap.add_argument(
        "--edge-variants",
        default="f32,int8",
        help=f"comma-separated vector storage variants of the edge store: {','.join(VARIANTS)}",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(ROOT / "_work"))
    ap.add_argument("--out", default=str(ROOT / "results" / "store.md"))
    args = ap.parse_args()
    args.ef = [int(v) for v in args.ef.split(",")]
    lines = [
        f"### bench_store: {' '.join(sys.argv[1:]) or '(defaults)'}",
        "",
        " · ".join(
            [
                platform.node(),
                platform.processor() or platform.machine(),
                f"{os.cpu_count()} CPUs (load avg at start {os.getloadavg()[0]:.1f}, shared machine)",
                f"dim {args.dim}",
                f"{args.centres} centres, intrinsic dim {args.intrinsic_dim}",
                f"{args.models} models",
                f"{args.queries} queries",
                time.strftime("%Y-%m-%d %H:%M"),
            ]
        ),
        "",
        "| backend | N | upsert throughput (incl. optimize) | p50 ms | p99 ms | recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for n in [int(s) for s in args.sizes.split(",")]:
        bench_size(n, args, lines)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
