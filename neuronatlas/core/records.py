"""Record schema: what the knowledge store holds about neurons and models.

Plain dataclasses with ``to_payload`` / ``from_payload`` so both store backends (and the
service's protobuf conversion) work from one definition. Vectors stay numpy float32.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from neuronatlas.core.errors import InvalidArgument

# Namespace for deterministic point ids: uuid5(NAMESPACE, "model/layer/unit#generation") for a
# neuron, uuid5(NAMESPACE, "model/layer/kind:unit@extraction#generation") for a component.
_ID_NAMESPACE = uuid.UUID("8d5b8a52-6a1e-4c1e-9a55-2f1f7f0f6a11")

# What a stored record describes (payload ``kind``, keyword-indexed): a single unit (channel) of
# a layer, or a concept component of a layer's activations (indexer/components.py): an NMF
# factor, a spherical k-means centroid, or a concept activation vector (CAV) probe.
NEURON_KIND = "neuron"
COMPONENT_KINDS = ("nmf", "cluster", "cav")
KINDS = (NEURON_KIND, *COMPONENT_KINDS)
#: the vector of a record read without one (shared and read-only: a search reads thousands)
NO_VECTOR = np.zeros(0, np.float32)
NO_VECTOR.flags.writeable = False


def neuron_point_id(
    model_id: str,
    layer: str,
    unit: int,
    generation: int = 0,
    kind: str = NEURON_KIND,
    extraction: str = "",
) -> str:
    """The store id of one neuron or component. The same record always gets the same id.

    ``generation`` separates the two slots used for atomic re-indexing (see README). A
    component's id also names its ``kind`` and ``extraction`` (the fingerprint of the
    extraction settings), so components extracted differently never share an id; a neuron's id
    is unchanged from before components existed.
    """
    if kind == NEURON_KIND:
        name = f"{model_id}/{layer}/{unit}#{generation}"
    else:
        name = f"{model_id}/{layer}/{kind}:{unit}@{extraction}#{generation}"
    return str(uuid.uuid5(_ID_NAMESPACE, name))


def model_point_id(model_id: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, f"model:{model_id}"))


def neuron_key(model_id: str, layer: str, unit: int, kind: str = NEURON_KIND) -> str:
    """Human-readable reference ``model/layer/unit`` (as used by the CLI); a component's is
    ``model/layer/kind:unit`` (e.g. ``resnet20/layer3.2/nmf:3``)."""
    if kind == NEURON_KIND:
        return f"{model_id}/{layer}/{unit}"
    return f"{model_id}/{layer}/{kind}:{unit}"


def parse_component_key(key: str) -> tuple[str, str, int, str]:
    """Inverse of :func:`neuron_key`: ``(model_id, layer, unit, kind)``. Model ids may not
    contain '/', layer names may; the last part is ``unit`` or ``kind:unit``."""
    from neuronatlas.core.validate import shown  # validate imports this module

    parts = key.split("/")
    if len(parts) < 3:
        raise InvalidArgument(
            f"neuron reference {shown(key)} is not MODEL/LAYER/UNIT", field="neuron"
        )
    model_id, layer, unit_s = parts[0], "/".join(parts[1:-1]), parts[-1]
    kind = NEURON_KIND
    if ":" in unit_s:
        kind, unit_s = unit_s.split(":", 1)
        if kind not in KINDS:
            raise InvalidArgument(
                f"unknown kind {shown(kind)} in {shown(key)} (kinds: {', '.join(KINDS)})",
                field="neuron.kind",
            )
    try:
        unit = int(unit_s)
    except ValueError:
        raise InvalidArgument(
            f"unit {shown(unit_s)} in {shown(key)} is not an integer", field="neuron"
        ) from None
    if unit < 0 or not model_id or not layer:
        raise InvalidArgument(
            f"neuron reference {shown(key)} is not MODEL/LAYER/UNIT", field="neuron"
        )
    return model_id, layer, unit, kind


def parse_neuron_key(key: str) -> tuple[str, str, int]:
    """``(model_id, layer, unit)`` of a neuron reference ``model/layer/unit``; a component
    reference (``model/layer/kind:unit``) is refused: use :func:`parse_component_key`."""
    from neuronatlas.core.validate import shown  # validate imports this module

    model_id, layer, unit, kind = parse_component_key(key)
    if kind != NEURON_KIND:
        raise InvalidArgument(
            f"{shown(key)} names a {kind} component, not a neuron", field="neuron.kind"
        )
    return model_id, layer, unit


def validate_model_id(model_id: str) -> str:
    """Model ids are short slugs: letters, digits, '-', '_', '.'; no '/'."""
    import re

    from neuronatlas.core.validate import shown  # validate imports this module

    if not isinstance(model_id, str) or not re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", model_id
    ):
        raise InvalidArgument(
            f"model id {shown(model_id)} must be 1-128 characters of letters, digits, '.', '_' "
            "or '-'",
            field="model_id",
        )
    return model_id


@dataclass(frozen=True)
class EmbedderInfo:
    """Identity of the foundation model that produced a store's vectors."""

    name: str  # e.g. "open_clip:ViT-B-32"
    weights: str  # pretrained tag, checkpoint sha256, or "random:<seed>"
    dim: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbedderInfo:
        return cls(name=str(d["name"]), weights=str(d["weights"]), dim=int(d["dim"]))


@dataclass
class TopSample:
    """One of a neuron's most activating probe samples."""

    sample_id: str  # stable reference into the probe set (relative path)
    index: int  # row in the probe set's embedding matrix
    activation: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_id": self.sample_id,
            "index": int(self.index),
            "activation": float(self.activation),
        }


@dataclass
class Label:
    label: str
    score: float


@dataclass
class ClassImportance:
    """How much a neuron or component drives one output class: the mean over the probe images
    of that class of gradient x activation of the class logit, projected on the component's
    direction (indexer/importance.py); first-order logit units, > 0 = evidence for the class."""

    class_name: str
    importance: float


@dataclass
class NeuronRecord:
    model_id: str
    layer: str
    layer_index: int
    depth: float  # relative depth in [0, 1]
    unit: int
    vector: np.ndarray  # L2-normalised float32, embedder dimension
    top_samples: list[TopSample] = field(default_factory=list)
    labels: dict[str, list[Label]] = field(default_factory=dict)  # vocabulary -> top labels
    label_set: list[str] = field(default_factory=list)  # adaptive multi-label set, all vocabs
    clarity: float = 0.0
    polysemanticity: float = 0.0  # minority share x centre distance (core/scores.py)
    redundancy: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)  # mean, std, max, min, frac_active
    generation: int = 0
    polysemanticity_sl: float = 0.0  # SemanticLens' 1 - cos of the 2-means centres
    kind: str = NEURON_KIND  # neuron, or a component kind (nmf, cluster, cav)
    extraction: str = ""  # components: fingerprint of the extraction settings (part of the id)
    # components: how it was extracted (method, rank, explained share, CAV concept and held-out
    # accuracy...); empty for neurons
    component: dict[str, Any] = field(default_factory=dict)
    # the classes it drives most, most important first (indexer/importance.py); empty when
    # importance was not computed
    top_classes: list[ClassImportance] = field(default_factory=list)

    @property
    def key(self) -> str:
        return neuron_key(self.model_id, self.layer, self.unit, self.kind)

    @property
    def point_id(self) -> str:
        return neuron_point_id(
            self.model_id, self.layer, self.unit, self.generation, self.kind, self.extraction
        )

    @property
    def top_label(self) -> Label | None:
        best: Label | None = None
        for labels in self.labels.values():
            for lab in labels[:1]:
                if best is None or lab.score > best.score:
                    best = lab
        return best

    def to_payload(self) -> dict[str, Any]:
        top = self.top_label
        payload = {
            "kind": self.kind,
            "model_id": self.model_id,
            "slot": slot_key(self.model_id, self.generation),
            "generation": int(self.generation),
            "layer": self.layer,
            "layer_index": int(self.layer_index),
            "depth": float(self.depth),
            "unit": int(self.unit),
            "top_samples": [s.to_dict() for s in self.top_samples],
            "labels": {
                v: [{"label": l.label, "score": float(l.score)} for l in ls]
                for v, ls in self.labels.items()
            },
            "label_set": list(self.label_set),
            # every stored label, for exact-match filtering and label lookups
            "label_all": sorted(
                {l.label for ls in self.labels.values() for l in ls} | set(self.label_set)
            ),
            "top_label": top.label if top else "",
            "top_label_score": float(top.score) if top else 0.0,
            "clarity": float(self.clarity),
            "polysemanticity": float(self.polysemanticity),
            "polysemanticity_sl": float(self.polysemanticity_sl),
            "redundancy": float(self.redundancy),
            "stats": {k: float(v) for k, v in self.stats.items()},
        }
        # Only what a record has: a neuron indexed without importance keeps the payload (and
        # so the content digest) it had before components existed.
        if self.kind != NEURON_KIND:
            payload["extraction"] = self.extraction
            payload["component"] = dict(self.component)
        if self.top_classes:
            payload["top_classes"] = [
                {"class": c.class_name, "importance": float(c.importance)} for c in self.top_classes
            ]
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any], vector: Any = None) -> NeuronRecord:
        # Every search hit passes through here: optional keys that are absent cost a lookup
        # only, and arguments are positional (in field order), which halves the time a hit
        # takes against keyword arguments and defaults (bench/results/search_layers.md).
        get = payload.get
        samples, labels, stats = get("top_samples"), get("labels"), get("stats")
        component, classes = get("component"), get("top_classes")
        return cls(
            payload["model_id"],
            payload["layer"],
            int(payload["layer_index"]),
            float(payload["depth"]),
            int(payload["unit"]),
            NO_VECTOR if vector is None else np.asarray(vector, dtype=np.float32),
            [TopSample(s["sample_id"], int(s["index"]), float(s["activation"])) for s in samples]
            if samples
            else [],
            {v: [Label(l["label"], float(l["score"])) for l in ls] for v, ls in labels.items()}
            if labels
            else {},
            list(get("label_set") or ()),
            float(get("clarity", 0.0)),
            float(get("polysemanticity", 0.0)),
            float(get("redundancy", 0.0)),
            {k: float(v) for k, v in stats.items()} if stats else {},
            int(get("generation", 0)),
            float(get("polysemanticity_sl", 0.0)),
            str(get("kind", NEURON_KIND)),
            str(get("extraction", "")),
            dict(component) if component else {},
            [ClassImportance(str(c["class"]), float(c["importance"])) for c in classes]
            if classes
            else [],
        )


def slot_key(model_id: str, generation: int) -> str:
    return f"{model_id}#{generation}"


class ModelStatus(StrEnum):
    REGISTERED = "registered"
    INDEXING = "indexing"
    INDEXED = "indexed"
    FAILED = "failed"


@dataclass
class LayerInfo:
    name: str
    index: int
    depth: float
    neurons: int
    kind: str = ""  # conv / linear / block

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelEntry:
    """A model-zoo catalogue entry."""

    model_id: str
    display_name: str = ""
    architecture: str = ""
    source: dict[str, Any] = field(
        default_factory=dict
    )  # how to build it: {"kind": "cifar_resnet", ...}
    weights_sha256: str = ""
    training_data: str = ""  # training data / task, free text
    layers: list[LayerInfo] = field(default_factory=list)
    embedder: str = ""  # EmbedderInfo.name + weights identity
    probe_set: str = ""  # probe-set id
    status: ModelStatus = ModelStatus.REGISTERED
    status_reason: str = ""  # why it failed
    generation: int = 0  # the live slot (see README, re-indexing)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    indexed_at: float = 0.0
    index_wall_s: float = 0.0
    tags: list[str] = field(default_factory=list)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # free-form (index options, timings...)
    # The effective input transform (indexer/transforms.py ``TransformSpec.to_dict``): resize,
    # crop, mean, std, interpolation, input_size [H, W], description. Empty: not recorded.
    transform: dict[str, Any] = field(default_factory=dict)
    # The model's top-1 accuracy on its probe set, measured while indexing
    # (indexer/accuracy.py): accuracy, chance, images, correct, classes, mapping, warning (set
    # when the accuracy is near chance). Empty: not measured (extra["index"] says why).
    probe_accuracy: dict[str, Any] = field(default_factory=dict)

    @property
    def neuron_count(self) -> int:
        return sum(l.neurons for l in self.layers)

    def to_payload(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "model"
        d["status"] = self.status.value
        return d

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> ModelEntry:
        p = dict(payload)
        p.pop("kind", None)
        p["status"] = ModelStatus(p.get("status", "registered"))
        p["layers"] = [LayerInfo(**l) for l in p.get("layers", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in p.items() if k in known})


def check_vectors(vectors: np.ndarray, dim: int, what: str = "vector") -> np.ndarray:
    """Validate a (n, dim) or (dim,) float array: right dimension, finite, non-zero norm."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InvalidArgument(
            f"{what} has shape {tuple(np.shape(vectors))}, expected (*, {dim})", field=what
        )
    if arr.shape[0] == 0:
        raise InvalidArgument(f"empty {what} batch", field=what)
    # One pass decides the common case: every squared norm finite and non-zero means finite
    # values and a usable norm (a NaN or infinity anywhere makes its row's sum NaN or
    # infinite, a norm that overflows float32 makes it infinite). Only a
    # vector that fails it takes the checks below, which name what is wrong. (einsum, unlike
    # matmul, raises no floating-point warnings on overflow.)
    squares = np.einsum("ij,ij->i", arr, arr)
    if np.isfinite(squares).all() and squares.all():
        return arr
    if not np.isfinite(arr).all():
        raise InvalidArgument(f"{what} contains NaN or infinite values", field=what)
    with np.errstate(over="ignore"):
        norms = np.linalg.norm(arr, axis=1)
    if (norms == 0).any():
        raise InvalidArgument(f"{what} has zero norm", field=what)
    if not np.isfinite(norms).all():
        raise InvalidArgument(
            f"{what} is too large to normalise (its norm overflows float32)", field=what
        )
    return arr
