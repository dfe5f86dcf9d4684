"""Benchmark of model comparison on two synthetic models (default 10 layers x 1,000 neurons,
512-d): load from an embedded store, semantic view (target <= 1 s), activation view (CKA on
1,000-sample sketches), peak memory. Prints a markdown table and appends it to
``bench/results/compare.md``.

    python bench/bench_compare.py                     # 10 x 1000 neurons, 512-d
    python bench/bench_compare.py --layers 5 --units 200 --no-store   # quick
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "compare.md"


def synthetic_models(layers: int, units: int, dim: int, related: bool, seed: int = 0):
    """A: per layer a few 'concept' directions plus noise, drifting with depth. B: a noisy
    within-layer permutation of A (related) or an independent draw (unrelated)."""
    rng = np.random.default_rng(seed)

    def draw():
        common = rng.standard_normal(dim)
        out = []
        for li in range(layers):
            concepts = rng.standard_normal((32, dim)) + li * 0.3 * common
            v = concepts[rng.integers(0, 32, units)] + 0.7 * rng.standard_normal((units, dim))
            out.append(v)
        return np.concatenate(out).astype(np.float32)

    a = draw()
    if related:
        perm = np.concatenate([li * units + rng.permutation(units) for li in range(layers)])
        b = a[perm] + 0.3 * rng.standard_normal(a.shape).astype(np.float32)
    else:
        b = draw()

    def norm(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    return norm(a), norm(b)


def model_vectors(name: str, vecs: np.ndarray, layers: int, units: int):
    from neuronatlas.core.compare import ModelSide, ModelVectors
    from neuronatlas.core.records import ModelEntry

    side = ModelSide(
        name,
        0,
        [f"layer{i}" for i in range(layers)],
        np.linspace(0, 1, layers),
        np.full(layers, units),
        np.repeat(np.arange(layers), units),
        np.tile(np.arange(units), layers),
        [""] * len(vecs),
    )
    return ModelVectors(ModelEntry(name), side, vecs, np.arange(layers + 1) * units)


def store_load(a: np.ndarray, layers: int, units: int) -> tuple[float, float]:
    """Write A into a fresh embedded store, then time reading it back for comparison."""
    from neuronatlas.core.compare import load_model_vectors
    from neuronatlas.core.records import (
        EmbedderInfo,
        LayerInfo,
        ModelEntry,
        ModelStatus,
        NeuronRecord,
    )
    from neuronatlas.core.store.edge import EdgeStore

    with tempfile.TemporaryDirectory() as tmp, EdgeStore(Path(tmp) / "store") as store:
        store.bind_embedder(EmbedderInfo("bench", "random:0", a.shape[1]))
        t = time.perf_counter()
        recs = [
            NeuronRecord(
                "a",
                f"layer{i // units}",
                i // units,
                (i // units) / max(layers - 1, 1),
                i % units,
                a[i],
            )
            for i in range(len(a))
        ]
        for s in range(0, len(recs), 2000):
            store.upsert_neurons(recs[s : s + 2000])
        store.put_model(
            ModelEntry(
                "a",
                status=ModelStatus.INDEXED,
                layers=[
                    LayerInfo(f"layer{i}", i, i / max(layers - 1, 1), units) for i in range(layers)
                ],
            )
        )
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        mv = load_model_vectors(store, "a")
        load_s = time.perf_counter() - t
        assert mv.vectors.shape == a.shape
    return write_s, load_s


def view_parts(va, vb, repeat: int) -> dict[str, float]:
    """Where one semantic view's time goes (best of ``repeat`` views, part by part): the pass
    over the models themselves, the noise floor's passes, the one-to-one matching of the models
    and of the floor, and the rest. Times the module's own ``block_stats`` / ``match_neurons``
    calls, in the order ``semantic_view`` makes them."""
    from neuronatlas.core import compare as C

    spans: list[tuple[str, float]] = []

    def timed(name, fn):
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spans.append((name, time.perf_counter() - t))

        return run

    best: dict[str, float] = {}
    saved = C.block_stats, C.match_neurons
    C.block_stats = timed("block_stats", C.block_stats)
    C.match_neurons = timed("match_neurons", C.match_neurons)
    try:
        for _ in range(repeat):
            spans.clear()
            t = time.perf_counter()
            C.semantic_view(va, vb)
            total = time.perf_counter() - t
            blocks = [d for name, d in spans if name == "block_stats"]
            matches = [d for name, d in spans if name == "match_neurons"]
            parts = {
                "main pass": blocks[0],
                "noise-floor passes": sum(blocks[1:]),
                "matching": matches[0],
                "floor matching": sum(matches[1:]),
            }
            parts["rest"] = total - sum(parts.values())
            parts["view"] = total
            for k, v in parts.items():
                best[k] = min(best.get(k, v), v)
    finally:
        C.block_stats, C.match_neurons = saved
    return best


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--layers", type=int, default=10)
    ap.add_argument("--units", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--samples", type=int, default=1000, help="sketch samples for CKA")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-store", action="store_true", help="skip the store write/load timing")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    from neuronatlas.core.compare import cka_matrix, semantic_view

    n = args.layers * args.units
    rows = []
    write_s = load_s = float("nan")
    matmul_s: dict[str, float] = {}
    parts: dict[bool, dict[str, float]] = {}
    load0 = os.getloadavg()
    for related in (True, False):
        a, b = synthetic_models(args.layers, args.units, args.dim, related)
        if related and not args.no_store:
            write_s, load_s = store_load(a, args.layers, args.units)
        va, vb = (
            model_vectors("a", a, args.layers, args.units),
            model_vectors("b", b, args.layers, args.units),
        )
        semantic_view(va, vb)  # warm-up (imports, BLAS threads)
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            view = semantic_view(va, vb)
            times.append(time.perf_counter() - t)
        if related:  # the bound: a bare float32 matmul of the same shapes, same run
            import torch

            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            for name, fn in (
                ("numpy a @ b.T", lambda a=a, b=b: a @ b.T),
                ("torch a @ b.T", lambda ta=ta, tb=tb: ta @ tb.T),
            ):
                fn()
                mm = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    fn()
                    mm.append(time.perf_counter() - t)
                matmul_s[name] = min(mm)
        parts[related] = view_parts(va, vb, args.repeat)
        tracemalloc.start()
        semantic_view(va, vb)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append(
            (
                ("related (noisy permuted copy)" if related else "unrelated (independent)"),
                min(times),
                float(np.median(times)),
                peak / 2**20,
                view,
            )
        )

    rng = np.random.default_rng(1)
    acts = [
        rng.standard_normal((args.samples, args.units)).astype(np.float32)
        for _ in range(args.layers)
    ]
    t = time.perf_counter()
    cka_matrix(acts, acts)
    cka_matrix(acts, acts, perm=rng.permutation(args.samples))
    cka_s = time.perf_counter() - t

    lines = [
        f"## compare_models: {args.layers} layers x {args.units} neurons per model ({n:,} vs {n:,}), "
        f"{args.dim}-d",
        "",
        f"Machine: {platform.machine()}, {__import__('os').cpu_count()} CPU cores, "
        f"numpy {np.__version__}. Command: `python bench/bench_compare.py"
        f"{'' if (args.layers, args.units, args.dim) == (10, 1000, 512) else ' ...'}`",
        "",
        f"| case | semantic view best of {args.repeat} (s) | median (s) | peak traced memory (MiB) "
        "| matching | matching score (floor) | coverage A (floor) | depth rho (floor) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, best, med, peak, v in rows:
        lines.append(
            f"| {name} | {best:.2f} | {med:.2f} | {peak:.0f} | {v.matching_method} | "
            f"{v.matching.value:.3f} ({v.matching.baseline:.3f}) | {v.coverage_a.value:.1%} "
            f"({v.coverage_a.baseline:.1%}) | {v.alignment.rho.value:+.2f} ({v.alignment.rho.baseline:+.2f}) |"
        )
    bound = min(matmul_s.values())
    lines += [
        "",
        f"Bare float32 matmul {n:,} x {n:,} x {args.dim}, best of {args.repeat}: "
        + ", ".join(f"{k} {v:.2f} s" for k, v in matmul_s.items())
        + f". Semantic view / fastest bare matmul: related {rows[0][1] / bound:.2f}x, "
        f"unrelated {rows[1][1] / bound:.2f}x (goal <= 1.3x). Load average at start "
        f"{load0[0]:.2f}, at end {os.getloadavg()[0]:.2f}; torch threads "
        f"{__import__('torch').get_num_threads()}.",
        "",
        f"Where a view's time goes (each part's best of {args.repeat} views; seconds):",
        "",
        "| case | " + " | ".join(parts[True]) + " |",
        "|---|" + "---|" * len(parts[True]),
        *(
            f"| {'related' if rel else 'unrelated'} | "
            + " | ".join(f"{v:.3f}" for v in parts[rel].values())
            + " |"
            for rel in (True, False)
        ),
        "",
        "| other cost | value |",
        "|---|---|",
        f"| write {n:,} neurons into an Edge store (setup, once) | {write_s:.1f} s |",
        f"| load {n:,} neurons with vectors from the Edge store (`load_model_vectors`) | {load_s:.2f} s |",
        f"| activation view: CKA {args.layers}x{args.layers} layers + permuted-sample floor, "
        f"{args.samples} samples x {args.units} units | {cka_s:.2f} s |",
        f"| process peak RSS | {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    old = args.out.read_text() if args.out.exists() else ""
    # append: earlier runs and their notes stay in the file
    args.out.write_text(old + ("\n" if old and not old.endswith("\n\n") else "") + text)


if __name__ == "__main__":
    main()
