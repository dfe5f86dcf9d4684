"""Integrity-check benchmark: what the open-time check, a full ``verify`` and the seal at the
catalogue flip cost on an embedded store.

Data: ``--models`` synthetic models (``tests/helpers.make_records``: random unit vectors, a
few labels, one top sample a neuron) totalling ``--points`` neurons of ``--dim`` dimensions,
written the way the indexer writes them (entry ``indexing``, neurons, entry ``indexed``: the
flip seals each model), then ``optimize()`` (HNSW). Measured, ``--repeat`` times (median):

- open: ``EdgeStore(path)`` with the count check, and the check alone (one exact count per
  indexed model);
- verify: ``store.verify()`` (every point read back with vector and payload, hashed);
- seal: reading one model back and hashing it, what a flip adds.

    python bench/bench_verify.py                      # 20,000 points, 512-d, 10 models
    python bench/bench_verify.py --points 100000 --models 50

Prints a markdown table and appends it to bench/results/verify.md (``--out``), with the load
average before the run (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "tests"))

from helpers import add_model  # noqa: E402

from neuronatlas.core.records import EmbedderInfo  # noqa: E402
from neuronatlas.core.store.edge import EdgeStore  # noqa: E402


def median_s(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="Where to build the store (default: a temp dir).")
    ap.add_argument("--out", default=str(ROOT / "results" / "verify.md"))
    args = ap.parse_args()

    load = os.getloadavg()
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench_verify_"))
    path = work / "store"
    shutil.rmtree(path, ignore_errors=True)
    per_model = args.points // args.models
    layers = {"conv1": per_model // 2, "conv2": per_model - per_model // 2}
    n = per_model * args.models

    t = time.perf_counter()
    seal_s = []
    with EdgeStore(path) as store:
        store.bind_embedder(EmbedderInfo("bench", "random", args.dim))
        for m in range(args.models):
            add_model(store, f"m{m:03d}", layers, seed=m, dim=args.dim)
        write_s = time.perf_counter() - t
        t = time.perf_counter()
        store.optimize()
        optimize_s = time.perf_counter() - t
        for m in range(min(args.repeat, args.models)):
            t = time.perf_counter()
            store._tally_slot(f"m{m:03d}", 0).seal(0)
            seal_s.append(time.perf_counter() - t)

    def open_close() -> None:
        EdgeStore(path).close()

    open_s = median_s(open_close, args.repeat)
    with EdgeStore(path) as store:
        check_s = median_s(store._check_on_open, args.repeat)
        report = store.verify()
        assert report.ok and report.points_scanned == n, report
        verify_s = median_s(store.verify, args.repeat)
    shutil.rmtree(work, ignore_errors=True)

    per10k = lambda s: 1000 * s * 10_000 / n  # noqa: E731
    rows = [
        ("open (incl. the count check)", open_s, ""),
        (f"open-time count check ({args.models} counts)", check_s, ""),
        ("full verify (all vectors + payloads)", verify_s, f"{per10k(verify_s):.0f} ms"),
        (f"seal of one model ({per_model} neurons, at its flip)", statistics.median(seal_s), ""),
    ]
    head = (
        f"### bench_verify: --points {n} --dim {args.dim} --models {args.models}\n\n"
        f"{platform.machine()} · {os.cpu_count()} CPUs · "
        f"load average before the run {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} · "
        f"median of {args.repeat} · {time.strftime('%Y-%m-%d %H:%M')}\n\n"
        f"Store written in {write_s:.1f} s (incl. one seal per model), optimize {optimize_s:.1f} s."
        "\n\n| what | time | per 10k points |\n|---|---|---|\n"
    )
    table = head + "".join(f"| {w} | {1000 * s:.1f} ms | {p} |\n" for w, s, p in rows)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
