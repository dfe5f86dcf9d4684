"""Knowledge-store benchmark: upsert throughput, search latency and recall@10.

Data: random-but-clustered unit vectors (``--centres`` centres; each point = centre + noise
in a random ``--intrinsic-dim``-d subspace + a little isotropic noise, like real embeddings
whose neighbourhoods have low intrinsic dimension; ``--intrinsic-dim 0`` = isotropic noise,
the hard case). Points belong round-robin to ``--models`` models. Queries are held-out noisy
points. Ground truth is exact numpy brute force.

    python bench/bench_store.py --sizes 100000            # ~ a few minutes on 2 cores
    python bench/bench_store.py --sizes 1000000 --backends edge --edge-variants int8 \
        --ef 128,192 --search-threads 1,0 --memory-limit 6   # ~ 20 min

Edge stores are built in a process of their own (the data streamed from a file, never all in
its memory), so its peak memory is the store's: VmHWM, and the peak PSS, which counts each
page once (Edge maps its vector files twice, and RSS counts such pages twice);
``--memory-limit`` runs that process in a memory cgroup, as a container limit would. Then the store's files are dropped from the page cache
and a fresh process opens it (cold open), and another (warm). Queries follow a warm-up pass,
once per ``--search-threads`` pool size.

Prints a markdown table and appends it to bench/results/store.md (``--out``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from neuronatlas.core.records import EmbedderInfo, ModelEntry, ModelStatus, NeuronRecord, neuron_key
from neuronatlas.core.store._common import QdrantStoreBase
from neuronatlas.core.store.base import SearchFilter
from neuronatlas.core.store.edge import SEARCH_THREADS, EdgeStore

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


def records(rows: np.ndarray, models: int, start: int) -> list[NeuronRecord]:
    """Records of points ``start, start + 1, ...`` whose vectors are ``rows``."""
    return [
        NeuronRecord(f"m{i % models:03d}", "l", 0, 0.5, i // models, v, clarity=0.5)
        for i, v in enumerate(rows, start)
    ]


def key_of(i: int, models: int) -> str:
    return neuron_key(f"m{i % models:03d}", "l", i // models)


def fill(store: QdrantStoreBase, x: np.ndarray, models: int, dim: int) -> tuple[float, float]:
    store.bind_embedder(EmbedderInfo("bench", "random", dim))
    t0 = time.perf_counter()
    for i in range(0, len(x), 4096):
        store.upsert_neurons(records(x[i : i + 4096], models, i))
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
# EdgeStore.vector_datatype, EdgeStore.vector_memory); "f32" is the store before issue 13.
VARIANTS = {
    "f32": ("none", "float32", "cached"),
    "int8": ("int8", "float32", "cached"),
    "f16": ("none", "float16", "cached"),
    "f16int8": ("int8", "float16", "cached"),
    "tq4": ("turbo4", "float32", "cached"),
    "tq4cold": ("turbo4", "float32", "cold"),
    "f16tq4": ("turbo4", "float16", "cached"),
    "f16tq4cold": ("turbo4", "float16", "cold"),
}


def _proc_bytes(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    """The ``keys`` of a ``/proc`` file of "Key: N kB" lines, in bytes."""
    out = {}
    for line in Path(path).read_text().splitlines():
        key, _, val = line.partition(":")
        if key in keys:
            out[key] = int(val.split()[0]) * 1024
    return out


def _memory(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM / RssAnon / RssFile of process ``pid`` in bytes (Linux /proc)."""
    return _proc_bytes(f"/proc/{pid}/status", ("VmRSS", "VmHWM", "RssAnon", "RssFile"))


def _pss(pid: int) -> dict[str, int]:
    """Pss / Pss_Anon / Pss_File of process ``pid`` in bytes (``/proc/<pid>/smaps_rollup``).

    RSS counts a page once per mapping: Edge maps each vector file twice, so a file page it
    reads through both mappings counts twice in VmRSS / VmHWM (measured: 100k tq4 build, peak
    VmHWM 1.27 GiB, peak Pss 0.84 GiB). Pss counts every physical page once, split among the
    mappings (and processes) sharing it: the process's real memory."""
    return _proc_bytes(f"/proc/{pid}/smaps_rollup", ("Pss", "Pss_Anon", "Pss_File"))


def build_child(spec: dict) -> dict:
    """Runs in its own process (``--build-child``): fill a new store from the raw float32 file
    ``spec["data"]`` chunk by chunk (the data never all in memory) and build the HNSW graph;
    with ``spec["cgroup"]``, inside that memory cgroup. The parent samples this process's
    memory (``run_child``): the store's own footprint, nothing else's."""
    if spec.get("cgroup"):
        Path(spec["cgroup"], "cgroup.procs").write_text(str(os.getpid()))
    n, dim, models = spec["n"], spec["dim"], spec["models"]
    store = EdgeStore(spec["work"], search_threads=spec["threads"])
    store.hnsw_m, store.hnsw_ef_construct = spec["m"], spec["ef_construct"]
    store.quantization, store.vector_datatype, store.vector_memory = VARIANTS[spec["variant"]]
    store.bind_embedder(EmbedderInfo("bench", "random", dim))
    t0 = time.perf_counter()
    chunk = 4096
    with open(spec["data"], "rb") as f:
        for i in range(0, n, chunk):
            x = np.fromfile(f, np.float32, count=min(chunk, n - i) * dim).reshape(-1, dim)
            store.upsert_neurons(records(x, models, i))
    t1 = time.perf_counter()
    hwm_load = _memory()["VmHWM"]
    store.optimize()
    t2 = time.perf_counter()
    for m in range(models):
        store.put_model(ModelEntry(f"m{m:03d}", status=ModelStatus.INDEXED))
    size = store.size_bytes()
    store.close()
    return {
        "upsert_s": t1 - t0,
        "optimize_s": t2 - t1,
        "size": size,
        "hwm": _memory()["VmHWM"],
        "hwm_load": hwm_load,
    }


def open_child(spec: dict) -> dict:
    """Runs in its own process (``--open-child``): time opening the built store."""
    t = time.perf_counter()
    store = EdgeStore(spec["work"], search_threads=spec["threads"])
    open_s = time.perf_counter() - t
    mem = _memory()
    store.close()
    return {"open_s": open_s, "rss_after_open": mem["VmRSS"]}


def run_child(flag: str, spec: dict) -> dict:
    """Run this script's ``flag`` phase in a child process; its JSON answer, plus the child's
    memory at its largest sampled RSS (every 0.1 s) and PSS (every 2 s), read from /proc by
    this process."""
    import json
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, __file__, flag, json.dumps(spec)], stdout=subprocess.PIPE, text=True
    )
    top: dict[str, int] = {}
    top_pss: dict[str, int] = {}
    tick = 0
    while proc.poll() is None:
        try:  # smaps_rollup walks the page tables (~0.1 s at 12 GB mapped): every 2 s
            mem, pss = _memory(proc.pid), (_pss(proc.pid) if tick % 20 == 0 else {})
        except (OSError, ValueError):
            mem, pss = {}, {}
        tick += 1
        if mem.get("VmRSS", 0) > top.get("VmRSS", 0):
            top = mem
        if pss.get("Pss", 0) > top_pss.get("Pss", 0):
            top_pss = pss
        time.sleep(0.1)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"{flag} failed with exit status {proc.returncode}")
    answer = json.loads(out.strip().splitlines()[-1])
    answer["at_peak"], answer["pss_peak"] = top, top_pss
    return answer


def memory_cgroup(limit_gib: float) -> Path:
    """A new memory cgroup (v1 or v2) under this process's own, limited to ``limit_gib``: what
    a container's memory limit is. Needs write access to the cgroup tree (root here)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base, limit_file = (
                Path("/sys/fs/cgroup/memory") / path.lstrip("/"),
                "memory.limit_in_bytes",
            )
            break
    else:
        own = Path("/proc/self/cgroup").read_text().split("::", 1)[-1].strip()
        base, limit_file = Path("/sys/fs/cgroup") / own.lstrip("/"), "memory.max"
    group = base / f"neuronatlas-bench-{os.getpid()}"
    group.mkdir()
    (group / limit_file).write_text(str(int(limit_gib * 2**30)))
    return group


def cgroup_peak(group: Path) -> tuple[int, int]:
    """(peak usage in bytes, times the limit was hit) of a cgroup made by memory_cgroup."""
    if (group / "memory.max_usage_in_bytes").exists():
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        hits = int((group / "memory.failcnt").read_text())
    else:
        peak = int((group / "memory.peak").read_text())
        events = dict(ln.split() for ln in (group / "memory.events").read_text().splitlines())
        hits = int(events.get("max", 0))
    return peak, hits


def evict(path: Path) -> int:
    """Drop the store's files from the page cache (``posix_fadvise(DONTNEED)`` after a sync;
    no process has them mapped now) and return how many of their bytes are still resident
    (``fincore``), so that the open that follows reads from disk."""
    import subprocess

    os.sync()
    files = [p for p in path.rglob("*") if p.is_file()]
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    if shutil.which("fincore") is None:
        return -1
    res = subprocess.run(
        ["fincore", "-b", "-n", "-o", "RES", *map(str, files)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return sum(int(v) for v in res.split())


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def query_rows(store, tag, args, n, q, truth, truth_f, qmodel, best, lines, up, opt) -> None:
    """The search rows of one opened edge store: each ef unfiltered and filtered by one
    model, then per model."""
    k = 10

    def measure(label: str, fn, queries, expect, *build) -> None:
        res, lat = timed(fn, queries)
        lines.append(row(label, n, lat, recall(res, expect, args.models), *build))
        print(lines[-1], flush=True)

    for v in q:  # warm-up: a server's steady state, not the first touch of each page
        store.search(v, limit=k)
    flts = [SearchFilter(model_ids=(f"m{m:03d}",)) for m in qmodel]
    for ef in args.ef:
        store.search_ef = ef
        measure(
            f"{tag} (m={args.m}, ef_construct={args.ef_construct}, ef={ef})",
            lambda v: [h.record.key for h in store.search(v, limit=k)],
            q,
            truth,
            up,
            opt,
        )
        measure(
            f"{tag}, filtered by one model (ef={ef})",
            lambda qf: [h.record.key for h in store.search(qf[0], limit=k, flt=qf[1])],
            list(zip(q, flts, strict=False)),
            truth_f,
        )
    for ef in args.ef:
        store.search_ef = ef
        measure(
            f"{tag}, per model (per_model=1, {args.models} models, ef={ef})",
            lambda v: [h.record.key for h in store.search_per_model(v, per_model=1, max_models=k)],
            q,
            best,
        )


def bench_edge(n, args, x, q, truth, truth_f, qmodel, best, lines, variant="int8") -> None:
    k = 10

    work = Path(args.workdir) / f"edge-{n}-{variant}"
    data = Path(args.workdir) / f"data-{n}-{args.seed}.f32"
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
    work.parent.mkdir(parents=True, exist_ok=True)
    if not data.exists():
        x.tofile(data)
    threads = args.search_threads[0]
    spec = {
        "work": str(work),
        "data": str(data),
        "n": n,
        "dim": args.dim,
        "models": args.models,
        "m": args.m,
        "ef_construct": args.ef_construct,
        "variant": variant,
        "threads": threads,
    }
    up = opt = None
    if args.reuse and (work / "store.json").exists():
        lines.append(
            f"| edge [{variant}]: the store built by an earlier run (--reuse) | {n:,} | | | | |"
        )
    else:
        load0 = os.getloadavg()[0]
        group = memory_cgroup(args.memory_limit) if args.memory_limit else None
        spec["cgroup"] = str(group) if group else ""
        try:
            built = run_child("--build-child", spec)
            limited = cgroup_peak(group) if group else None
        finally:
            if group:
                group.rmdir()
        spec["cgroup"] = ""
        up, opt = built["upsert_s"], built["optimize_s"]
        top, pss = built["at_peak"], built["pss_peak"]
        limit = (
            f"memory limit {args.memory_limit:g} GiB (cgroup: peak {gib(limited[0])}, limit hit "
            f"{limited[1]} times); "
            if limited
            else ""
        )
        resident = evict(work)
        cold = run_child("--open-child", spec)
        warm = run_child("--open-child", spec)
        lines.append(
            f"| edge [{variant}] load+build in its own process: upsert {up:.0f}s + optimize "
            f"{opt:.0f}s = {up + opt:.0f}s, disk {built['size'] / 2**20:,.0f} MiB; {limit}peak RSS "
            f"{gib(built['hwm'])} (loading alone {gib(built['hwm_load'])}; at the largest sample "
            f"{gib(top.get('VmRSS', 0))} = anonymous {gib(top.get('RssAnon', 0))} + file-backed "
            f"{gib(top.get('RssFile', 0))}); peak PSS {gib(pss.get('Pss', 0))} (anonymous "
            f"{gib(pss.get('Pss_Anon', 0))} + file-backed {gib(pss.get('Pss_File', 0))}); "
            f"open cold {cold['open_s']:.2f}s ({resident / 2**20:.0f} MiB of the store still cached, "
            f"RSS after {gib(cold['rss_after_open'])}), warm {warm['open_s']:.2f}s; "
            f"load avg {load0:.1f} -> {os.getloadavg()[0]:.1f} | {n:,} | | | | |"
        )
        print(lines[-1], flush=True)
    for threads in args.search_threads:
        store = EdgeStore(work, search_threads=threads)
        for oversampling in args.oversampling:
            store.quantization_oversampling = oversampling
            tag = (
                f"edge [{variant}, {threads or 'cpu'} search thread{'s' if threads != 1 else ''}"
                f"{f', oversampling {oversampling:g}' if len(args.oversampling) > 1 else ''}]"
            )
            query_rows(store, tag, args, n, q, truth, truth_f, qmodel, best, lines, up, opt)
        store.close()
    store = EdgeStore(work, search_threads=args.search_threads[0])
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
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    data.unlink(missing_ok=True)


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
    ap.add_argument(
        "--search-threads",
        default=str(SEARCH_THREADS),
        help="edge search-pool sizes to query with, e.g. 1,0 (0: one per CPU); the first "
        "is also used to build",
    )
    ap.add_argument(
        "--oversampling",
        default=str(EdgeStore.quantization_oversampling),
        help="rescoring oversampling of quantized queries to try, e.g. 8,4",
    )
    ap.add_argument("--keep", action="store_true", help="keep the built edge store")
    ap.add_argument(
        "--reuse", action="store_true", help="query the edge store a --keep run left (no build)"
    )
    ap.add_argument(
        "--memory-limit",
        type=float,
        default=0,
        help="build the edge store in a memory cgroup of this many GiB (a container's limit; "
        "needs root)",
    )
    ap.add_argument("--build-child", help=argparse.SUPPRESS)
    ap.add_argument("--open-child", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(ROOT / "_work"))
    ap.add_argument("--out", default=str(ROOT / "results" / "store.md"))
    args = ap.parse_args()
    if args.build_child or args.open_child:
        import json

        spec = json.loads(args.build_child or args.open_child)
        print(json.dumps(build_child(spec) if args.build_child else open_child(spec)))
        return
    args.ef = [int(v) for v in args.ef.split(",")]
    args.search_threads = [int(v) for v in args.search_threads.split(",")]
    args.oversampling = [float(v) for v in args.oversampling.split(",")]
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
