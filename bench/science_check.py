"""Science check: do similar concepts emerge at similar relative depth across architectures?

Indexes two CIFAR-10 ResNets of ../shared/data on the same probe subset, compares them
(semantic view and linear CKA), and prints a markdown table of the relative-depth alignment
(Spearman rho) beside its noise floors. Figures go to ``--figures``.

    python bench/science_check.py --home /tmp/na-science --probe-limit 2000 --figures docs/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--home", type=Path, default=Path("/tmp/na-science"))
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument(
        "--pairs", default="20:56", help="comma-separated depth pairs, e.g. 20:56,32:44"
    )
    ap.add_argument("--probe-limit", type=int, default=2000)
    ap.add_argument("--embedder", default="open_clip:na-tiny:random:0")
    ap.add_argument(
        "--vocab-lines", type=int, default=300, help="Broden labels used for naming neurons"
    )
    ap.add_argument("--figures", type=Path, default=REPO / "docs")
    args = ap.parse_args()

    from neuronatlas.core.compare import compare_models, comparison_summary
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.errors import NotFound
    from neuronatlas.core.plots import comparison_figures
    from neuronatlas.core.store.edge import EdgeStore
    from neuronatlas.indexer.api import build_index

    args.home.mkdir(parents=True, exist_ok=True)
    vocab = args.home / "broden.txt"
    lines = (
        (args.data / "concepts" / "broden_labels_clean.txt")
        .read_text()
        .splitlines()[: args.vocab_lines]
    )
    vocab.write_text("\n".join(lines) + "\n")
    embedder = load_embedder(args.embedder, device="cpu")
    pairs = [tuple(int(d) for d in p.split(":")) for p in args.pairs.split(",")]
    rows = []
    with EdgeStore(args.home / "store") as store:
        for depths in pairs:
            for depth in depths:
                model_id = f"resnet{depth}"
                try:
                    store.get_model(model_id)
                    if store.get_model(model_id).status.value == "indexed":
                        continue
                except NotFound:
                    pass
                weights = sorted((args.data / "models").glob(f"cifar10-resnet{depth}-*.th"))[0]
                t = time.perf_counter()
                build_index(
                    store,
                    embedder,
                    model_id=model_id,
                    source={"kind": "cifar_resnet", "depth": depth, "weights": str(weights)},
                    probe_dir=args.data / "cifar10-test",
                    probe_name=f"cifar10-test-{args.probe_limit}",
                    home=args.home,
                    vocabularies={"broden": vocab},
                    k=20,
                    probe_limit=args.probe_limit,
                    progress=False,
                )
                print(f"indexed {model_id} in {time.perf_counter() - t:.0f} s", flush=True)
            a, b = (f"resnet{d}" for d in depths)
            cmp = compare_models(store, a, b, home=args.home, use_cache=False)
            out = args.figures / f"science_{a}_{b}"
            comparison_figures(cmp, out)
            (out / "summary.txt").write_text(comparison_summary(cmp))
            for view, al in (
                ("semantic", cmp.semantic.alignment),
                ("CKA", cmp.activation.alignment),
            ):
                rows.append(
                    f"| {a} vs {b} | {view} | {len(al.depth)} | {al.rho.value:+.3f} | "
                    f"{al.rho.baseline:+.3f} | {al.p_value:.4f} |"
                )
            print(comparison_summary(cmp), flush=True)
    print("| pair | view | layers of A | Spearman rho (A->B) | noise floor rho | permutation p |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
