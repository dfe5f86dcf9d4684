"""``neuronatlas show``: a PNG grid of a neuron's top-k probe images, activations and labels."""

from __future__ import annotations

import io
import math
import textwrap
from pathlib import Path

from PIL import Image

from neuronatlas.core.config import Home
from neuronatlas.core.errors import FailedPrecondition
from neuronatlas.core.records import NeuronRecord
from neuronatlas.core.store import KnowledgeStore

from .probes import load_probe_set


def probe_root(store: KnowledgeStore, home: Home, model_id: str) -> Path:
    """The folder of the probe set a model was indexed with (from its catalogue entry)."""
    entry = store.get_model(model_id)
    if not entry.probe_set:
        raise FailedPrecondition(f"model {model_id!r} has no probe set; index it first")
    probe = load_probe_set(home, entry.probe_set.split("@", 1)[0])
    return probe.root


def _caption(record: NeuronRecord) -> str:
    parts = [
        f"{record.key}  (depth {record.depth:.2f}, clarity {record.clarity:.2f}, "
        f"polysemanticity {record.polysemanticity:.2f}, redundancy {record.redundancy:.2f})"
    ]
    for vocab, labels in record.labels.items():
        parts.append(f"{vocab}: " + ", ".join(f"{lab.label} ({lab.score:.3f})" for lab in labels))
    if record.label_set:
        parts.append("label set: " + ", ".join(record.label_set))
    return "\n".join(textwrap.fill(p, 110) for p in parts)


def _image(root: Path | None, sample_id: str, thumbnail: bytes | None) -> Image.Image | None:
    """A top sample's image: from its thumbnail (PNG bytes) when given, else from the probe
    folder; None when neither has it."""
    try:
        if thumbnail is not None:
            if not thumbnail:
                return None
            with Image.open(io.BytesIO(thumbnail), formats=["PNG"]) as im:
                return im.convert("RGB")
        if root is None:
            return None
        with Image.open(root / sample_id) as im:
            return im.convert("RGB")
    except OSError:
        return None


def render_grid(
    record: NeuronRecord,
    root: Path | None,
    out: Path,
    columns: int = 5,
    thumbnails: list[bytes] | None = None,
) -> Path:
    """Write the grid PNG to ``out`` and return it. The images come from the probe folder
    ``root``, or from ``thumbnails`` (PNG bytes in ``record.top_samples`` order, e.g. a
    server's GetNeuron with include_thumbnails; empty bytes: missing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = record.top_samples
    if not samples:
        raise FailedPrecondition(f"neuron {record.key} has no top samples")
    cols = max(1, min(columns, len(samples)))
    rows = math.ceil(len(samples) / cols)
    caption = _caption(record)
    header = 0.18 * (caption.count("\n") + 1)  # inches of text above the images
    height = 2.5 * rows + header
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(2.2 * cols, 8.0), height), squeeze=False, layout="constrained"
    )
    for ax in axes.flat:
        ax.axis("off")
    for i, s in enumerate(samples):
        ax = axes.flat[i]
        thumb = None if thumbnails is None else (thumbnails[i] if i < len(thumbnails) else b"")
        img = _image(root, s.sample_id, thumb)
        if img is not None:
            ax.imshow(img)
        else:
            ax.text(0.5, 0.5, "missing", ha="center", va="center")
        ax.set_title(
            f"#{i + 1} {s.activation:.3g}\n{Path(s.sample_id).parent.name or s.sample_id}",
            fontsize=8,
        )
    fig.suptitle(caption, fontsize=8, ha="left", x=0.01)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def show_neuron(
    store: KnowledgeStore, home: Home, model_id: str, layer: str, unit: int, out: Path
) -> Path:
    record = store.get_neuron(model_id, layer, unit, with_vector=False)
    return render_grid(record, probe_root(store, home, model_id), out)
