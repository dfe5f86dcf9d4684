"""Benchmark the per-layer maths (scores.py), label scoring and the tiny test embedder.

Run by hand:  python bench/bench_scores.py [--neurons 64,512,2048] [--k 20] [--dim 512]
Prints a markdown table and writes it to bench/results/scores.md.
"""

from __future__ import annotations

import argparse
import platform
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from _common import publish

from neuronatlas.core import scores

RESULTS = Path(__file__).parent / "results" / "scores.md"
CONCEPTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "concepts"


def timed(fn, repeat: int = 3) -> tuple[float, float]:
    """Best wall time (s) over ``repeat`` runs and the peak traced memory (MiB) of one run."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return best, peak


def bench_scores(neurons: list[int], k: int, dim: int) -> list[tuple[str, str, float, float]]:
    rows = []
    rng = np.random.default_rng(0)
    for n in neurons:
        emb = rng.normal(size=(n, k, dim)).astype(np.float32)
        vecs = scores.neuron_vectors(emb)
        shape = f"N={n}, k={k}, d={dim}"
        for name, fn in (
            ("neuron_vectors", lambda e=emb: scores.neuron_vectors(e)),
            ("clarity", lambda e=emb: scores.clarity(e)),
            ("polysemanticity (2-means, 20 it)", lambda e=emb: scores.polysemanticity(e)),
            ("redundancy (chunk 4096)", lambda v=vecs: scores.redundancy(v)),
        ):
            t, mem = timed(fn)
            rows.append((name, shape, t * 1e3, mem))
    big = rng.normal(size=(20000, dim)).astype(np.float32)
    t, mem = timed(lambda: scores.redundancy(big, chunk=2048), repeat=1)
    rows.append(("redundancy (chunk 2048)", f"N=20000, d={dim}", t * 1e3, mem))
    return rows


def bench_embedder() -> list[tuple[str, str, float, float]]:
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.labels import LabelScorer, load_vocabulary

    rows = []
    emb = load_embedder("open_clip:na-tiny:random:0", device="cpu")
    x = torch.randn(256, 3, 32, 32)
    t, mem = timed(lambda: emb.encode_images(x, batch_size=256))
    rows.append(("na-tiny encode_images", "256 images 32 px", t * 1e3, mem))
    texts = [f"a photo of a thing number {i}." for i in range(256)]

    def fresh_texts():
        emb.text_cache.clear()
        emb.encode_text(texts)

    t, mem = timed(fresh_texts)
    rows.append(("na-tiny encode_text (cold)", "256 texts", t * 1e3, mem))
    t, mem = timed(lambda: emb.encode_text(texts))
    rows.append(("na-tiny encode_text (cached)", "256 texts", t * 1e3, mem))
    if (CONCEPTS / "broden_labels_clean.txt").is_file():
        vocab = load_vocabulary(CONCEPTS / "broden_labels_clean.txt")
        t0 = time.perf_counter()
        scorer = LabelScorer(emb, vocab, name="broden")
        build = time.perf_counter() - t0
        rows.append(
            ("LabelScorer build (4 templates)", f"{len(vocab)} labels", build * 1e3, float("nan"))
        )
        v = np.random.default_rng(1).normal(size=(2048, emb.dim)).astype(np.float32)
        t, mem = timed(lambda: scorer.label_sets(v))
        rows.append(("LabelScorer.label_sets", f"2048 vectors x {len(vocab)} labels", t * 1e3, mem))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--neurons", default="64,512,2048")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--no-embedder", action="store_true")
    args = ap.parse_args()
    rows = bench_scores([int(n) for n in args.neurons.split(",")], args.k, args.dim)
    if not args.no_embedder:
        rows += bench_embedder()
    lines = [
        f"# bench_scores — {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads, numpy {np.__version__}",
        "",
        "| operation | size | best wall (ms) | peak traced memory (MiB) |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {name} | {size} | {ms:.1f} | {mem:.1f} |" for name, size, ms, mem in rows]
    publish(RESULTS, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
