"""Class importance of neurons and components: what each one contributes to each output class.

For an image x of class c, a layer output A(x) (positions p x channels) and the gradient
G(x) = d logit_c(x) / d A(x), the importance of a unit direction d (a component's direction;
for a neuron the channel's basis vector e_i) is the first-order (gradient x activation)
contribution of A's part along d::

    imp_d(x) = sum_p (G_p . d) (A_p . d)          (a neuron: sum_p G_p,i A_p,i)

and its importance for class c is the mean of imp_d(x) over the probe images of class c (the
seeded class-balanced subset the components are fitted on, at most ``images``). Units: logit
units to first order; > 0 means evidence for the class. For a final linear layer the
gradient is the class's row of one-hot, so output unit c alone is important for class c; for
the block that feeds an average pool and a linear classifier, a channel's importance is
W[c, i] x its mean activation on class-c images.

Classes: the probe set's class folders the model's outputs map to (as for the probe-set
accuracy, ``accuracy.py``: output i = i-th folder when the counts agree, or ``--class-map``;
a class named by several outputs uses the logsumexp of their logits). Without a mapping the
importance is not computed and the reason is recorded.

Stored compactly: each record's payload ``top_classes`` (its ``TOP_CLASSES`` most important
classes, all of them for <= 16 classes) and the catalogue entry's ``extra.importance``
(method, classes, images per class, and per class the most important components of each
kind: ``per_kind`` of them, 8 unless classes x kinds x 8 would pass ``SUMMARY_LIMIT``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from neuronatlas.core.records import ClassImportance

from .accuracy import class_labels
from .components import ComponentGroup, RawTap, positions_first
from .layers import LayerSpec
from .probes import ProbeSet, batches

TOP_CLASSES = 16  # classes kept in a record's payload
PER_KIND_TOP = 8  # components per class and kind in the catalogue summary
SUMMARY_LIMIT = 4000  # entries of the catalogue summary at most
METHOD = (
    "mean over the probe images of each class of sum over positions of "
    "(d logit_c/dA . d)(A . d) (gradient x activation along the unit direction d)"
)


@dataclass
class ClassMapping:
    classes: list[str]  # classes with at least one output, sorted
    outputs: list[list[int]]  # output indices of each class
    y: np.ndarray  # class index (into ``classes``) of each probe sample, -1: not counted


def class_mapping(
    files: list[str], outputs: int, class_map: dict[int, str] | None
) -> ClassMapping | str:
    """The classes importance is computed for, or why there are none."""
    labels = class_labels(files)
    if labels is None:
        return "the probe set has no class folders"
    folders, y = labels
    if outputs <= 0:
        return "the model's output is not a (batch, classes) tensor"
    if class_map is None:
        if outputs != len(folders):
            return (
                f"the model has {outputs} outputs and the probe set {len(folders)} classes; "
                "give --class-map FILE"
            )
        return ClassMapping(list(folders), [[i] for i in range(outputs)], y)
    named: dict[str, list[int]] = {}
    for i, name in sorted(class_map.items()):
        if i < outputs and name in folders:
            named.setdefault(name, []).append(int(i))
    if not named:
        return "the class map names none of the probe set's classes"
    classes = sorted(named)
    pos = {c: j for j, c in enumerate(classes)}
    remap = np.array([pos.get(f, -1) for f in folders], np.int64)
    return ClassMapping(classes, [named[c] for c in classes], remap[y])


@dataclass
class Importance:
    classes: list[str]
    images: list[int]  # images of each class used
    values: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (classes, units)

    def top_classes(self, key: str, unit: int, n: int = TOP_CLASSES) -> list[ClassImportance]:
        v = self.values.get(key)
        if v is None:
            return []
        col = v[:, unit]
        order = np.lexsort((np.arange(len(col)), -col))[:n]
        return [ClassImportance(self.classes[int(j)], float(col[j])) for j in order]


def class_importance(
    module: nn.Module,
    specs: list[LayerSpec],
    groups: list[ComponentGroup],
    probe: ProbeSet,
    y: np.ndarray,
    mapping: ClassMapping,
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
    device: torch.device,
) -> Importance:
    """Mean gradient x activation per class of every neuron of ``specs`` and every component
    of ``groups`` over the images of ``probe`` (a subset; ``y`` their class indices, -1: not
    counted). Keys: the layer name for neurons, ``ComponentGroup.key`` for components."""
    n_cls = len(mapping.classes)
    sums = {s.name: torch.zeros((n_cls, s.units), dtype=torch.float64) for s in specs}
    for g in groups:
        sums[g.key] = torch.zeros((n_cls, g.units), dtype=torch.float64)
    by_layer: dict[str, list[ComponentGroup]] = {}
    for g in groups:
        by_layer.setdefault(g.layer, []).append(g)
    counts = np.zeros(n_cls, np.int64)
    tap = RawTap(module, specs, grad=True)
    try:
        for start, x in batches(probe, transform, batch_size):
            yb = torch.as_tensor(y[start : start + x.shape[0]])
            keep = yb >= 0
            if not bool(keep.any()):
                continue
            with torch.enable_grad():
                out = tap(x.to(device).requires_grad_(True))
                logits = tap.output
                if logits is None or logits.ndim != 2:
                    raise ValueError("the model's output is not a (batch, classes) tensor")
                rows = torch.nonzero(keep).flatten()
                target = torch.stack(
                    [
                        torch.logsumexp(logits[int(i), mapping.outputs[int(yb[i])]], dim=0)
                        for i in rows
                    ]
                ).sum()
                tensors = [out[s.name] for s in specs]
                grads = torch.autograd.grad(target, tensors, allow_unused=True)
            cls = yb[rows].to(torch.long)
            counts += np.bincount(cls.numpy(), minlength=n_cls)
            for s, a, gr in zip(specs, tensors, grads, strict=True):
                if gr is None:  # the layer does not reach the output
                    continue
                A = positions_first(a.detach(), s)[rows].double().cpu()
                G = positions_first(gr, s)[rows].double().cpu()
                sums[s.name].index_add_(0, cls, (G * A).sum(dim=1))
                for g in by_layer.get(s.name, []):
                    d = torch.as_tensor(g.directions, dtype=torch.float64)
                    sums[g.key].index_add_(0, cls, ((G @ d.T) * (A @ d.T)).sum(dim=1))
    finally:
        tap.close()
    denom = np.maximum(counts, 1)[:, None]
    values = {k: (v.numpy() / denom).astype(np.float32) for k, v in sums.items()}
    return Importance(list(mapping.classes), [int(c) for c in counts], values)


def summary(
    imp: Importance,
    streams: list[tuple[str, str, str, int]],
    per_kind: int = PER_KIND_TOP,
    limit: int = SUMMARY_LIMIT,
) -> dict[str, Any]:
    """The catalogue entry's ``extra.importance``: for every class the ``per_kind`` most
    important records of each kind. ``streams``: (key, kind, layer, units)."""
    kinds = sorted({k for _, k, _, _ in streams})
    per_kind = max(1, min(per_kind, limit // max(1, len(imp.classes) * len(kinds))))
    per_class: dict[str, list[dict[str, Any]]] = {}
    for ci, c in enumerate(imp.classes):
        out: list[dict[str, Any]] = []
        for kind in kinds:
            rows = [
                (float(imp.values[key][ci, u]), layer, u)
                for key, k, layer, units in streams
                if k == kind and key in imp.values
                for u in range(units)
            ]
            rows.sort(key=lambda r: (-r[0], r[1], r[2]))
            out += [
                {"kind": kind, "layer": layer, "unit": u, "importance": round(v, 6)}
                for v, layer, u in rows[:per_kind]
            ]
        per_class[c] = out
    return {
        "method": METHOD,
        "classes": list(imp.classes),
        "images": dict(zip(imp.classes, imp.images, strict=True)),
        "layers": sorted({layer for key, _, layer, _ in streams if key in imp.values}),
        "per_kind": per_kind,
        "per_class": per_class,
    }


def save_importance(path: Any, imp: Importance) -> None:
    """Keep a run's importance (``runs/<model>/importance.npz``) for a resumed write phase."""
    from neuronatlas.core.atomic import atomic_save_npz

    arrays = {f"v.{k}": v for k, v in imp.values.items()}
    arrays["classes"] = np.array(imp.classes)
    arrays["images"] = np.array(imp.images, np.int64)
    atomic_save_npz(path, arrays, durable=False)


def load_importance(path: Any) -> Importance | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return Importance(
                [str(c) for c in z["classes"]],
                [int(n) for n in z["images"]],
                {k[2:]: np.array(z[k]) for k in z.files if k.startswith("v.")},
            )
    except (OSError, KeyError, ValueError):
        return None
