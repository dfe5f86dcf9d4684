"""Conversions between ``neuronatlas.v1`` zoo messages (``zoo.proto``) and core values, the
zoo counterpart of ``convert.py`` (the one place that converts; servicer and client both use
it). Sections: catalogue (models, artifacts, probe sets, thumbnails); operations add theirs
below.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from neuronatlas.core.artifacts import Artifact
from neuronatlas.core.catalogue import ProbeSetInfo, SampleImage
from neuronatlas.core.errors import InvalidArgument
from neuronatlas.core.jobs import Job, JobState, Operation, parse_operation_name
from neuronatlas.core.validate import shown
from neuronatlas.service.errors import public_message
from neuronatlas.v1 import zoo_pb2 as zpb

# -- catalogue -----------------------------------------------------------------------------------
_KIND_TO_PB: dict[str, int] = {
    "weights": zpb.ARTIFACT_KIND_WEIGHTS,
    "torchscript": zpb.ARTIFACT_KIND_TORCHSCRIPT,
    "probe_archive": zpb.ARTIFACT_KIND_PROBE_ARCHIVE,
    "other": zpb.ARTIFACT_KIND_OTHER,
}
_KIND_FROM_PB: dict[int, str] = {v: k for k, v in _KIND_TO_PB.items()}
MAX_SOURCE_DEPTH = 8


def artifact_kind_from_pb(kind: int, field: str = "header.kind") -> str:
    """``ArtifactKind`` -> the core kind name; UNSPECIFIED is "other", an unknown number is
    INVALID_ARGUMENT."""
    if kind == zpb.ARTIFACT_KIND_UNSPECIFIED:
        return "other"
    if kind not in _KIND_FROM_PB:
        raise InvalidArgument(f"unknown artifact kind {int(kind)}", field=field)
    return _KIND_FROM_PB[kind]


def artifact_kind_to_pb(kind: str) -> zpb.ArtifactKind:
    if kind not in _KIND_TO_PB:
        raise InvalidArgument(
            f"artifact kind must be one of {', '.join(_KIND_TO_PB)}, not {shown(kind)}",
            field="kind",
        )
    return _KIND_TO_PB[kind]  # type: ignore[return-value]  # an ArtifactKind value


def artifact_to_pb(a: Artifact) -> zpb.Artifact:
    return zpb.Artifact(
        sha256=a.sha256,
        size=a.size,
        name=a.name,
        kind=_KIND_TO_PB.get(a.kind, 0),  # type: ignore[arg-type]  # an ArtifactKind value
        ref=a.ref,
    )


def artifact_from_pb(a: zpb.Artifact) -> Artifact:
    return Artifact(a.sha256, int(a.size), a.name, _KIND_FROM_PB.get(a.kind, "other"), 0.0)


def _plain(value: Any, field: str, depth: int = 0) -> Any:
    """Plain JSON data (e.g. ``MessageToDict`` of a Struct) with integral numbers as ints
    (Struct numbers are doubles: a depth of 20 arrives as 20.0); non-finite numbers and
    nesting deeper than ``MAX_SOURCE_DEPTH`` are refused. Prefer :func:`struct_to_dict`:
    ``MessageToDict`` itself raises ValueError on a NaN in a Struct."""
    if depth > MAX_SOURCE_DEPTH:
        raise InvalidArgument(f"{field} is nested too deeply", field=field)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidArgument(f"{field} must be a finite number", field=field)
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, dict):
        return {
            k: _plain(v, f"{field}.{k}" if len(k) <= 64 else field, depth + 1)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_plain(v, f"{field}[{i}]", depth + 1) for i, v in enumerate(value)]
    return value


def _value(value: struct_pb2.Value) -> Any:
    """A ``Value`` as Python data, NaN and infinities included (``_plain`` refuses them)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return {k: _value(v) for k, v in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_value(v) for v in value.list_value.values]
    return None  # null_value, or unset


def struct_to_dict(s: struct_pb2.Struct, field: str) -> dict[str, Any]:
    """A Struct as a plain dict (``_plain``'s rules: ints, finite numbers, bounded nesting);
    any bad value is INVALID_ARGUMENT on ``field``. Recursion is bounded by protobuf's own
    parse depth limit (100)."""
    out = _plain({k: _value(v) for k, v in s.fields.items()}, field)
    return dict(out)


def source_from_pb(s: struct_pb2.Struct, field: str = "source") -> dict[str, Any]:
    """A model source (``Struct``) as the dict the indexer builds from."""
    out = struct_to_dict(s, field)
    if not out:
        raise InvalidArgument(
            'source is required: e.g. {"kind": "cifar_resnet", "depth": 20, "weights": '
            '"artifact:<sha256>"}',
            field=field,
        )
    kind = out.get("kind")
    if not isinstance(kind, str) or not kind:
        raise InvalidArgument("source needs a 'kind' (a string)", field=f"{field}.kind")
    return dict(sorted(out.items()))


def source_to_pb(source: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(source)
    return s


def fingerprint(request: Message, *, without: tuple[str, ...] = ("request_id",)) -> str:
    """sha256 of a request's deterministic bytes, ``without`` some fields (AIP-155: the same
    request_id must come with the same request)."""
    clone = type(request)()
    clone.CopyFrom(request)
    for name in without:
        clone.ClearField(name)
    return hashlib.sha256(clone.SerializeToString(deterministic=True)).hexdigest()


def probe_set_to_pb(p: ProbeSetInfo) -> zpb.ProbeSet:
    return zpb.ProbeSet(
        name=p.name, images=p.images, classes=list(p.classes), sha256=p.sha256, origin=p.origin
    )


def probe_set_from_pb(p: zpb.ProbeSet) -> ProbeSetInfo:
    return ProbeSetInfo(p.name, int(p.images), list(p.classes), p.sha256, p.origin)


def sample_to_pb(s: SampleImage) -> zpb.SampleImage:
    return zpb.SampleImage(
        index=s.index,
        sample_id=s.sample_id,
        label=s.label,
        png=s.png,
        width=s.width,
        height=s.height,
    )


def sample_from_pb(s: zpb.SampleImage) -> SampleImage:
    return SampleImage(
        int(s.index), s.sample_id, s.label, bytes(s.png), int(s.width), int(s.height)
    )


# -- operations (IndexModel, the operation calls, the worker side) --------------------------------
_STATE_TO_PB: dict[JobState, zpb.OperationState] = {
    JobState.QUEUED: zpb.OPERATION_STATE_QUEUED,
    JobState.RUNNING: zpb.OPERATION_STATE_RUNNING,
    JobState.SUCCEEDED: zpb.OPERATION_STATE_SUCCEEDED,
    JobState.FAILED: zpb.OPERATION_STATE_FAILED,
    JobState.CANCELLED: zpb.OPERATION_STATE_CANCELLED,
}
_STATE_FROM_PB: dict[int, JobState] = {int(v): k for k, v in _STATE_TO_PB.items()}
_REPORT_TO_PB: dict[str, zpb.JobReport] = {
    "heartbeat": zpb.JOB_REPORT_HEARTBEAT,
    "succeeded": zpb.JOB_REPORT_SUCCEEDED,
    "failed": zpb.JOB_REPORT_FAILED,
    "cancelled": zpb.JOB_REPORT_CANCELLED,
}
_REPORT_FROM_PB: dict[int, str] = {int(v): k for k, v in _REPORT_TO_PB.items()}
_CODE_BY_NUMBER = {c.value[0]: c.name for c in grpc.StatusCode}


def state_from_pb(state: int, field: str = "states") -> JobState:
    if state not in _STATE_FROM_PB:
        raise InvalidArgument(f"{int(state)} is not an operation state", field=field)
    return _STATE_FROM_PB[state]


def state_to_pb(state: JobState) -> zpb.OperationState:
    return _STATE_TO_PB[state]


def report_from_pb(report: int) -> str:
    if report not in _REPORT_FROM_PB:
        raise InvalidArgument(f"{int(report)} is not a job report", field="report")
    return _REPORT_FROM_PB[report]


def report_to_pb(report: str) -> zpb.JobReport:
    if report not in _REPORT_TO_PB:
        raise InvalidArgument(f"unknown job report {shown(report)}", field="report")
    return _REPORT_TO_PB[report]


def _timestamp(seconds: float) -> timestamp_pb2.Timestamp | None:
    if not seconds or not math.isfinite(seconds):
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _seconds(msg: Message, name: str) -> float:
    return float(getattr(msg, name).ToNanoseconds() / 1e9) if msg.HasField(name) else 0.0


def error_to_pb(error: dict[str, str]) -> zpb.OperationError:
    """``{"code": "INVALID_ARGUMENT", "reason", "message"}`` -> the proto (code as a number;
    the message made public: no server paths, bounded)."""
    name = str(error.get("code", "UNKNOWN"))
    code = grpc.StatusCode[name] if name in grpc.StatusCode.__members__ else grpc.StatusCode.UNKNOWN
    return zpb.OperationError(
        code=code.value[0],
        message=public_message(str(error.get("message", ""))),
        reason=str(error.get("reason", ""))[:128],
    )


def error_from_pb(e: zpb.OperationError) -> dict[str, str]:
    return {
        "code": _CODE_BY_NUMBER.get(int(e.code), "UNKNOWN"),
        "reason": e.reason,
        "message": e.message,
    }


def operation_to_pb(op: Operation) -> zpb.Operation:
    from neuronatlas.service.convert import model_to_pb

    meta = zpb.IndexOperationMetadata(
        model_id=op.model_id,
        state=state_to_pb(op.state),
        stage=op.stage,
        images_done=op.images_done,
        images_total=op.images_total,
        layers=op.layers,
        elapsed_seconds=op.elapsed_s,
        eta_seconds=op.eta_s,
        attempts=op.attempts,
        worker=op.worker,
        cancel_requested=op.cancel_requested,
    )
    for name, secs in (("create_time", op.created_at), ("update_time", op.updated_at)):
        ts = _timestamp(secs)
        if ts is not None:
            getattr(meta, name).CopyFrom(ts)
    out = zpb.Operation(name=op.name, metadata=meta, done=op.done)
    if op.state is JobState.SUCCEEDED and op.model is not None:
        out.response.CopyFrom(model_to_pb(op.model))
    elif op.state in (JobState.FAILED, JobState.CANCELLED):
        out.error.CopyFrom(error_to_pb(op.error or {"code": "UNKNOWN"}))
    return out


def operation_from_pb(op: zpb.Operation) -> Operation:
    from neuronatlas.service.convert import model_from_pb

    m = op.metadata
    return Operation(
        job_id=parse_operation_name(op.name),
        model_id=m.model_id,
        state=_STATE_FROM_PB.get(m.state, JobState.QUEUED),
        stage=m.stage,
        images_done=int(m.images_done),
        images_total=int(m.images_total),
        layers=list(m.layers),
        elapsed_s=float(m.elapsed_seconds),
        eta_s=float(m.eta_seconds),
        created_at=_seconds(m, "create_time"),
        updated_at=_seconds(m, "update_time"),
        attempts=int(m.attempts),
        worker=m.worker,
        cancel_requested=bool(m.cancel_requested),
        error=error_from_pb(op.error) if op.HasField("error") else {},
        model=model_from_pb(op.response) if op.HasField("response") else None,
    )


def index_request_from_pb(req: zpb.IndexModelRequest) -> dict[str, Any]:
    """An IndexModel request as the job's request dict (``indexer.worker.IndexRequest``)."""
    return {
        "model_id": req.model_id,
        "probe_set": req.probe_set,
        "source": source_from_pb(req.source) if req.HasField("source") else None,
        "replace": bool(req.replace),
        "vocabularies": dict(req.vocabularies),
        "layers": list(req.layers),
        "k": int(req.k) if req.k else 20,
        "options": struct_to_dict(req.options, "options") if req.HasField("options") else {},
    }


def index_request_to_pb(request: dict[str, Any], request_id: str = "") -> zpb.IndexModelRequest:
    out = zpb.IndexModelRequest(
        model_id=str(request.get("model_id", "")),
        replace=bool(request.get("replace", False)),
        probe_set=str(request.get("probe_set", "")),
        vocabularies={str(k): str(v) for k, v in dict(request.get("vocabularies") or {}).items()},
        layers=[str(x) for x in request.get("layers") or []],
        k=int(request.get("k", 0) or 0),
        request_id=request_id,
    )
    if request.get("source"):
        out.source.CopyFrom(source_to_pb(dict(request["source"])))
    if request.get("options"):
        out.options.update(json.loads(json.dumps(request["options"], default=str)))
    return out


def progress_from_pb(s: struct_pb2.Struct) -> dict[str, Any]:
    return struct_to_dict(s, "progress")


def progress_to_pb(progress: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(json.loads(json.dumps(progress, default=str)))
    return s


def job_to_pb(job: Job, lease_s: float) -> zpb.Job:
    request = struct_pb2.Struct()
    request.update(json.loads(json.dumps(job.request, default=str)))
    return zpb.Job(
        job_id=job.job_id,
        model_id=job.model_id,
        request=request,
        lease_seconds=float(lease_s),
        attempts=job.attempts,
    )


def job_from_pb(j: zpb.Job, now: float) -> Job:
    """A claimed job as the worker sees it (``lease_expires``: now + the lease)."""
    return Job(
        job_id=j.job_id,
        kind="index",
        model_id=j.model_id,
        request=struct_to_dict(j.request, "request"),
        seq=0,
        state=JobState.RUNNING,
        attempts=int(j.attempts),
        lease_expires=now + float(j.lease_seconds),
    )
