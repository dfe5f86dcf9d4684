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

import numpy as np

from neuronatlas.core.compare import _rng, indexed_entry, rotation_null
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import EmbedderMismatch, InvalidArgument, NotIndexed
from neuronatlas.core.labels import LabelScorer
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


@dataclass
class SpuriousNeuron:
    layer: str
    unit: int
    concept: str
    score: float
    top_samples: list[str] = field(default_factory=list)


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
    spurious_neurons: list[SpuriousNeuron]  # most spurious-aligned first


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
        store.scroll_neurons(model, generation=entry.generation, with_vectors=True),
        key=lambda r: (r.layer_index, r.layer, r.unit),
    )
    if not recs:
        raise NotIndexed(f"model {model!r} has no stored neurons")
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
        for i in np.argsort(-best_m, kind="stable")[:top_neurons]:
            if best_m[i] < 0:
                break
            r = recs[i]
            worst.append(
                SpuriousNeuron(
                    layer=r.layer,
                    unit=r.unit,
                    concept=spurious[best_c[i]],
                    score=float(s[i, nv + best_c[i]]),
                    top_samples=[t.sample_id for t in r.top_samples[:top_images]],
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
    )


def audit_summary(a: Audit) -> str:
    """A plain-text report of an audit."""
    lines = [
        f"Concept audit of {a.model_id} (generation {a.generation}, {a.n_neurons} neurons, "
        f"{len(a.layers)} layers)",
        "",
        f"aligned with a valid concept:    {a.valid_share:6.1%}   "
        f"(noise floor {a.valid_share_baseline:6.1%})",
        f"aligned with a spurious concept: {a.spurious_share:6.1%}   "
        f"(noise floor {a.spurious_share_baseline:6.1%})",
        "",
        f"{'concept':28s} {'kind':9s} {'threshold':>9s} {'neurons':>8s} {'share':>7s} "
        f"{'floor':>7s}",
    ]
    for c in a.concepts:
        lines.append(
            f"{c.concept[:28]:28s} {c.kind:9s} {c.threshold:9.4f} {c.aligned:8d} "
            f"{c.share:7.1%} {c.share_baseline:7.1%}"
        )
    lines += ["", "per layer (valid / spurious share):"]
    for i, name in enumerate(a.layers):
        lines.append(
            f"  {name:24s} depth {a.depths[i]:.2f}  {a.layer_valid_share[i]:6.1%} / "
            f"{a.layer_spurious_share[i]:6.1%}"
        )
    if a.spurious_neurons:
        lines += ["", "most spurious-aligned neurons (top probe images):"]
        for n in a.spurious_neurons:
            lines.append(
                f"  {a.model_id}/{n.layer}/{n.unit}  {n.concept} ({n.score:+.4f}): "
                + ", ".join(n.top_samples)
            )
    return "\n".join(lines) + "\n"
