"""ExplainClass: the neurons and concept components that drive one output class of a model.

At index time (``indexer/importance.py``) every neuron and component gets a class importance:
the mean over the probe images of the class of gradient x activation of the class logit along
its direction. The catalogue entry keeps, per class, the most important records of each kind
(``extra.importance.per_class``); an explanation reads that list and the records themselves
(labels, top images, quality scores), most important first within each kind. A CRAFT-style
summary (one row per component: its top images, label and importance) is drawn by
``neuronatlas explain --out PNG``.

Importance is in logit units to first order; compare it within a kind (a component's
direction spans several channels, so its importance is not on the scale of one channel's).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuronatlas.core.compare import indexed_entry
from neuronatlas.core.errors import FailedPrecondition, NotFound
from neuronatlas.core.records import KINDS, NeuronRecord
from neuronatlas.core.store.base import KnowledgeStore
from neuronatlas.core.validate import check_explain, shown


@dataclass
class ExplainedComponent:
    """One neuron or component and its importance for the explained class."""

    record: NeuronRecord  # labels, top samples, quality scores, kind, component details
    importance: float
    rank: int  # 1 = the most important of its kind


@dataclass
class Explanation:
    model_id: str
    generation: int
    class_name: str
    method: str  # how importance was computed
    images: int  # probe images of the class it was computed on
    classes: list[str]  # every class the model has importance for
    components: list[ExplainedComponent] = field(default_factory=list)  # by kind, best first

    def by_kind(self) -> dict[str, list[ExplainedComponent]]:
        out: dict[str, list[ExplainedComponent]] = {}
        for c in self.components:
            out.setdefault(c.record.kind, []).append(c)
        return out


def importance_record(extra: dict[str, Any], model_id: str) -> dict[str, Any]:
    """A catalogue entry's ``extra.importance``, or FailedPrecondition saying why it has none."""
    imp = extra.get("importance")
    if not isinstance(imp, dict):
        raise FailedPrecondition(
            f"model {model_id!r} was indexed without class importance: index it again with "
            "--importance (or --components)"
        )
    if "per_class" not in imp:
        raise FailedPrecondition(
            f"class importance of model {model_id!r} was not computed: "
            f"{imp.get('not_computed') or 'unknown reason'}"
        )
    return imp


def explain_class(
    store: KnowledgeStore,
    model_id: str,
    class_name: str,
    kinds: Sequence[str] | None = None,
    top_n: int = 5,
) -> Explanation:
    """The ``top_n`` most important records of each kind for ``class_name`` (``kinds``: only
    those; None: every kind the model has importance for). NotFound for an unknown model or
    class, FailedPrecondition for a model indexed without class importance."""
    kinds = check_explain(model_id, class_name, kinds, top_n)
    entry = indexed_entry(store, model_id)
    imp = importance_record(entry.extra, model_id)
    per_class: dict[str, list[dict[str, Any]]] = imp["per_class"]
    if class_name not in per_class:
        known = ", ".join(sorted(per_class)[:20])
        raise NotFound(
            f"model {model_id!r} has no class {shown(class_name)} (classes: {known}"
            f"{', ...' if len(per_class) > 20 else ''})",
            resource_type="class",
            resource_name=class_name,
        )
    rows = per_class[class_name]
    present = [k for k in KINDS if any(r["kind"] == k for r in rows)]
    wanted = present if kinds is None else [k for k in KINDS if k in kinds]
    out: list[ExplainedComponent] = []
    for kind in wanted:
        mine = sorted(
            (r for r in rows if r["kind"] == kind),
            key=lambda r: (-float(r["importance"]), str(r["layer"]), int(r["unit"])),
        )[:top_n]
        for rank, r in enumerate(mine, 1):
            rec = store.get_neuron(
                model_id, str(r["layer"]), int(r["unit"]), with_vector=False, kind=kind
            )
            out.append(ExplainedComponent(rec, float(r["importance"]), rank))
    images = imp.get("images", {})
    return Explanation(
        model_id=model_id,
        generation=entry.generation,
        class_name=class_name,
        method=str(imp.get("method", "")),
        images=int(images.get(class_name, 0)) if isinstance(images, dict) else 0,
        classes=list(imp.get("classes", sorted(per_class))),
        components=out,
    )


def explanation_summary(e: Explanation) -> str:
    """A plain-text report of an explanation."""
    lines = [
        f"What drives class {e.class_name!r} in {e.model_id} (generation {e.generation}; "
        f"importance over {e.images} probe images of the class)",
        textwrap.fill(f"importance: {e.method}", 100),
    ]
    for kind, comps in e.by_kind().items():
        lines += ["", f"{kind}:"]
        for c in comps:
            r = c.record
            top = r.top_label
            label = f"{top.label} ({top.score:+.3f})" if top else "-"
            extra = ""
            if r.component.get("concept"):
                extra = f"  concept {r.component['concept']}"
            images = ", ".join(s.sample_id for s in r.top_samples[:5])
            lines.append(
                f"  {c.rank:2d}. {r.key:40s} importance {c.importance:+9.4f}  "
                f"clarity {r.clarity:.3f}  label {label}{extra}"
            )
            lines.append(f"      top images: {images}")
    return "\n".join(lines) + "\n"


def render_explanation(
    e: Explanation, root: Path | None, out: Path, images_per_row: int = 8
) -> Path:
    """The CRAFT-style concept summary PNG: one row per component (grouped by kind, most
    important first) with its top probe images (from ``root``, the probe set's folder; a grey
    tile where an image is unavailable), its label and its importance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    comps = e.components
    if not comps:
        raise FailedPrecondition(f"nothing to draw for class {e.class_name!r}")
    cols = max(1, min(images_per_row, max(len(c.record.top_samples) for c in comps)))
    fig, axes = plt.subplots(
        len(comps),
        cols + 1,
        figsize=(1.3 * cols + 3.6, 1.35 * len(comps) + 0.6),
        squeeze=False,
        gridspec_kw={"width_ratios": [2.6] + [1.0] * cols},
    )
    for i, c in enumerate(comps):
        r = c.record
        top = r.top_label
        info = [
            f"{r.kind} {r.layer}:{r.unit}",
            f"importance {c.importance:+.3g}",
            f"label {top.label}" if top else "label -",
            f"clarity {r.clarity:.2f}",
        ]
        if r.component.get("concept"):
            info.append(f"CAV {r.component['concept']} (acc {r.component.get('accuracy', 0):.2f})")
        ax = axes[i][0]
        ax.axis("off")
        ax.text(0.0, 0.5, "\n".join(info), fontsize=7, va="center", ha="left")
        for j in range(cols):
            ax = axes[i][j + 1]
            ax.axis("off")
            if j >= len(r.top_samples):
                continue
            s = r.top_samples[j]
            try:
                if root is None:
                    raise OSError("no probe folder")
                with Image.open(root / s.sample_id) as im:
                    ax.imshow(im.convert("RGB"))
            except OSError:
                ax.imshow([[[0.8, 0.8, 0.8]]])
            ax.set_title(Path(s.sample_id).parent.name or s.sample_id, fontsize=6)
    fig.suptitle(
        f"{e.model_id}: what drives class {e.class_name!r} (gradient x activation)", fontsize=9
    )
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
