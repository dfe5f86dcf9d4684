"""Concept components vs single neurons on the CIFAR-10 ResNets, against a random-basis floor,
and whether class importance finds each class in the last layers.

    python bench/bench_components.py [--depths 20,32,44,56] [--limit 10000] [--k 20]
        -> bench/results/components.md

Per model, the indexer (``build_index``, components ``nmf`` and ``cluster``, class importance)
indexes the outputs of the last block of each stage (``layer1.{n-1}``, ``layer2.{n-1}``,
``layer3.{n-1}``: post-ReLU, so NMF clips nothing) and the classifier ``linear`` on the CIFAR-10
test JPEGs, top-k = 20, the default extraction (rank min(16, max(2, C // 8)), 2,000 images x
64 positions, seed 0). Every record's top-k images are read back from the store.

Scores of a record's top-k images:

- ``purity``: the share of the majority class (CIFAR class folders; the semantic truth this
  machine has, since the tiny random CLIP knows no classes);
- ``clarity`` / ``polysemanticity`` under the class-oracle embedding (each image = its class's
  one-hot direction + 5 % Gaussian noise, as in ``bench_polysemanticity.py``): clarity and
  mixing of the top-k *by class*, with the service's own score functions (``core/scores.py``);
- ``clarity (CLIP)``: the stored clarity (tiny random CLIP: visual similarity only).

Noise floor: for every layer, a basis of as many random unit directions as the layer has
components (Gaussian, and |Gaussian| = random non-negative, NMF's constraint), each direction
indexed the same way (projection of the mean-pooled activation, top-k over the probe set) and
scored the same way; mean over ``--draws`` bases.

Importance: for ``layer3.{n-1}`` and ``linear`` and each kind, for every class c the record of
that layer with the highest stored importance for c (payload ``top_classes``: all 10 classes)
"carries c" when the majority class of its top-k images is c. Chance: 1 in 10 per class.
Data: ../shared/data next to the repository (or $NEURONATLAS_SHARED_DATA).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
from collections import Counter

import numpy as np
import torch
from _common import DATA, REPO, oracle_embeddings, weights

from neuronatlas.core import scores
from neuronatlas.core.embedder import load_embedder
from neuronatlas.core.store.edge import EdgeStore
from neuronatlas.indexer.api import build_index
from neuronatlas.indexer.components import ComponentOptions
from neuronatlas.indexer.layers import ActivationTap, resolve_layers
from neuronatlas.indexer.probes import batches, open_probe_set, probe_embeddings
from neuronatlas.indexer.sources import build_model
from neuronatlas.indexer.topk import class_ids

WORK = REPO / "bench" / "_work" / "components"
RESULTS = REPO / "bench" / "results" / "components.md"
TINY = "open_clip:na-tiny:random:0"
KINDS = ("neuron", "nmf", "cluster")


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def layers_of(depth: int) -> list[str]:
    n = (depth - 2) // 6
    return [f"layer1.{n - 1}", f"layer2.{n - 1}", f"layer3.{n - 1}", "linear"]


def top_scores(idx: np.ndarray, classes: np.ndarray, oracle: np.ndarray) -> dict[str, np.ndarray]:
    """Per record (rows of ``idx``, its top-k sample indices): purity, oracle clarity and
    polysemanticity."""
    cls = classes[idx]
    purity = np.array([Counter(r).most_common(1)[0][1] / len(r) for r in cls.tolist()])
    emb = oracle[idx]
    return {
        "purity": purity,
        "clarity": np.asarray(scores.clarity(emb)),
        "poly": np.asarray(scores.polysemanticity(emb)),
    }


def pooled_activations(depth: int, probe, layers: list[str], batch: int) -> dict[str, np.ndarray]:
    """Mean-pooled activations (N, C) of ``layers`` over the probe set (for the floors)."""
    built = build_model({"kind": "cifar_resnet", "depth": depth, "weights": str(weights(depth))})
    specs = resolve_layers(built.module, layers, built.input.shape)
    tap = ActivationTap(built.module, specs, "mean")
    out: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    try:
        with torch.inference_mode():
            for _, x in batches(probe, built.input.transform(), batch):
                pooled = tap(x)
                for s in specs:
                    out[s.name].append(pooled[s.name].numpy())
    finally:
        tap.close()
    return {k: np.concatenate(v) for k, v in out.items()}


def random_floor(
    acts: np.ndarray,
    n_dirs: int,
    k: int,
    classes: np.ndarray,
    oracle: np.ndarray,
    clip: np.ndarray,
    draws: int,
    nonneg: bool,
    seed: int,
) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    got: dict[str, list[float]] = {}
    for _ in range(draws):
        d = rng.standard_normal((n_dirs, acts.shape[1]))
        if nonneg:
            d = np.abs(d)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        proj = acts @ d.T  # (N, K)
        idx = np.argsort(-proj, axis=0, kind="stable")[:k].T  # (K, k), ties -> lower index
        s = top_scores(idx, classes, oracle)
        s["clip_clarity"] = np.asarray(scores.clarity(clip[idx]))
        for name, v in s.items():
            got.setdefault(name, []).append(float(np.mean(v)))
    return {name: float(np.mean(v)) for name, v in got.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depths", default="20,32,44,56")
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--draws", type=int, default=5)
    args = ap.parse_args()
    depths = [int(d) for d in args.depths.split(",")]
    load_before = uptime()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    WORK.mkdir(parents=True, exist_ok=True)
    home = WORK / "home"
    embedder = load_embedder(TINY, device="cpu")
    limit = None if args.limit >= 10000 else args.limit
    probe = open_probe_set(home, f"cifar{args.limit}", DATA / "cifar10-test", limit, progress=False)
    clip = probe_embeddings(home, probe, embedder, args.batch, progress=False)
    classes = class_ids(probe.files)
    assert classes is not None
    oracle = oracle_embeddings(classes)
    names = sorted({f.split("/", 1)[0] for f in probe.files})

    rows: list[dict] = []  # per model x layer x kind (and floors)
    recover: list[dict] = []
    timings: list[dict] = []
    store_dir = WORK / "store"
    import shutil

    shutil.rmtree(store_dir, ignore_errors=True)
    with EdgeStore(store_dir) as store:
        for depth in depths:
            model_id = f"resnet{depth}"
            layers = layers_of(depth)
            t1 = time.perf_counter()
            entry = build_index(
                store,
                embedder,
                model_id=model_id,
                source={"kind": "cifar_resnet", "depth": depth, "weights": str(weights(depth))},
                probe_dir=DATA / "cifar10-test",
                probe_name=f"cifar{args.limit}",
                home=home,
                layers=layers,
                k=args.k,
                probe_limit=limit,
                batch_size=args.batch,
                progress=False,
                components=ComponentOptions(kinds=["nmf", "cluster"]),
            )
            wall = time.perf_counter() - t1
            tim = entry.extra["index"]["timings"]
            comp = entry.extra["components"]
            timings.append(
                {
                    "model": model_id,
                    "wall": wall,
                    "forward": tim.get("forward_s", 0.0),
                    "fit": tim.get("components_s", 0.0),
                    "importance": tim.get("importance_s", 0.0),
                    "write": tim.get("write_s", 0.0),
                    "rows": comp["rows"],
                    "fits": comp["per_layer"],
                }
            )
            recs = list(store.scroll_neurons(model_id, kinds=list(KINDS), with_vectors=False))
            acts = pooled_activations(depth, probe, layers, args.batch)
            for li, layer in enumerate(layers):
                for kind in KINDS:
                    mine = sorted(
                        (r for r in recs if r.layer == layer and r.kind == kind),
                        key=lambda r: r.unit,
                    )
                    idx = np.array([[s.index for s in r.top_samples] for r in mine])
                    s = top_scores(idx, classes, oracle)
                    rows.append(
                        {
                            "model": model_id,
                            "layer": layer,
                            "stage": li,
                            "kind": kind,
                            "n": len(mine),
                            "purity": float(s["purity"].mean()),
                            "clarity": float(s["clarity"].mean()),
                            "poly": float(s["poly"].mean()),
                            "clip_clarity": float(np.mean([r.clarity for r in mine])),
                            "selective": float((s["purity"] >= 0.5).mean()),
                        }
                    )
                n_comp = sum(1 for r in recs if r.layer == layer and r.kind == "nmf")
                for floor, nonneg in (("random", False), ("random >= 0", True)):
                    f = random_floor(
                        acts[layer],
                        n_comp,
                        args.k,
                        classes,
                        oracle,
                        clip,
                        args.draws,
                        nonneg,
                        seed=depth * 100 + li,
                    )
                    rows.append(
                        {
                            "model": model_id,
                            "layer": layer,
                            "stage": li,
                            "kind": floor,
                            "n": n_comp,
                            **f,
                            "selective": float("nan"),
                        }
                    )
            for layer in layers[-2:]:
                for kind in KINDS:
                    mine = [r for r in recs if r.layer == layer and r.kind == kind]
                    hits = []
                    for c, name in enumerate(names):

                        def imp(r, name=name):
                            return next(
                                (x.importance for x in r.top_classes if x.class_name == name),
                                -np.inf,
                            )

                        best = max(mine, key=lambda r: (imp(r), -r.unit))
                        maj = Counter(classes[s.index] for s in best.top_samples).most_common(1)
                        hits.append(int(maj[0][0]) == c)
                    recover.append(
                        {"model": model_id, "layer": layer, "kind": kind, "hits": sum(hits)}
                    )
            print(f"{model_id}: indexed in {wall:.1f} s", flush=True)
    load_after = uptime()
    write_report(args, probe, rows, recover, timings, load_before, load_after, t0)


def write_report(args, probe, rows, recover, timings, load_before, load_after, t0) -> None:
    lines = [
        f"# bench_components — {platform.machine()}, {torch.get_num_threads()} torch threads",
        "",
        f"Command: `python bench/bench_components.py --depths {args.depths} --limit {args.limit} "
        f"--k {args.k} --draws {args.draws}` (run alone).",
        "",
        f"`uptime` before: `{load_before}`",
        "",
        f"`uptime` after: `{load_after}`",
        "",
        f"Probe set: {len(probe)} CIFAR-10 test JPEGs (10 class folders); k = {args.k}; "
        "components: nmf and cluster with the default rule r = min(16, max(2, C // 8)) "
        "(2 / 4 / 8 / 2 components for the 16 / 32 / 64-channel blocks and the 10-logit "
        "classifier), fitted on 2,000 class-balanced images x 64 positions (seed 0). Floors: "
        f"{args.draws} random bases of the same size per layer (Gaussian; |Gaussian|).",
        "",
        "## Clarity and polysemanticity: components vs neurons of the same layers",
        "",
        "Mean over the four models. purity = majority-class share of the top-k; clarity / poly "
        "= the service's scores of the top-k under the class-oracle embedding; CLIP clarity = "
        "the stored clarity (tiny random CLIP). Higher purity / clarity and lower poly = "
        "a clearer concept.",
        "",
        "| layer (stage) | kind | records / model | purity | clarity | poly | CLIP clarity | "
        "purity >= 0.5 |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    stage_names = ["layer1 (last block)", "layer2 (last block)", "layer3 (last block)", "linear"]
    order = [*KINDS, "random", "random >= 0"]
    for st in range(4):
        for kind in order:
            sel = [r for r in rows if r["stage"] == st and r["kind"] == kind]
            if not sel:
                continue
            mean = {
                k: float(np.mean([r[k] for r in sel]))
                for k in ("n", "purity", "clarity", "poly", "clip_clarity", "selective")
            }
            sel_txt = "—" if np.isnan(mean["selective"]) else f"{mean['selective']:.0%}"
            lines.append(
                f"| {stage_names[st]} | {kind} | {mean['n']:.1f} | {mean['purity']:.3f} | "
                f"{mean['clarity']:.3f} | {mean['poly']:.3f} | {mean['clip_clarity']:.3f} | "
                f"{sel_txt} |"
            )
    lines += [
        "",
        "Per model (purity; clarity / poly under the class oracle):",
        "",
        "| model | layer | neuron | nmf | cluster | random | random >= 0 |",
        "|---|---|---|---|---|---|---|",
    ]
    models = list(dict.fromkeys(r["model"] for r in rows))
    for m in models:
        for layer in dict.fromkeys(r["layer"] for r in rows if r["model"] == m):
            cells = []
            for kind in order:
                r = next(x for x in rows if x["model"] == m and x["layer"] == layer and
                         x["kind"] == kind)  # fmt: skip
                cells.append(f"{r['purity']:.2f} ({r['clarity']:.2f} / {r['poly']:.2f})")
            lines.append(f"| {m} | {layer} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Does class importance find the class?",
        "",
        "For each class c, the record of the layer with the highest importance for c (mean "
        "gradient x activation of logit c along its direction over the class's images); "
        "counted when the majority class of its top-k images is c. Out of 10 classes; chance "
        '1 per model. The tiny random CLIP cannot name classes, so "carries label c" is '
        "measured by the top-k images' majority class folder.",
        "",
        "| model | layer | neuron | nmf | cluster |",
        "|---|---|---:|---:|---:|",
    ]
    for m in models:
        for layer in dict.fromkeys(r["layer"] for r in recover if r["model"] == m):
            cells = [
                next(
                    x["hits"]
                    for x in recover
                    if x["model"] == m and x["layer"] == layer and x["kind"] == kind
                )
                for kind in KINDS
            ]
            lines.append(f"| {m} | {layer} | " + " | ".join(f"{c}/10" for c in cells) + " |")
    lines += [
        "",
        "## Cost",
        "",
        "| model | index wall s | forward s | components fit s | importance s | write s | "
        "rows per layer (positions per image) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for t in timings:
        rows_txt = ", ".join(f"{n}" for n in t["rows"]["rows"].values())
        lines.append(
            f"| {t['model']} | {t['wall']:.1f} | {t['forward']:.1f} | {t['fit']:.1f} | "
            f"{t['importance']:.1f} | {t['write']:.1f} | {rows_txt} "
            f"({t['rows']['positions_per_image']}; {t['rows']['memory_bytes'] / 2**20:.1f} MiB) |"
        )
    lines += ["", "NMF fit (1 - relative squared error) per layer:", ""]
    for t in timings:
        fits = ", ".join(f"{layer} {v['nmf']['fit']:.3f}" for layer, v in t["fits"].items())
        lines.append(f"- {t['model']}: {fits}")
    lines += ["", f"Wall time {time.perf_counter() - t0:.0f} s.", ""]
    RESULTS.write_text("\n".join(lines))
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
