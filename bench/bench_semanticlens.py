"""NeuronAtlas's indexer side by side with the ``semanticlens`` package (run by hand).

Same CIFAR ResNets, same probe images (a class-balanced subset of the CIFAR-10 test JPEGs),
same CLIP weights (a random open_clip checkpoint saved once and loaded by both), k = 20,
spatial-mean aggregation over the conv layers (semanticlens's mean aggregator only takes 4-D
outputs, so the final ``linear`` layer is left out on both sides).

    python -m venv /tmp/slvenv && /tmp/slvenv/bin/pip install semanticlens   # plus neuronatlas
    /tmp/slvenv/bin/python bench/bench_semanticlens.py [--limit 1000] [--arch na-tiny]

Reports wall time for one model (resnet56) and four models, top-k set agreement per neuron,
and polysemanticity ours vs theirs for resnet56 (-> bench/results/index_semanticlens.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from _common import DATA, REPO, weights

WORK = REPO / "bench" / "_work" / "semanticlens"
K = 20


class _Images(torch.utils.data.Dataset):
    """(image, 0) pairs for semanticlens: model transform, or PIL for the foundation model."""

    def __init__(self, probe, transform=None):
        self.probe, self.transform = probe, transform

    def __len__(self):
        return len(self.probe)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.open(self.probe.path(i)).convert("RGB")
        return (self.transform(img) if self.transform else img), 0


def ours(home: Path, spec: str, probe, depths: list[int]) -> tuple[float, dict]:
    """Wall time for embedding the probe set once + indexing ``depths``; resnet56 top-k."""
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import register_model
    from neuronatlas.indexer.pipeline import IndexOptions, index_model

    t = time.perf_counter()
    emb = load_embedder(spec, device="cpu")
    out = {}
    with EdgeStore(home / "store") as store:
        for d in depths:
            register_model(
                store, f"r{d}", {"kind": "cifar_resnet", "depth": d, "weights": str(weights(d))}
            )
            index_model(
                store,
                emb,
                f"r{d}",
                probe,
                home,
                None,
                IndexOptions(layers=["conv1", "layer*"], k=K, batch_size=128, progress=False),
            )
        if 56 in depths:
            for r in store.scroll_neurons("r56"):
                out[(r.layer, r.unit)] = ([s.index for s in r.top_samples], r.polysemanticity)
    return time.perf_counter() - t, out


def theirs(ckpt: Path, arch: str, probe, depths: list[int]) -> tuple[float, dict]:
    import semanticlens as sl
    from semanticlens.component_visualization.activation_based import ActivationComponentVisualizer
    from semanticlens.foundation_models.clip import OpenClip

    from neuronatlas.indexer.layers import candidate_layers
    from neuronatlas.indexer.sources import build_model

    t = time.perf_counter()
    fm = OpenClip(arch, pretrained=str(ckpt))
    lens = sl.Lens(fm, device="cpu")
    out = {}
    for d in depths:
        built = build_model({"kind": "cifar_resnet", "depth": d, "weights": str(weights(d))})
        layers = [n for n in candidate_layers(built.module) if n != "linear"]
        cv = ActivationComponentVisualizer(
            built.module,
            _Images(probe, built.input.transform()),
            _Images(probe),
            layer_names=layers,
            num_samples=K,
            device="cpu",
            cache_dir=None,
        )
        db = lens.compute_concept_db(cv, batch_size=128)
        lens.eval_clarity(db)
        lens.eval_redundancy({n: v.mean(1) for n, v in db.items()})
        poly = lens.eval_polysemanticity(db)
        if d == 56:
            for n in layers:
                ids = cv.get_max_reference(n)
                for u in range(ids.shape[0]):
                    out[(n, u)] = (ids[u].tolist(), float(poly[n][u]))
    return time.perf_counter() - t, out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument(
        "--arch", default="na-tiny", help="open_clip architecture (random weights, saved once)"
    )
    p.add_argument(
        "--four",
        action="store_true",
        help="also time the four-model zoo (slow: sklearn KMeans per neuron)",
    )
    args = p.parse_args()
    torch.manual_seed(0)

    from neuronatlas.core.embedder.openclip import register_tiny_config, save_random_checkpoint
    from neuronatlas.indexer.probes import open_probe_set

    register_tiny_config()
    if WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True)
    ckpt = save_random_checkpoint(args.arch, WORK / f"{args.arch}-random0.pt", seed=0)
    spec = f"open_clip:{args.arch}:{ckpt}"
    rows = []
    results = {}
    for depths in ([56], [20, 32, 44, 56]) if args.four else ([56],):
        home = WORK / f"home-{len(depths)}"
        probe = open_probe_set(home, "cifar", DATA / "cifar10-test", args.limit)
        t_ours, o = ours(home, spec, probe, depths)
        t_theirs, s = theirs(ckpt, args.arch, probe, depths)
        rows.append((len(depths), t_ours, t_theirs))
        results = (o, s)
    o, s = results
    keys = sorted(set(o) & set(s))
    same = [set(o[k][0]) == set(s[k][0]) for k in keys]
    jacc = [len(set(o[k][0]) & set(s[k][0])) / len(set(o[k][0]) | set(s[k][0])) for k in keys]
    leaked = sum(-1 in s[k][0] for k in keys)
    po = np.array([o[k][1] for k in keys])
    ps = np.array([s[k][1] for k in keys])
    from scipy.stats import pearsonr, spearmanr

    lines = [
        f"# NeuronAtlas indexer vs semanticlens {__import__('semanticlens').__version__ if hasattr(__import__('semanticlens'), '__version__') else '0.2.1'}",
        "",
        f"Command: `/tmp/slvenv/bin/python bench/bench_semanticlens.py --limit {args.limit} --arch {args.arch}"
        + (" --four" if args.four else "")
        + "`  ",
        f"{len(probe)} class-balanced CIFAR-10 test JPEGs, open_clip {args.arch} with random weights saved to one "
        f"checkpoint that both load, k={K}, spatial mean, conv layers only, CPU ({os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end). NeuronAtlas times include writing the Edge store, "
        "clarity, polysemanticity and redundancy; semanticlens times include its concept DB and the same three scores.",
        "",
        "| models | NeuronAtlas s | semanticlens s | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for n, a, b in rows:
        lines.append(f"| {n} | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
    lines += [
        "",
        f"resnet56, {len(keys)} conv neurons: identical top-{K} sets for {np.mean(same):.1%}, mean Jaccard "
        f"{np.mean(jacc):.4f}; semanticlens returned placeholder id -1 for {leaked} neurons.  ",
        f"Polysemanticity: ours mean {po.mean():.4f}, theirs mean {ps.mean():.4f}, Pearson "
        f"{pearsonr(po, ps)[0]:.3f}, Spearman {spearmanr(po, ps)[0]:.3f}, mean |diff| {np.abs(po - ps).mean():.4f}.",
        "",
        "Why sets can differ: semanticlens keeps its running top-k in bfloat16 (ties and rounding near the k-th "
        "value) and starts from 0 / id -1, so a neuron whose activations are all negative keeps placeholders; "
        "NeuronAtlas keeps float32 with a stable tie order (lower sample index first) and refuses k > probe size. "
        "Their polysemanticity runs sklearn KMeans (n_init=10) per neuron on unnormalised embeddings; ours is a "
        "batched 2-means on normalised embeddings.",
    ]
    text = "\n".join(lines) + "\n"
    (REPO / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench" / "results" / "index_semanticlens.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
