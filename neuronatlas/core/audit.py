"""Concept audits: how much of a model is aligned with valid vs spurious concepts.

Each concept (free text) is scored against every neuron vector with the null-prompt baseline of
``labels.LabelScorer`` (cos(neuron, prompt(concept)) - cos(neuron, prompt(""))). A neuron is
*aligned* with a concept when that score reaches the threshold. The audit reports, per concept,
the aligned neurons and their share of the model and of each layer; overall, the share of the
model aligned with any valid and any spurious concept; and the top probe images of the most
spurious-aligned neurons, so a user can look at what the model really keys on.

Noise floor: the same shares for the model's vectors randomly rotated about their mean direction
(``compare.rotation_null``). With ``threshold=None`` each concept's threshold is the 99th
percentile of its scores on those rotated vectors, so about 1 % of a random model aligns by chance.

**Kinds and class weighting.** An audit covers one record kind (``kind``: neurons by default,
or the model's ``nmf`` / ``cluster`` / ``cav`` components). With ``class_name`` it also weighs
every record by its importance for that class (``indexer/importance.py``: the mean gradient x
activation of the class logit along the record's direction, its positive part; the payload's
``top_classes``, a record without the class there weighs 0): the *class shares* are
sum(weight x aligned) / sum(weight), i.e. how much of what the model uses for the class is
aligned with valid or spurious concepts, each beside the same weighted share of the rotated
vectors (the noise floor). The spurious records are then listed by their importance for the
class.

Example, the ABCDE melanoma audit (dermatology classifiers are known to key on rulers and
markers rather than lesion features)::

    neuronatlas audit derm-model \\
        --valid asymmetry --valid "border irregularity" --valid "colour variation" \\
        --valid diameter --valid evolution \\
        --spurious ruler --spurious band-aid --spurious "skin marker" --spurious hair --out audit/
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neuronatlas.core.compare import _rng, indexed_entry, rotation_null
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import (
    EmbedderMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotIndexed,
)
from neuronatlas.core.labels import LabelScorer
from neuronatlas.core.records import NEURON_KIND, NeuronRecord, neuron_key
from neuronatlas.core.store.base import KnowledgeStore
from neuronatlas.core.validate import check_embedder, shown

NULL_QUANTILE = 0.99


@dataclass
class ConceptAudit:
    concept: str
    kind: str  # "valid" or "spurious"
    threshold: float
    aligned: int  # neurons aligned with it
    share: float  # aligned / neurons of the model
    share_baseline: float  # the same share for the rotated (random) vectors
    layer_share: np.ndarray  # (L,) aligned share of each layer
    best_score: float
    # with a class: importance-weighted aligned share and its noise floor (0 without)
    class_share: float = 0.0
    class_share_baseline: float = 0.0


@dataclass
class SpuriousNeuron:
    layer: str
    unit: int
    concept: str
    score: float
    top_samples: list[str] = field(default_factory=list)
    kind: str = NEURON_KIND
    importance: float = 0.0  # for the audited class (0 without one)


@dataclass
class Audit:
    model_id: str
    generation: int
    n_neurons: int
    layers: list[str]
    depths: np.ndarray  # (L,)
    layer_sizes: np.ndarray  # (L,)
    concepts: list[ConceptAudit]
    valid_share: float  # share of neurons aligned with at least one valid concept
    spurious_share: float
    valid_share_baseline: float
    spurious_share_baseline: float
    layer_valid_share: np.ndarray  # (L,)
    layer_spurious_share: np.ndarray  # (L,)
    spurious_neurons: list[SpuriousNeuron]  # most spurious-aligned first (with a class:
    # the most important for it first)
    kind: str = NEURON_KIND  # the record kind audited
    class_name: str = ""  # the class the class shares are weighted for ("" : none)
    class_valid_share: float = 0.0  # importance-weighted, see the module docstring
    class_spurious_share: float = 0.0
    class_valid_share_baseline: float = 0.0
    class_spurious_share_baseline: float = 0.0


def _concept_list(items: Iterable[str] | None, what: str) -> list[str]:
    out: list[str] = []
    for c in items or []:
        c = str(c).strip()
        if not c:
            raise InvalidArgument(f"empty {what} concept", field=what)
        if c not in out:
            out.append(c)
    return out


def audit_model(
    store: KnowledgeStore,
    embedder: Embedder,
    model: str,
    valid: list[str],
    spurious: list[str],
    threshold: float | None = None,
    top_neurons: int = 8,
    top_images: int = 6,
    seed: int = 0,
    cache_dir: Path | None = None,
    kind: str = NEURON_KIND,
    class_name: str | None = None,
) -> Audit:
    """Audit an indexed model against valid and spurious concepts (see module docstring).

    ``threshold``: fixed score threshold for every concept, or None to calibrate each concept on
    the noise floor. Raises NotFound / NotIndexed for the model, EmbedderMismatch when
    ``embedder`` is not the one that produced the store's vectors.
    """
    valid, spurious = _concept_list(valid, "valid"), _concept_list(spurious, "spurious")
    if not valid and not spurious:
        raise InvalidArgument("give at least one valid or spurious concept", field="valid")
    both = set(valid) & set(spurious)
    if both:
        raise InvalidArgument(
            f"concepts both valid and spurious: {shown(', '.join(sorted(both)), 200)}",
            field="spurious",
        )
    entry = indexed_entry(store, model)
    info = embedder.info
    check_embedder(store.embedder, info)

    recs = sorted(
        store.scroll_neurons(
            model, generation=entry.generation, with_vectors=True, kinds=[kind or NEURON_KIND]
        ),
        key=lambda r: (r.layer_index, r.layer, r.unit),
    )
    if not recs:
        what = "neurons" if kind in ("", NEURON_KIND) else f"{kind} components"
        raise NotIndexed(f"model {model!r} has no stored {what}")
    weights = _class_weights(entry.extra, model, recs, class_name) if class_name else None
    layers = list(dict.fromkeys(r.layer for r in recs))
    layer_pos = {n: i for i, n in enumerate(layers)}
    layer_of = np.array([layer_pos[r.layer] for r in recs])
    sizes = np.bincount(layer_of, minlength=len(layers))
    depths = np.array([next(r.depth for r in recs if r.layer == n) for n in layers])
    x = np.stack([r.vector for r in recs]).astype(np.float32)
    if x.shape[1] != info.dim:
        raise EmbedderMismatch(
            f"stored vectors have dimension {x.shape[1]}, the embedder {info.dim}"
        )

    concepts = valid + spurious
    scorer = LabelScorer(embedder, concepts, name="audit", cache_dir=cache_dir)
    s = scorer.scores(x)  # (N, C)
    s0 = scorer.scores(rotation_null(x, x.mean(axis=0), _rng(seed, 4)))
    thr = (
        np.quantile(s0, NULL_QUANTILE, axis=0)
        if threshold is None
        else np.full(len(concepts), float(threshold))
    )
    aligned, aligned0 = s >= thr, s0 >= thr

    def wshare(mask: Any) -> float:
        return float((weights * mask).sum() / weights.sum()) if weights is not None else 0.0

    per_concept = []
    for c, name in enumerate(concepts):
        per_layer = np.bincount(layer_of, weights=aligned[:, c], minlength=len(layers)) / sizes
        per_concept.append(
            ConceptAudit(
                concept=name,
                kind="valid" if c < len(valid) else "spurious",
                threshold=float(thr[c]),
                aligned=int(aligned[:, c].sum()),
                share=float(aligned[:, c].mean()),
                share_baseline=float(aligned0[:, c].mean()),
                layer_share=per_layer,
                best_score=float(s[:, c].max()),
                class_share=wshare(aligned[:, c]),
                class_share_baseline=wshare(aligned0[:, c]),
            )
        )

    nv = len(valid)
    any_v = aligned[:, :nv].any(axis=1) if nv else np.zeros(len(x), bool)
    any_s = aligned[:, nv:].any(axis=1) if spurious else np.zeros(len(x), bool)
    any_v0 = aligned0[:, :nv].any(axis=1) if nv else np.zeros(len(x), bool)
    any_s0 = aligned0[:, nv:].any(axis=1) if spurious else np.zeros(len(x), bool)

    worst = []
    if spurious:
        margin = s[:, nv:] - thr[nv:]  # how far above its concept's threshold
        best_c = margin.argmax(axis=1)
        best_m = margin[np.arange(len(x)), best_c]
        if weights is None:
            order = np.argsort(-best_m, kind="stable")
        else:  # the most important aligned records for the class first
            order = np.lexsort((-best_m, -weights))
        shown_n = 0
        for i in order:
            if shown_n >= top_neurons:
                break
            if best_m[i] < 0 or (weights is not None and weights[i] <= 0):
                continue
            shown_n += 1
            r = recs[i]
            worst.append(
                SpuriousNeuron(
                    layer=r.layer,
                    unit=r.unit,
                    concept=spurious[best_c[i]],
                    score=float(s[i, nv + best_c[i]]),
                    top_samples=[t.sample_id for t in r.top_samples[:top_images]],
                    kind=r.kind,
                    importance=float(weights[i]) if weights is not None else 0.0,
                )
            )
    return Audit(
        model_id=model,
        generation=entry.generation,
        n_neurons=len(x),
        layers=layers,
        depths=depths,
        layer_sizes=sizes,
        concepts=per_concept,
        valid_share=float(any_v.mean()),
        spurious_share=float(any_s.mean()),
        valid_share_baseline=float(any_v0.mean()),
        spurious_share_baseline=float(any_s0.mean()),
        layer_valid_share=np.bincount(layer_of, weights=any_v, minlength=len(layers)) / sizes,
        layer_spurious_share=np.bincount(layer_of, weights=any_s, minlength=len(layers)) / sizes,
        spurious_neurons=worst,
        kind=kind or NEURON_KIND,
        class_name=class_name or "",
        class_valid_share=wshare(any_v),
        class_spurious_share=wshare(any_s),
        class_valid_share_baseline=wshare(any_v0),
        class_spurious_share_baseline=wshare(any_s0),
    )


def _class_weights(
    extra: dict[str, Any], model: str, recs: list[NeuronRecord], class_name: str
) -> np.ndarray:
    """Each record's importance for ``class_name`` (positive part; 0 when the class is not
    among its stored top classes)."""
    from neuronatlas.core.explain import importance_record

    imp = importance_record(extra, model)
    if class_name not in imp.get("classes", []):
        raise NotFound(
            f"model {model!r} has no class {shown(class_name)} (classes: "
            f"{', '.join(list(imp.get('classes', []))[:20])})",
            resource_type="class",
            resource_name=class_name,
        )
    w = np.array(
        [
            max(0.0, next((c.importance for c in r.top_classes if c.class_name == class_name), 0.0))
            for r in recs
        ],
        np.float64,
    )
    if w.sum() <= 0:
        raise FailedPrecondition(
            f"no {recs[0].kind} of model {model!r} has a positive importance for class "
            f"{shown(class_name)}"
        )
    return w


def audit_summary(a: Audit) -> str:
    """A plain-text report of an audit."""
    what = "neurons" if a.kind == NEURON_KIND else f"{a.kind} components"
    lines = [
        f"Concept audit of {a.model_id} (generation {a.generation}, {a.n_neurons} {what}, "
        f"{len(a.layers)} layers)",
        "",
        f"aligned with a valid concept:    {a.valid_share:6.1%}   "
        f"(noise floor {a.valid_share_baseline:6.1%})",
        f"aligned with a spurious concept: {a.spurious_share:6.1%}   "
        f"(noise floor {a.spurious_share_baseline:6.1%})",
    ]
    if a.class_name:
        lines += [
            "",
            f"weighted by importance for class {a.class_name!r} (what the model uses for it):",
            f"  valid:    {a.class_valid_share:6.1%}   (noise floor "
            f"{a.class_valid_share_baseline:6.1%})",
            f"  spurious: {a.class_spurious_share:6.1%}   (noise floor "
            f"{a.class_spurious_share_baseline:6.1%})",
        ]
    lines += [
        "",
        f"{'concept':28s} {'kind':9s} {'threshold':>9s} {'neurons':>8s} {'share':>7s} "
        f"{'floor':>7s}" + (f" {'class':>7s} {'floor':>7s}" if a.class_name else ""),
    ]
    for c in a.concepts:
        lines.append(
            f"{c.concept[:28]:28s} {c.kind:9s} {c.threshold:9.4f} {c.aligned:8d} "
            f"{c.share:7.1%} {c.share_baseline:7.1%}"
            + (f" {c.class_share:7.1%} {c.class_share_baseline:7.1%}" if a.class_name else "")
        )
    lines += ["", "per layer (valid / spurious share):"]
    for i, name in enumerate(a.layers):
        lines.append(
            f"  {name:24s} depth {a.depths[i]:.2f}  {a.layer_valid_share[i]:6.1%} / "
            f"{a.layer_spurious_share[i]:6.1%}"
        )
    if a.spurious_neurons:
        head = f"most spurious-aligned {what}"
        if a.class_name:
            head += f", most important for {a.class_name!r} first"
        lines += ["", head + " (top probe images):"]
        for n in a.spurious_neurons:
            ref = neuron_key(a.model_id, n.layer, n.unit, n.kind)
            imp = f" importance {n.importance:.4g}" if a.class_name else ""
            lines.append(f"  {ref}  {n.concept} ({n.score:+.4f}){imp}: " + ", ".join(n.top_samples))
    return "\n".join(lines) + "\n"
