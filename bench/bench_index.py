"""Indexing benchmarks on the real CIFAR-10 data (run by hand; prints markdown tables).

    python bench/bench_index.py overhead [--depth 56] [--limit N]
        index wall time / bare forward-pass time of one CIFAR ResNet over the probe images,
        probe embeddings already cached (-> bench/results/index_overhead.md)
    python bench/bench_index.py zoo [--embedder open_clip:na-tiny:random:0] [--limit N]
        from scratch: one CLIP pass over the probe set, then the four CIFAR ResNets
        (-> bench/results/index_zoo.md)

Every measured stage runs in its own child process, so its peak RSS (ru_maxrss) is its own.
Data: ../shared/data next to the repository (or $NEURONATLAS_SHARED_DATA).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import DATA, REPO, weights

WORK = REPO / "bench" / "_work"
RESULTS = REPO / "bench" / "results"
VOCAB = DATA / "concepts" / "broden_labels_clean.txt"


def _probe(home: Path, limit: int | None):
    from neuronatlas.indexer.probes import open_probe_set

    return open_probe_set(home, f"cifar{limit or 'all'}", DATA / "cifar10-test", limit)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- stages (run in a child process) ---------------------------------------------------------
def stage_embed(home: Path, embedder_spec: str, limit: int | None, batch: int) -> dict:
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.indexer.probes import probe_embeddings

    probe = _probe(home, limit)
    emb = load_embedder(embedder_spec, device="cpu")
    t = time.perf_counter()
    probe_embeddings(home, probe, emb, batch_size=batch, progress=False)
    return {"wall_s": time.perf_counter() - t, "images": len(probe)}


def stage_bare(home: Path, depth: int, limit: int | None, batch: int) -> dict:
    """The baseline: same loader, same model, no hooks, nothing kept."""
    import torch

    from neuronatlas.indexer.probes import batches
    from neuronatlas.indexer.sources import build_model

    probe = _probe(home, limit)
    built = build_model({"kind": "cifar_resnet", "depth": depth, "weights": str(weights(depth))})
    t = time.perf_counter()
    with torch.inference_mode():
        for _, x in batches(probe, built.input.transform(), batch):
            built.module(x)
    return {"wall_s": time.perf_counter() - t, "images": len(probe)}


def stage_index(home: Path, embedder_spec: str, depth: int, limit: int | None, batch: int) -> dict:
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import register_model
    from neuronatlas.indexer.pipeline import IndexOptions, index_model

    probe = _probe(home, limit)
    emb = load_embedder(embedder_spec, device="cpu")
    with EdgeStore(home / "store") as store:
        register_model(
            store,
            f"resnet{depth}",
            {"kind": "cifar_resnet", "depth": depth, "weights": str(weights(depth))},
        )
        t = time.perf_counter()
        entry = index_model(
            store,
            emb,
            f"resnet{depth}",
            probe,
            home,
            {"broden": VOCAB},
            IndexOptions(batch_size=batch, progress=False),
        )
        wall = time.perf_counter() - t
    return {
        "wall_s": wall,
        "index_wall_s": entry.index_wall_s,
        "neurons": entry.neuron_count,
        "timings": entry.extra["index"]["timings"],
        "images": len(probe),
    }


def _child(stage: str, **kw) -> dict:
    cmd = [sys.executable, __file__, "_stage", stage, json.dumps(kw)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env() -> str:
    import torch

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start"
    )


def _write(name: str, text: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(text)
    print(text)


# -- drivers ---------------------------------------------------------------------------------
def overhead(args) -> None:
    home = WORK / f"overhead-{args.limit or 'all'}"
    env = _env()
    emb = _child(
        "embed", home=str(home), embedder_spec=args.embedder, limit=args.limit, batch=args.batch
    )
    index_args = {
        "home": str(home),
        "embedder_spec": args.embedder,
        "depth": args.depth,
        "limit": args.limit,
        "batch": args.batch,
    }
    warm = _child("index", **index_args)
    bare = _child("bare", home=str(home), depth=args.depth, limit=args.limit, batch=args.batch)
    idx = _child("index", **index_args)
    t = idx["timings"]
    rows = [
        ("bare forward pass (loader + model, no hooks)", bare["wall_s"], 1.0, bare["rss_mb"]),
        (
            "index, first run (label prompts encoded)",
            warm["index_wall_s"],
            warm["index_wall_s"] / bare["wall_s"],
            warm["rss_mb"],
        ),
        (
            "index, re-index (all caches warm)",
            idx["index_wall_s"],
            idx["index_wall_s"] / bare["wall_s"],
            idx["rss_mb"],
        ),
        (
            "  of which forward pass + top-k + stats + sketch",
            t["forward_s"],
            t["forward_s"] / bare["wall_s"],
            None,
        ),
        (
            "  of which vectors, labels, scores, store writes",
            t["write_s"],
            t["write_s"] / bare["wall_s"],
            None,
        ),
    ]
    lines = [
        f"# Indexing overhead: CIFAR ResNet-{args.depth}, {bare['images']} CIFAR-10 test images",
        "",
        f"Command: `python bench/bench_index.py overhead --depth {args.depth}"
        + (f" --limit {args.limit}" if args.limit else "")
        + "`  ",
        f"Machine: {env}  ",
        f"Embedder {args.embedder} (probe embeddings cached beforehand: {emb['wall_s']:.1f} s for "
        f"{emb['images']} images), vocabulary broden ({VOCAB.name}), k=20, batch {args.batch}, "
        f"{idx['neurons']} neurons in the Edge store.",
        "",
        "| stage | wall s | / bare forward | peak RSS MB |",
        "|---|---:|---:|---:|",
    ]
    for name, s, ratio, rss in rows:
        lines.append(f"| {name} | {s:.1f} | {ratio:.3f} | {'' if rss is None else f'{rss:.0f}'} |")
    _write(
        f"index_overhead{'' if not args.limit else f'-{args.limit}'}.md", "\n".join(lines) + "\n"
    )


def zoo(args) -> None:
    tag = args.embedder.split(":")[1]
    home = WORK / f"zoo-{tag}-{args.limit or 'all'}"
    if home.exists():
        import shutil

        shutil.rmtree(home)
    env = _env()
    emb = _child(
        "embed", home=str(home), embedder_spec=args.embedder, limit=args.limit, batch=args.batch
    )
    rows = [("CLIP pass over the probe set", emb["wall_s"], "", emb["rss_mb"])]
    total = emb["wall_s"]
    for depth in (20, 32, 44, 56):
        r = _child(
            "index",
            home=str(home),
            embedder_spec=args.embedder,
            depth=depth,
            limit=args.limit,
            batch=args.batch,
        )
        t = r["timings"]
        rows.append(
            (
                f"resnet{depth}: {r['neurons']} neurons (forward {t['forward_s']:.1f} s, write "
                f"{t['write_s']:.1f} s, embeddings from cache {t['embed_s']:.2f} s)",
                r["index_wall_s"],
                "",
                r["rss_mb"],
            )
        )
        total += r["index_wall_s"]
    lines = [
        f"# Four CIFAR ResNets from scratch, {emb['images']} probe images, embedder {args.embedder}",
        "",
        f"Command: `python bench/bench_index.py zoo --embedder {args.embedder}"
        + (f" --limit {args.limit}" if args.limit else "")
        + "`  ",
        f"Machine: {env}  ",
        f"Random-weight embedder (no downloads here); vocabulary broden, k=20, batch {args.batch}.",
        "",
        "| stage | wall s | peak RSS MB |",
        "|---|---:|---:|",
    ]
    for name, s, _, rss in rows:
        lines.append(f"| {name} | {s:.1f} | {rss:.0f} |")
    lines.append(f"| **total** | **{total:.1f}** | |")
    _write(
        f"index_zoo-{tag}{'' if not args.limit else f'-{args.limit}'}.md", "\n".join(lines) + "\n"
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_stage":
        stage, kw = sys.argv[2], json.loads(sys.argv[3])
        kw["home"] = Path(kw["home"])
        result = {"embed": stage_embed, "bare": stage_bare, "index": stage_index}[stage](**kw)
        result["rss_mb"] = _rss_mb()
        print(json.dumps(result))
        return
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["overhead", "zoo"])
    p.add_argument("--depth", type=int, default=56)
    p.add_argument(
        "--limit", type=int, default=None, help="class-balanced subset of the 10,000 images"
    )
    p.add_argument("--embedder", default="open_clip:na-tiny:random:0")
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args()
    {"overhead": overhead, "zoo": zoo}[args.what](args)


if __name__ == "__main__":
    main()
