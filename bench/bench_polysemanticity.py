"""Does polysemanticity measure mixing? Rank correlation with class impurity on real data.

    python bench/bench_polysemanticity.py [--depths 20,32] [--k 20] [--limit N]
        -> bench/results/polysemanticity.md

For every neuron of the CIFAR-10 ResNets (conv and linear layers, spatial mean), the k probe
images that activate it most (the indexer's streaming top-k) over the CIFAR-10 test JPEGs.
Truth: the *class impurity* of those k images, 1 - the share of the majority class (0 = all
one class; the CIFAR class folders are the labels). Scores, from the k images' embeddings:

- ``polysemanticity``: 2 m (1 - cos) of a 2-means split, m the minority share (NeuronAtlas);
- ``polysemanticity_sl``: 1 - cos of the same two centres (SemanticLens);
- ``gini``: 4 p (1 - p) (1 - cos), the between-cluster-dispersion variant (not shipped);
- ``1 - clarity``: one minus the mean pairwise cosine.

Three embeddings of the probe images, because this machine has no pretrained CLIP:
``class oracle`` (each image = its class's one-hot direction + Gaussian noise: what a perfect
foundation model would give; isolates the score definitions), ``other ResNet`` (the
penultimate 64-d features of the *other* CIFAR ResNet, centred and L2-normalised: a real,
imperfect embedding that knows the classes), and ``na-tiny random CLIP`` (the embedder the
tests and demo use here; random weights, so it knows little about classes).

Reported: Spearman rank correlation of each score with impurity, over all neurons, over the
last stage (``layer3.*``) and over the neurons with a majority class (impurity <= 0.5), and
the mean scores of single-outlier vs. mixed neurons.
Data: ../shared/data next to the repository (or $NEURONATLAS_SHARED_DATA).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from _common import DATA, REPO, find_weights, oracle_embeddings, publish
from scipy.stats import spearmanr

from neuronatlas.core import scores
from neuronatlas.indexer.probes import batches, open_probe_set, probe_embeddings
from neuronatlas.indexer.sources import build_model
from neuronatlas.indexer.topk import StreamingTopK, class_ids

WORK = REPO / "bench" / "_work" / "polysemanticity"
RESULTS = REPO / "bench" / "results" / "polysemanticity.md"
TINY = "open_clip:na-tiny:random:0"
# all neurons; the last stage; neurons whose top-k has a majority class (impurity <= 0.5),
# where "the share of the minority concept" is defined
SUBSETS = ("all", "layer3.*", "majority class")


def forward(depth: int, probe, k: int, batch: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Top-k sample indices of every conv/linear unit (layer -> (units, k)) and the
    penultimate features (the input of ``linear``), (N, 64)."""
    built = build_model(
        {"kind": "cifar_resnet", "depth": depth, "weights": str(find_weights(depth))}
    )
    model = built.module.eval()
    names = [
        n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    mods = dict(model.named_modules())
    pooled: dict[str, torch.Tensor] = {}
    feats: list[torch.Tensor] = []

    def hook(name):
        def fn(mod, inp, out):
            pooled[name] = out.mean(dim=(2, 3)) if out.ndim == 4 else out
            if name == "linear":
                feats.append(inp[0].detach().clone())

        return fn

    handles = [mods[n].register_forward_hook(hook(n)) for n in names]
    tops: dict[str, StreamingTopK] = {}
    with torch.inference_mode():
        for start, x in batches(probe, built.input.transform(), batch):
            model(x)
            for n in names:
                if n not in tops:
                    tops[n] = StreamingTopK(pooled[n].shape[1], k)
                tops[n].update(pooled[n], start)
    for h in handles:
        h.remove()
    return {n: t.result()[1] for n, t in tops.items()}, torch.cat(feats).numpy()


def feature_embeddings(feats: np.ndarray) -> np.ndarray:
    f = feats - feats.mean(axis=0, keepdims=True)
    out: np.ndarray = (f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)).astype(
        np.float32
    )
    return out


def score_table(topk_emb: np.ndarray) -> dict[str, np.ndarray]:
    poly, poly_sl = scores.polysemanticity_both(topk_emb)
    ca, cb, share = scores.two_means(topk_emb)
    dist = np.clip(1.0 - np.einsum("nd,nd->n", ca, cb), 0.0, 2.0)
    return {
        "polysemanticity": poly,
        "polysemanticity_sl": poly_sl,
        "gini": 4.0 * share * (1.0 - share) * dist,
        "1 - clarity": 1.0 - scores.clarity(topk_emb),
    }


def impurity(idx: np.ndarray, classes: np.ndarray) -> np.ndarray:
    cls = classes[idx]  # (N, k)
    counts = np.stack([(cls == c).sum(axis=1) for c in range(int(classes.max()) + 1)], axis=1)
    out: np.ndarray = 1.0 - counts.max(axis=1) / idx.shape[1]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--depths", default="20,32")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--limit", type=int, default=None, help="class-balanced probe subset")
    ap.add_argument("--batch", type=int, default=250)
    args = ap.parse_args()
    torch.manual_seed(0)
    load = os.getloadavg()
    t0 = time.perf_counter()
    WORK.mkdir(parents=True, exist_ok=True)
    probe = open_probe_set(
        WORK, f"cifar{args.limit or 'all'}", DATA / "cifar10-test", args.limit, progress=False
    )
    classes = class_ids(probe.files)
    assert classes is not None, "the probe set needs class folders"
    depths = [d for d in (int(x) for x in args.depths.split(",")) if find_weights(d) is not None]
    runs = {d: forward(d, probe, args.k, args.batch) for d in depths}

    from neuronatlas.core.embedder import load_embedder

    tiny = probe_embeddings(WORK, probe, load_embedder(TINY, device="cpu"), 256, False)
    embeddings: dict[str, dict[int, np.ndarray]] = {
        "class oracle": dict.fromkeys(depths, oracle_embeddings(classes)),
        "na-tiny random CLIP": dict.fromkeys(depths, tiny),
    }
    if len(depths) >= 2:
        embeddings["other ResNet"] = {
            d: feature_embeddings(runs[depths[(i + 1) % len(depths)]][1])
            for i, d in enumerate(depths)
        }

    lines = [
        f"# bench_polysemanticity — {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} torch threads",
        "",
        f"Command: `python bench/bench_polysemanticity.py --depths {args.depths} --k {args.k}"
        + (f" --limit {args.limit}" if args.limit else "")
        + f"`; load average before the run {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
        f"(1 / 5 / 15 min).",
        "",
        f"Probe set: {len(probe)} CIFAR-10 test JPEGs (10 class folders); k = {args.k}; models: "
        + ", ".join(f"resnet{d}" for d in depths)
        + ". Truth: impurity = 1 - majority-class share of a neuron's top-k images.",
        "",
        "Spearman rank correlation with impurity (higher = the score ranks neurons by how "
        "mixed they are):",
        "",
        "| embedding | neurons | n | polysemanticity (2 m) | polysemanticity_sl (SemanticLens) "
        "| gini 4p(1-p) | 1 - clarity |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    outliers = []
    for emb_name, per_depth in embeddings.items():
        for subset in SUBSETS:
            imp_all, sc_all = [], {}
            for d in depths:
                tops = runs[d][0]
                for layer, idx in tops.items():
                    if subset == "layer3.*" and not layer.startswith("layer3."):
                        continue
                    imp = impurity(idx, classes)
                    keep = imp <= 0.5 if subset.startswith("majority") else np.ones(len(imp), bool)
                    imp_all.append(imp[keep])
                    for name, v in score_table(per_depth[d][idx]).items():
                        sc_all.setdefault(name, []).append(v[keep])
            imp = np.concatenate(imp_all)
            rho = {n: spearmanr(np.concatenate(v), imp).statistic for n, v in sc_all.items()}
            lines.append(
                f"| {emb_name} | {subset} | {len(imp)} | {rho['polysemanticity']:.3f} "
                f"| {rho['polysemanticity_sl']:.3f} | {rho['gini']:.3f} "
                f"| {rho['1 - clarity']:.3f} |"
            )
            if subset == "all":
                poly = np.concatenate(sc_all["polysemanticity"])
                sl = np.concatenate(sc_all["polysemanticity_sl"])
                one = np.isclose(imp, 1.0 / args.k)
                even = imp >= 0.4
                if one.any() and even.any():
                    outliers.append(
                        f"| {emb_name} | {one.sum()} | {sl[one].mean():.3f} | "
                        f"{sl[even].mean():.3f} | {poly[one].mean():.3f} | "
                        f"{poly[even].mean():.3f} | {even.sum()} |"
                    )
    lines += [
        "",
        "Single outlier (impurity 1/k: one image off the majority class) vs. mixed neurons "
        "(impurity >= 0.4), mean scores over all neurons:",
        "",
        "| embedding | 1-outlier neurons | SL: 1 outlier | SL: mixed | ours: 1 outlier "
        "| ours: mixed | mixed neurons |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *outliers,
        "",
        f"Wall time {time.perf_counter() - t0:.0f} s.",
    ]
    publish(RESULTS, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
