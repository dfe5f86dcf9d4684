"""Probe-set accuracy: a sanity check that the model sees the probe images the way it was
trained to.

When the probe set has class folders (``<class>/<image>``) and the model's output (a
``(batch, outputs)`` tensor: the logits) can be mapped to them, indexing records the model's
top-1 accuracy on the probe set, from the same forward pass that collects the activations.
The mapping is output ``i`` -> the ``i``-th class folder in sorted order when the model has as
many outputs as there are classes, or a class map the user gives (``--class-map FILE``: a JSON
list of class names in output order, or an object ``{"index": "class name"}``; several outputs
may name the same class, and only images of the classes it names are counted). With a class map
the prediction is the best of the outputs it names (the usual protocol for evaluating on a
subset of a model's classes, e.g. ImageNet-R's 200), so a map of two classes asks "which of the
two?"; the forward pass records that restricted argmax (``runstate.ForwardState``).

Chance level is the share of the most frequent class among the counted images (what always
answering that class scores; 1/K for a balanced probe set of K classes). An accuracy below
``CHANCE_FACTOR`` x chance is flagged: the transform, the weights or the class order is
probably wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from neuronatlas.core.errors import InvalidArgument, NotFound

CHANCE_FACTOR = 1.5


def parse_class_map(obj: Any, what: str = "class map") -> dict[int, str]:
    """``["cat", "dog"]`` or ``{"0": "cat", "1": "dog"}`` -> ``{0: "cat", 1: "dog"}``."""
    if isinstance(obj, list):
        items: list[tuple[Any, Any]] = list(enumerate(obj))
    elif isinstance(obj, dict):
        items = list(obj.items())
    else:
        raise InvalidArgument(
            f"{what} must be a JSON list of class names or an object {{index: class name}}",
            field="class_map",
        )
    out: dict[int, str] = {}
    for key, name in items:
        try:
            index = int(key)
        except (TypeError, ValueError):
            index = -1
        if index < 0 or str(index) != str(key).strip():
            raise InvalidArgument(
                f"{what}: output index {key!r} is not a non-negative integer", field="class_map"
            )
        if not isinstance(name, str) or not name.strip():
            raise InvalidArgument(
                f"{what}: output {index} needs a class name, not {name!r}", field="class_map"
            )
        out[index] = name.strip()
    if not out:
        raise InvalidArgument(f"{what} is empty", field="class_map")
    return out


def load_class_map(path: str | Path) -> dict[int, str]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise NotFound(f"class map {p} does not exist")
    try:
        obj = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"class map {p} is not valid JSON: {e}", field="class_map") from None
    return parse_class_map(obj, f"class map {p.name}")


def class_labels(files: list[str]) -> tuple[list[str], np.ndarray] | None:
    """(sorted class folders, class index per file), or None without class folders (a file
    at the top level, or fewer than two folders)."""
    if not files or any("/" not in f for f in files):
        return None
    folders = [f.split("/", 1)[0] for f in files]
    classes = sorted(set(folders))
    if len(classes) < 2:
        return None
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index[f] for f in folders], np.int64)


def check_class_map(class_map: dict[int, str], files: list[str]) -> None:
    """Before the forward pass: a class map needs class folders, and names some of them."""
    labels = class_labels(files)
    if labels is None:
        raise InvalidArgument(
            "--class-map needs a probe set of class folders (<class>/<image>)", field="class_map"
        )
    if not set(class_map.values()) & set(labels[0]):
        raise InvalidArgument(
            f"the class map names none of the probe set's classes ({', '.join(labels[0][:10])}"
            f"{', ...' if len(labels[0]) > 10 else ''})",
            field="class_map",
        )


def probe_accuracy(
    predictions: np.ndarray,
    outputs: int,
    files: list[str],
    class_map: dict[int, str] | None = None,
) -> tuple[dict[str, Any], str]:
    """``(record, reason)``: the accuracy record for the catalogue entry (keys ``accuracy``,
    ``chance``, ``images``, ``correct``, ``classes``, ``mapping``, ``warning``), or an empty
    record and why it could not be measured."""
    labels = class_labels(files)
    if labels is None:
        return {}, "the probe set has no class folders"
    classes, y = labels
    if outputs <= 0:
        return {}, "the model's output is not a (batch, classes) tensor"
    out_class = np.full(outputs, -1, np.int64)  # model output -> probe class index (-1: none)
    if class_map is None:
        if outputs != len(classes):
            return {}, (
                f"the model has {outputs} outputs and the probe set {len(classes)} classes; "
                "give --class-map FILE to map outputs to class folders"
            )
        out_class[:] = np.arange(outputs)
        counted = np.ones(len(y), bool)
        mapping = "sorted class folders"
    else:
        too_big = sorted(i for i in class_map if i >= outputs)
        if too_big:
            return {}, (
                f"the class map names output {too_big[0]} but the model has {outputs} outputs"
            )
        index = {c: i for i, c in enumerate(classes)}
        for i, name in class_map.items():
            out_class[i] = index.get(name, -1)
        named = sorted({index[n] for n in class_map.values() if n in index})
        counted = np.isin(y, named)
        mapping = f"class map ({len(class_map)} outputs)"
    counted &= predictions[: len(y)] >= 0
    n = int(counted.sum())
    if n == 0:
        return {}, "no probe image of a mapped class has a recorded prediction"
    pred_class = out_class[predictions[: len(y)][counted]]
    correct = int((pred_class == y[counted]).sum())
    counts = np.bincount(y[counted], minlength=len(classes))
    chance = float(counts.max() / n)
    accuracy = correct / n
    warning = ""
    if accuracy < CHANCE_FACTOR * chance:
        warning = (
            f"probe accuracy {accuracy:.1%} is within {CHANCE_FACTOR:g}x of chance "
            f"({chance:.1%}): the model probably does not see the images as it was trained "
            "to; check the input transform (--input-size, --resize, --crop, --mean, --std), "
            "the weights, and the class order (--class-map)"
        )
    record = {
        "accuracy": accuracy,
        "chance": chance,
        "images": n,
        "correct": correct,
        "classes": int((counts > 0).sum()),
        "mapping": mapping,
        "warning": warning,
    }
    return record, ""


def describe(record: dict[str, Any]) -> str:
    """One line for the CLI, e.g. ``81.2% top-1 on 500 images, 10 classes (chance 10.0%)``."""
    if not record:
        return "not measured"
    return (
        f"{record['accuracy']:.1%} top-1 on {record['images']} images, {record['classes']} "
        f"classes (chance {record['chance']:.1%}; {record['mapping']})"
    )
