"""PNG figures for comparisons and audits (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from neuronatlas.core.audit import Audit
from neuronatlas.core.compare import Alignment, Comparison

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _pyplot() -> Any:  # matplotlib.pyplot, imported (and switched to Agg) on first use
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ticks(ax: Axes, names: list[str], axis: str, max_ticks: int = 30) -> None:
    step = max(1, int(np.ceil(len(names) / max_ticks)))
    pos = np.arange(0, len(names), step)
    if axis == "x":
        ax.set_xticks(pos, [names[i] for i in pos], rotation=90, fontsize=6)
    else:
        ax.set_yticks(pos, [names[i] for i in pos], fontsize=6)


def heatmap_pair(
    matrix: np.ndarray,
    baseline: np.ndarray,
    rows: list[str],
    cols: list[str],
    title: str,
    row_name: str,
    col_name: str,
    path: Path,
) -> Path:
    """Layer x layer matrix beside its noise-floor version (each with its own colour scale, so
    the structure of both shows; the numbers are in the text summary)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), constrained_layout=True)
    for ax, m, sub in ((axes[0], matrix, "observed"), (axes[1], baseline, "noise floor")):
        im = ax.imshow(m, aspect="auto", origin="lower", cmap="viridis")
        ax.set_title(f"{title}: {sub}", fontsize=9)
        ax.set_xlabel(col_name)
        ax.set_ylabel(row_name)
        _ticks(ax, cols, "x")
        _ticks(ax, rows, "y")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def depth_alignment_plot(cmp: Comparison, path: Path) -> Path:
    """Relative depth in A vs the relative depth of its best-matching layer in B, per view."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5), constrained_layout=True)
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--", label="same relative depth")
    views: list[tuple[str, Alignment, str]] = [("semantic", cmp.semantic.alignment, "tab:blue")]
    if cmp.activation is not None:
        views.append(("CKA", cmp.activation.alignment, "tab:orange"))
    for name, al, colour in views:
        ax.plot(
            al.depth,
            al.matched_depth,
            "o-",
            color=colour,
            ms=4,
            lw=1,
            label=(
                f"{name}: rho {al.rho.value:+.2f} "
                f"(floor {al.rho.baseline:+.2f}, p {al.p_value:.3f})"
            ),
        )
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel(f"relative depth in {cmp.a.model_id}")
    ax.set_ylabel(f"best-matching relative depth in {cmp.b.model_id}")
    ax.set_title("Relative-depth alignment", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def comparison_figures(cmp: Comparison, out: Path) -> list[Path]:
    """Write the comparison's PNGs into ``out``: semantic heatmap, CKA heatmap, depth plot."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    a, b = cmp.a.model_id, cmp.b.model_id
    paths = [
        heatmap_pair(
            cmp.semantic.layer_similarity,
            cmp.semantic.layer_similarity_baseline,
            cmp.a.layers,
            cmp.b.layers,
            "mean best-match cosine",
            a,
            b,
            out / "semantic_heatmap.png",
        )
    ]
    if cmp.activation is not None:
        act = cmp.activation
        paths.append(
            heatmap_pair(
                act.cka,
                act.cka_baseline,
                act.layers_a,
                act.layers_b,
                "linear CKA",
                a,
                b,
                out / "cka_heatmap.png",
            )
        )
    paths.append(depth_alignment_plot(cmp, out / "depth_alignment.png"))
    return paths


def audit_figure(audit: Audit, path: Path) -> Path:
    """Per-concept aligned share (with noise floor) and valid/spurious share by layer depth."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(12, max(4, 0.35 * len(audit.concepts) + 2)), constrained_layout=True
    )
    names = [c.concept for c in audit.concepts]
    y = np.arange(len(names))
    colours = ["tab:green" if c.kind == "valid" else "tab:red" for c in audit.concepts]
    ax1.barh(y, [100 * c.share for c in audit.concepts], color=colours)
    ax1.scatter(
        [100 * c.share_baseline for c in audit.concepts],
        y,
        marker="|",
        s=200,
        color="k",
        label="noise floor",
    )
    ax1.set_yticks(y, names, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("% of the model's neurons aligned")
    ax1.set_title(f"{audit.model_id}: valid (green) vs spurious (red) concepts", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.plot(
        audit.depths, 100 * audit.layer_valid_share, "o-", color="tab:green", ms=3, label="valid"
    )
    ax2.plot(
        audit.depths,
        100 * audit.layer_spurious_share,
        "o-",
        color="tab:red",
        ms=3,
        label="spurious",
    )
    ax2.set_xlabel("relative depth")
    ax2.set_ylabel("% of the layer aligned")
    ax2.set_title(
        f"by layer (model: {100 * audit.valid_share:.1f}% valid, "
        f"{100 * audit.spurious_share:.1f}% spurious)",
        fontsize=9,
    )
    ax2.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
