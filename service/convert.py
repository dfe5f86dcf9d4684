"""Conversions between protobuf messages (``neuronatlas.v1``) and core records.

The only place that converts: the servicer turns requests into core arguments and results into
responses; the client turns responses back into the same core records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict

from neuronatlas.core.errors import InvalidArgument
from neuronatlas.core.queries import (
    Description,
    ImageQuery,
    ModelCount,
    NeuronQuery,
    Query,
    StoreStats,
    TextQuery,
    VectorQuery,
)
from neuronatlas.core.records import (
    EmbedderInfo,
    Label,
    LayerInfo,
    ModelEntry,
    ModelStatus,
    NeuronRecord,
    TopSample,
    neuron_key,
)
from neuronatlas.core.store.base import Hit, SearchFilter
from neuronatlas.v1 import neuronatlas_pb2 as pb

MAX_TOP_LABELS = 5

_STATUS_TO_PB = {
    ModelStatus.REGISTERED: pb.MODEL_STATUS_REGISTERED,
    ModelStatus.INDEXING: pb.MODEL_STATUS_INDEXING,
    ModelStatus.INDEXED: pb.MODEL_STATUS_INDEXED,
    ModelStatus.FAILED: pb.MODEL_STATUS_FAILED,
}
_STATUS_FROM_PB = {v: k for k, v in _STATUS_TO_PB.items()}


# -- requests -> core ---------------------------------------------------------------------
def ref_from_pb(ref: pb.NeuronRef, field: str = "neuron") -> tuple[str, str, int]:
    if not ref.model_id:
        raise InvalidArgument(f"{field}.model_id is required", field=f"{field}.model_id")
    if not ref.layer:
        raise InvalidArgument(f"{field}.layer is required", field=f"{field}.layer")
    return ref.model_id, ref.layer, int(ref.unit)


def ref_to_pb(model_id: str, layer: str, unit: int) -> pb.NeuronRef:
    return pb.NeuronRef(model_id=model_id, layer=layer, unit=int(unit))


def filter_from_pb(f: pb.NeuronFilter) -> SearchFilter | None:
    flt = SearchFilter(
        model_ids=tuple(f.model_ids) or None,
        layers=tuple(f.layers) or None,
        depth_min=f.depth_min if f.HasField("depth_min") else None,
        depth_max=f.depth_max if f.HasField("depth_max") else None,
        min_clarity=f.min_clarity if f.HasField("min_clarity") else None,
        label=f.label or None,
    )
    return None if flt == SearchFilter() else flt


def filter_to_pb(flt: SearchFilter | None) -> pb.NeuronFilter:
    out = pb.NeuronFilter()
    if flt is None:
        return out
    out.model_ids.extend(flt.model_ids or ())
    out.layers.extend(flt.layers or ())
    for name in ("depth_min", "depth_max", "min_clarity"):
        if getattr(flt, name) is not None:
            setattr(out, name, float(getattr(flt, name)))
    if flt.label:
        out.label = flt.label
    return out


def query_from_pb(req: pb.SearchNeuronsRequest) -> Query:
    which = req.WhichOneof("query")
    if which == "text":
        return TextQuery(req.text)
    if which == "image":
        return ImageQuery(bytes(req.image))
    if which == "neuron":
        return NeuronQuery(*ref_from_pb(req.neuron))
    if which == "vector":
        return VectorQuery(np.asarray(req.vector.values, dtype=np.float32))
    raise InvalidArgument("one of text, image, neuron or vector is required", field="query")


def query_to_pb(query: Query, req: pb.SearchNeuronsRequest) -> None:
    if isinstance(query, TextQuery):
        req.text = query.text
    elif isinstance(query, ImageQuery):
        req.image = query.data
    elif isinstance(query, NeuronQuery):
        req.neuron.CopyFrom(ref_to_pb(query.model_id, query.layer, query.unit))
    elif isinstance(query, VectorQuery):
        req.vector.values.extend(np.asarray(query.values, dtype=np.float32).ravel().tolist())
    else:
        raise InvalidArgument(f"unsupported query {query!r}", field="query")


# -- records -> responses -------------------------------------------------------------------
def _labels_to_pb(labels: list[Label]) -> list[pb.Label]:
    return [pb.Label(label=l.label, score=float(l.score)) for l in labels]


def _labels_from_pb(labels) -> list[Label]:
    return [Label(l.label, float(l.score)) for l in labels]


def top_labels(rec: NeuronRecord) -> list[Label]:
    """Best label of each vocabulary, best first."""
    best = [ls[0] for ls in rec.labels.values() if ls]
    return sorted(best, key=lambda l: -l.score)[:MAX_TOP_LABELS]


def _quality(rec: NeuronRecord) -> pb.QualityScores:
    return pb.QualityScores(
        clarity=float(rec.clarity),
        polysemanticity=float(rec.polysemanticity),
        redundancy=float(rec.redundancy),
    )


def hit_to_pb(hit: Hit) -> pb.NeuronHit:
    r = hit.record
    return pb.NeuronHit(
        neuron=ref_to_pb(r.model_id, r.layer, r.unit),
        key=r.key,
        score=float(hit.score),
        layer_index=int(r.layer_index),
        depth=float(r.depth),
        top_labels=_labels_to_pb(top_labels(r)),
        quality=_quality(r),
    )


def hit_from_pb(h: pb.NeuronHit) -> Hit:
    """A Hit whose record carries what NeuronHit has (top labels under vocabulary "top")."""
    rec = NeuronRecord(
        model_id=h.neuron.model_id,
        layer=h.neuron.layer,
        layer_index=h.layer_index,
        depth=h.depth,
        unit=h.neuron.unit,
        vector=np.zeros(0, np.float32),
        labels={"top": _labels_from_pb(h.top_labels)} if h.top_labels else {},
        clarity=h.quality.clarity,
        polysemanticity=h.quality.polysemanticity,
        redundancy=h.quality.redundancy,
    )
    return Hit(record=rec, score=float(h.score))


def neuron_to_pb(rec: NeuronRecord, include_vector: bool = False) -> pb.Neuron:
    out = pb.Neuron(
        neuron=ref_to_pb(rec.model_id, rec.layer, rec.unit),
        key=rec.key,
        layer_index=int(rec.layer_index),
        depth=float(rec.depth),
        label_set=list(rec.label_set),
        top_samples=[
            pb.TopSample(sample_id=s.sample_id, index=int(s.index), activation=float(s.activation))
            for s in rec.top_samples
        ],
        quality=_quality(rec),
        stats={k: float(v) for k, v in rec.stats.items()},
        generation=int(rec.generation),
    )
    for vocab, labels in rec.labels.items():
        out.labels[vocab].labels.extend(_labels_to_pb(labels))
    if include_vector and rec.vector is not None and rec.vector.size:
        out.vector.extend(np.asarray(rec.vector, dtype=np.float32).tolist())
    return out


def neuron_from_pb(n: pb.Neuron) -> NeuronRecord:
    return NeuronRecord(
        model_id=n.neuron.model_id,
        layer=n.neuron.layer,
        layer_index=n.layer_index,
        depth=n.depth,
        unit=n.neuron.unit,
        vector=np.asarray(n.vector, dtype=np.float32),
        top_samples=[TopSample(s.sample_id, s.index, s.activation) for s in n.top_samples],
        labels={v: _labels_from_pb(ls.labels) for v, ls in sorted(n.labels.items())},
        label_set=list(n.label_set),
        clarity=n.quality.clarity,
        polysemanticity=n.quality.polysemanticity,
        redundancy=n.quality.redundancy,
        stats=dict(n.stats),
        generation=n.generation,
    )


def description_to_pb(d: Description) -> pb.DescribeNeuronResponse:
    out = pb.DescribeNeuronResponse(
        neuron=ref_to_pb(d.model_id, d.layer, d.unit), label_set=list(d.label_set)
    )
    for vocab, labels in d.labels.items():
        out.labels[vocab].labels.extend(_labels_to_pb(labels))
    return out


def description_from_pb(r: pb.DescribeNeuronResponse) -> Description:
    return Description(
        r.neuron.model_id,
        r.neuron.layer,
        r.neuron.unit,
        {v: _labels_from_pb(ls.labels) for v, ls in sorted(r.labels.items())},
        list(r.label_set),
    )


def _ts(seconds: float) -> timestamp_pb2.Timestamp | None:
    if not seconds or not math.isfinite(seconds):
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(
        {
            k: (str(v) if not isinstance(v, (str, int, float, bool, type(None), list, dict)) else v)
            for k, v in d.items()
        }
    )
    return s


def model_to_pb(m: ModelEntry) -> pb.Model:
    out = pb.Model(
        model_id=m.model_id,
        display_name=m.display_name,
        architecture=m.architecture,
        source=_struct(m.source),
        weights_sha256=m.weights_sha256,
        training_data=m.training_data,
        layers=[
            pb.Layer(name=l.name, index=l.index, depth=l.depth, neurons=l.neurons, kind=l.kind)
            for l in m.layers
        ],
        embedder=m.embedder,
        probe_set=m.probe_set,
        status=_STATUS_TO_PB[m.status],
        status_reason=m.status_reason,
        generation=m.generation,
        index_wall_seconds=float(m.index_wall_s),
        tags=list(m.tags),
        notes=m.notes,
        neuron_count=m.neuron_count,
    )
    for name, secs in (
        ("create_time", m.created_at),
        ("update_time", m.updated_at),
        ("index_time", m.indexed_at),
    ):
        ts = _ts(secs)
        if ts is not None:
            getattr(out, name).CopyFrom(ts)
    return out


def _secs(m: pb.Model, name: str) -> float:
    return getattr(m, name).ToNanoseconds() / 1e9 if m.HasField(name) else 0.0


def model_from_pb(m: pb.Model) -> ModelEntry:
    return ModelEntry(
        model_id=m.model_id,
        display_name=m.display_name,
        architecture=m.architecture,
        source=MessageToDict(m.source),
        weights_sha256=m.weights_sha256,
        training_data=m.training_data,
        layers=[LayerInfo(l.name, l.index, l.depth, l.neurons, l.kind) for l in m.layers],
        embedder=m.embedder,
        probe_set=m.probe_set,
        status=_STATUS_FROM_PB.get(m.status, ModelStatus.REGISTERED),
        status_reason=m.status_reason,
        generation=m.generation,
        created_at=_secs(m, "create_time"),
        updated_at=_secs(m, "update_time"),
        indexed_at=_secs(m, "index_time"),
        index_wall_s=m.index_wall_seconds,
        tags=list(m.tags),
        notes=m.notes,
    )


def stats_to_pb(s: StoreStats) -> pb.GetStatsResponse:
    e = s.embedder
    return pb.GetStatsResponse(
        total_neurons=s.total_neurons,
        models=[
            pb.ModelStats(
                model_id=m.model_id,
                status=_STATUS_TO_PB[m.status],
                neurons=m.neurons,
                layers=m.layers,
            )
            for m in s.models
        ],
        store_size_bytes=s.size_bytes,
        embedder=e.name if e else "",
        embedder_weights=e.weights if e else "",
        embedding_dim=e.dim if e else 0,
        backend=s.backend,
    )


def stats_from_pb(r: pb.GetStatsResponse) -> StoreStats:
    return StoreStats(
        total_neurons=r.total_neurons,
        models=[
            ModelCount(
                m.model_id,
                _STATUS_FROM_PB.get(m.status, ModelStatus.REGISTERED),
                m.neurons,
                dict(sorted(m.layers.items(), key=lambda kv: kv[0])),
            )
            for m in r.models
        ],
        size_bytes=r.store_size_bytes,
        embedder=EmbedderInfo(r.embedder, r.embedder_weights, r.embedding_dim)
        if r.embedder
        else None,
        backend=r.backend,
    )


def hit_key(hit: Hit) -> str:
    r = hit.record
    return neuron_key(r.model_id, r.layer, r.unit)


# -- comparison and audit ----------------------------------------------------------------------
def matrix_to_pb(m: np.ndarray, row_labels: list[str], col_labels: list[str]) -> pb.Matrix:
    m = np.asarray(m, dtype=np.float32)
    return pb.Matrix(
        rows=int(m.shape[0]),
        cols=int(m.shape[1]),
        values=m.ravel().tolist(),
        row_labels=list(row_labels),
        col_labels=list(col_labels),
    )


def matrix_from_pb(m: pb.Matrix) -> np.ndarray:
    """The (rows, cols) float32 array of a Matrix message."""
    return np.asarray(m.values, dtype=np.float32).reshape(m.rows, m.cols)


def _score_to_pb(s) -> pb.ScoreWithFloor:
    return pb.ScoreWithFloor(value=float(s.value), noise_floor=float(s.baseline))


def _score_from_pb(s: pb.ScoreWithFloor):
    from neuronatlas.core.compare import Score

    return Score(float(s.value), float(s.noise_floor))


def _alignment_to_pb(al, layers: list[str]) -> pb.DepthAlignment:
    return pb.DepthAlignment(
        layers=list(layers),
        depth=np.asarray(al.depth, np.float32).tolist(),
        matched_depth=np.asarray(al.matched_depth, np.float32).tolist(),
        rho=_score_to_pb(al.rho),
        p_value=float(al.p_value),
    )


def _concept_counts_to_pb(items) -> list[pb.ConceptCount]:
    return [
        pb.ConceptCount(label=c.label, count_a=int(c.count_a), count_b=int(c.count_b))
        for c in items
    ]


def _side_to_pb(side) -> pb.ComparedModel:
    return pb.ComparedModel(
        model_id=side.model_id,
        generation=int(side.generation),
        layers=list(side.layers),
        layer_sizes=[int(n) for n in side.sizes],
        neuron_count=len(side.layer_of),
    )


def compare_args_from_pb(req: pb.CompareModelsRequest) -> dict:
    """Core keyword arguments of ``compare_models`` from a request (paging excluded)."""
    from neuronatlas.core.queries import MAX_FILTER_ITEMS, MAX_LAYER_CHARS

    for name in ("model_a", "model_b"):
        _check_model_id(getattr(req, name), name)
    if len(req.layers) > MAX_FILTER_ITEMS:
        raise InvalidArgument(f"at most {MAX_FILTER_ITEMS} layers", field="layers")
    for layer in req.layers:
        if not layer or len(layer) > MAX_LAYER_CHARS:
            raise InvalidArgument(
                f"layer names must be 1-{MAX_LAYER_CHARS} characters", field="layers"
            )
    tau = float(req.tau) if req.HasField("tau") else None
    if tau is not None and not (math.isfinite(tau) and -1.0 <= tau <= 1.0):
        raise InvalidArgument(f"tau must be a cosine in [-1, 1], not {tau}", field="tau")
    return {
        "model_a": req.model_a,
        "model_b": req.model_b,
        "layers": list(req.layers) or None,
        "tau": tau,
        "activation": not req.semantic_only,
    }


def comparison_to_pb(cmp, next_page_token: str = "") -> pb.CompareModelsResponse:
    """A core ``Comparison`` (with its page of pairs) as a CompareModelsResponse."""
    s, a, b = cmp.semantic, cmp.a, cmp.b
    out = pb.CompareModelsResponse(
        model_a=_side_to_pb(a),
        model_b=_side_to_pb(b),
        layer_similarity=matrix_to_pb(s.layer_similarity, a.layers, b.layers),
        layer_similarity_floor=matrix_to_pb(s.layer_similarity_baseline, a.layers, b.layers),
        alignment=_alignment_to_pb(s.alignment, a.layers),
        alignment_b=_alignment_to_pb(s.alignment_b, b.layers),
        best_match=_score_to_pb(s.best_match),
        matching=_score_to_pb(s.matching),
        matching_method=s.matching_method,
        coverage_a_to_b=_score_to_pb(s.coverage_a),
        coverage_b_to_a=_score_to_pb(s.coverage_b),
        tau=float(s.tau),
        floor_exact=bool(s.null_exact),
        has_activation=cmp.activation is not None,
        shared_concepts=_concept_counts_to_pb(s.shared),
        unique_concepts_a=_concept_counts_to_pb(s.unique_a),
        unique_concepts_b=_concept_counts_to_pb(s.unique_b),
        pairs=[
            pb.MatchedPair(
                a=ref_to_pb(a.model_id, p.a_layer, p.a_unit),
                b=ref_to_pb(b.model_id, p.b_layer, p.b_unit),
                similarity=float(p.similarity),
                a_label=p.a_label,
                b_label=p.b_label,
            )
            for p in cmp.pairs
        ],
        total_pairs=int(cmp.pairs_total),
        next_page_token=next_page_token,
        cached=bool(cmp.cached),
    )
    act = cmp.activation
    if act is not None:
        out.cka.CopyFrom(matrix_to_pb(act.cka, act.layers_a, act.layers_b))
        out.cka_floor.CopyFrom(matrix_to_pb(act.cka_baseline, act.layers_a, act.layers_b))
        out.cka_alignment.CopyFrom(_alignment_to_pb(act.alignment, act.layers_a))
        out.cka_samples = int(act.n_samples)
    return out


def audit_args_from_pb(req: pb.AuditModelRequest) -> dict:
    """Core keyword arguments of ``audit_model`` from a request."""
    from neuronatlas.core.queries import MAX_LABEL_CHARS

    _check_model_id(req.model_id, "model_id")
    if not req.valid and not req.spurious:
        raise InvalidArgument("give at least one valid or spurious concept", field="valid")
    if len(req.valid) + len(req.spurious) > MAX_AUDIT_CONCEPTS:
        raise InvalidArgument(f"at most {MAX_AUDIT_CONCEPTS} concepts in all", field="valid")
    for name in ("valid", "spurious"):
        for i, c in enumerate(getattr(req, name)):
            if not c.strip() or len(c) > MAX_LABEL_CHARS:
                raise InvalidArgument(
                    f"{name} concepts must be 1-{MAX_LABEL_CHARS} characters", field=f"{name}[{i}]"
                )
    threshold = float(req.threshold) if req.HasField("threshold") else None
    if threshold is not None and not math.isfinite(threshold):
        raise InvalidArgument("threshold must be finite", field="threshold")
    return {
        "model": req.model_id,
        "valid": list(req.valid),
        "spurious": list(req.spurious),
        "threshold": threshold,
    }


def audit_to_pb(a) -> pb.AuditModelResponse:
    """A core ``Audit`` as an AuditModelResponse."""

    def floats(x) -> list[float]:
        return np.asarray(x, dtype=np.float32).tolist()

    return pb.AuditModelResponse(
        model_id=a.model_id,
        generation=int(a.generation),
        neuron_count=int(a.n_neurons),
        layers=list(a.layers),
        layer_depths=floats(a.depths),
        layer_sizes=[int(n) for n in a.layer_sizes],
        concepts=[
            pb.ConceptAudit(
                concept=c.concept,
                kind=c.kind,
                threshold=float(c.threshold),
                aligned_neurons=int(c.aligned),
                share=pb.ScoreWithFloor(value=float(c.share), noise_floor=float(c.share_baseline)),
                layer_share=floats(c.layer_share),
                best_score=float(c.best_score),
            )
            for c in a.concepts
        ],
        valid_share=pb.ScoreWithFloor(
            value=float(a.valid_share), noise_floor=float(a.valid_share_baseline)
        ),
        spurious_share=pb.ScoreWithFloor(
            value=float(a.spurious_share), noise_floor=float(a.spurious_share_baseline)
        ),
        layer_valid_share=floats(a.layer_valid_share),
        layer_spurious_share=floats(a.layer_spurious_share),
        spurious_neurons=[
            pb.SpuriousNeuron(
                neuron=ref_to_pb(a.model_id, n.layer, n.unit),
                concept=n.concept,
                score=float(n.score),
                top_sample_ids=list(n.top_samples),
            )
            for n in a.spurious_neurons
        ],
    )


def audit_from_pb(r: pb.AuditModelResponse):
    """The core ``Audit`` a response describes."""
    from neuronatlas.core.audit import Audit, ConceptAudit, SpuriousNeuron

    return Audit(
        model_id=r.model_id,
        generation=r.generation,
        n_neurons=int(r.neuron_count),
        layers=list(r.layers),
        depths=np.asarray(r.layer_depths, np.float64),
        layer_sizes=np.asarray(r.layer_sizes, np.int64),
        concepts=[
            ConceptAudit(
                concept=c.concept,
                kind=c.kind,
                threshold=c.threshold,
                aligned=c.aligned_neurons,
                share=c.share.value,
                share_baseline=c.share.noise_floor,
                layer_share=np.asarray(c.layer_share, np.float64),
                best_score=c.best_score,
            )
            for c in r.concepts
        ],
        valid_share=r.valid_share.value,
        spurious_share=r.spurious_share.value,
        valid_share_baseline=r.valid_share.noise_floor,
        spurious_share_baseline=r.spurious_share.noise_floor,
        layer_valid_share=np.asarray(r.layer_valid_share, np.float64),
        layer_spurious_share=np.asarray(r.layer_spurious_share, np.float64),
        spurious_neurons=[
            SpuriousNeuron(
                layer=n.neuron.layer,
                unit=n.neuron.unit,
                concept=n.concept,
                score=n.score,
                top_samples=list(n.top_sample_ids),
            )
            for n in r.spurious_neurons
        ],
    )


MAX_AUDIT_CONCEPTS = 100
_MODEL_ID_MAX = 128


def _check_model_id(model_id: str, field: str) -> None:
    if not model_id:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(model_id) > _MODEL_ID_MAX:
        raise InvalidArgument(f"{field} is longer than {_MODEL_ID_MAX} characters", field=field)


@dataclass
class RemoteComparison:
    """A comparison as CompareModels returns it: matrices as numpy arrays, scores with floors,
    one page of matched pairs (``core.compare`` types where they exist)."""

    model_a: str
    model_b: str
    layers_a: list[str]
    layers_b: list[str]
    layer_similarity: np.ndarray
    layer_similarity_floor: np.ndarray
    alignment: Any  # core.compare.Alignment, A -> B (semantic)
    alignment_b: Any
    best_match: Any  # core.compare.Score
    matching: Any
    coverage_a: Any
    coverage_b: Any
    tau: float
    matching_method: str
    floor_exact: bool
    cka: np.ndarray | None
    cka_floor: np.ndarray | None
    cka_alignment: Any
    cka_samples: int
    shared: list
    unique_a: list
    unique_b: list
    pairs: list
    pairs_total: int
    next_page_token: str = ""
    cached: bool = False


def _alignment_from_pb(al: pb.DepthAlignment):
    from neuronatlas.core.compare import Alignment

    return Alignment(
        depth=np.asarray(al.depth, np.float64),
        matched_depth=np.asarray(al.matched_depth, np.float64),
        rho=_score_from_pb(al.rho),
        p_value=float(al.p_value),
    )


def comparison_from_pb(r: pb.CompareModelsResponse) -> RemoteComparison:
    from neuronatlas.core.compare import ConceptCount, MatchedPair

    def counts(items) -> list:
        return [ConceptCount(c.label, c.count_a, c.count_b) for c in items]

    return RemoteComparison(
        model_a=r.model_a.model_id,
        model_b=r.model_b.model_id,
        layers_a=list(r.model_a.layers),
        layers_b=list(r.model_b.layers),
        layer_similarity=matrix_from_pb(r.layer_similarity),
        layer_similarity_floor=matrix_from_pb(r.layer_similarity_floor),
        alignment=_alignment_from_pb(r.alignment),
        alignment_b=_alignment_from_pb(r.alignment_b),
        best_match=_score_from_pb(r.best_match),
        matching=_score_from_pb(r.matching),
        coverage_a=_score_from_pb(r.coverage_a_to_b),
        coverage_b=_score_from_pb(r.coverage_b_to_a),
        tau=r.tau,
        matching_method=r.matching_method,
        floor_exact=r.floor_exact,
        cka=matrix_from_pb(r.cka) if r.has_activation else None,
        cka_floor=matrix_from_pb(r.cka_floor) if r.has_activation else None,
        cka_alignment=_alignment_from_pb(r.cka_alignment) if r.has_activation else None,
        cka_samples=r.cka_samples,
        shared=counts(r.shared_concepts),
        unique_a=counts(r.unique_concepts_a),
        unique_b=counts(r.unique_concepts_b),
        pairs=[
            MatchedPair(
                a_layer=p.a.layer,
                a_unit=p.a.unit,
                b_layer=p.b.layer,
                b_unit=p.b.unit,
                similarity=p.similarity,
                a_label=p.a_label,
                b_label=p.b_label,
            )
            for p in r.pairs
        ],
        pairs_total=r.total_pairs,
        next_page_token=r.next_page_token,
        cached=r.cached,
    )
