"""Conversions between protobuf messages (``neuronatlas.v1``) and core records.

The only place that converts: the servicer turns requests into core arguments and results into
responses; the client turns responses back into the same core records.
"""

from __future__ import annotations

import math

import numpy as np
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict

from neuronatlas.core.errors import InvalidArgument
from neuronatlas.core.queries import Description, ImageQuery, ModelCount, NeuronQuery, Query, StoreStats, TextQuery, VectorQuery
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
        clarity=float(rec.clarity), polysemanticity=float(rec.polysemanticity), redundancy=float(rec.redundancy)
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
        top_samples=[pb.TopSample(sample_id=s.sample_id, index=int(s.index), activation=float(s.activation))
                     for s in rec.top_samples],
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
    out = pb.DescribeNeuronResponse(neuron=ref_to_pb(d.model_id, d.layer, d.unit), label_set=list(d.label_set))
    for vocab, labels in d.labels.items():
        out.labels[vocab].labels.extend(_labels_to_pb(labels))
    return out


def description_from_pb(r: pb.DescribeNeuronResponse) -> Description:
    return Description(
        r.neuron.model_id, r.neuron.layer, r.neuron.unit,
        {v: _labels_from_pb(ls.labels) for v, ls in sorted(r.labels.items())}, list(r.label_set),
    )


def _ts(seconds: float) -> timestamp_pb2.Timestamp | None:
    if not seconds or not math.isfinite(seconds):
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({k: (str(v) if not isinstance(v, (str, int, float, bool, type(None), list, dict)) else v)
              for k, v in d.items()})
    return s


def model_to_pb(m: ModelEntry) -> pb.Model:
    out = pb.Model(
        model_id=m.model_id,
        display_name=m.display_name,
        architecture=m.architecture,
        source=_struct(m.source),
        weights_sha256=m.weights_sha256,
        training_data=m.training_data,
        layers=[pb.Layer(name=l.name, index=l.index, depth=l.depth, neurons=l.neurons, kind=l.kind) for l in m.layers],
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
    for name, secs in (("create_time", m.created_at), ("update_time", m.updated_at), ("index_time", m.indexed_at)):
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
        models=[pb.ModelStats(model_id=m.model_id, status=_STATUS_TO_PB[m.status], neurons=m.neurons, layers=m.layers)
                for m in s.models],
        store_size_bytes=s.size_bytes,
        embedder=e.name if e else "",
        embedder_weights=e.weights if e else "",
        embedding_dim=e.dim if e else 0,
        backend=s.backend,
    )


def stats_from_pb(r: pb.GetStatsResponse) -> StoreStats:
    return StoreStats(
        total_neurons=r.total_neurons,
        models=[ModelCount(m.model_id, _STATUS_FROM_PB.get(m.status, ModelStatus.REGISTERED), m.neurons,
                           dict(sorted(m.layers.items(), key=lambda kv: kv[0]))) for m in r.models],
        size_bytes=r.store_size_bytes,
        embedder=EmbedderInfo(r.embedder, r.embedder_weights, r.embedding_dim) if r.embedder else None,
        backend=r.backend,
    )


def hit_key(hit: Hit) -> str:
    r = hit.record
    return neuron_key(r.model_id, r.layer, r.unit)
