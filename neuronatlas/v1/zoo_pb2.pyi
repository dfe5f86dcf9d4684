import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from neuronatlas.v1 import neuronatlas_pb2 as _neuronatlas_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArtifactKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARTIFACT_KIND_UNSPECIFIED: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_WEIGHTS: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_TORCHSCRIPT: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_PROBE_ARCHIVE: _ClassVar[ArtifactKind]
    ARTIFACT_KIND_OTHER: _ClassVar[ArtifactKind]

class OperationState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_STATE_UNSPECIFIED: _ClassVar[OperationState]
    OPERATION_STATE_QUEUED: _ClassVar[OperationState]
    OPERATION_STATE_RUNNING: _ClassVar[OperationState]
    OPERATION_STATE_SUCCEEDED: _ClassVar[OperationState]
    OPERATION_STATE_FAILED: _ClassVar[OperationState]
    OPERATION_STATE_CANCELLED: _ClassVar[OperationState]

class JobReport(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_REPORT_UNSPECIFIED: _ClassVar[JobReport]
    JOB_REPORT_HEARTBEAT: _ClassVar[JobReport]
    JOB_REPORT_SUCCEEDED: _ClassVar[JobReport]
    JOB_REPORT_FAILED: _ClassVar[JobReport]
    JOB_REPORT_CANCELLED: _ClassVar[JobReport]
ARTIFACT_KIND_UNSPECIFIED: ArtifactKind
ARTIFACT_KIND_WEIGHTS: ArtifactKind
ARTIFACT_KIND_TORCHSCRIPT: ArtifactKind
ARTIFACT_KIND_PROBE_ARCHIVE: ArtifactKind
ARTIFACT_KIND_OTHER: ArtifactKind
OPERATION_STATE_UNSPECIFIED: OperationState
OPERATION_STATE_QUEUED: OperationState
OPERATION_STATE_RUNNING: OperationState
OPERATION_STATE_SUCCEEDED: OperationState
OPERATION_STATE_FAILED: OperationState
OPERATION_STATE_CANCELLED: OperationState
JOB_REPORT_UNSPECIFIED: JobReport
JOB_REPORT_HEARTBEAT: JobReport
JOB_REPORT_SUCCEEDED: JobReport
JOB_REPORT_FAILED: JobReport
JOB_REPORT_CANCELLED: JobReport

class RegisterModelRequest(_message.Message):
    __slots__ = ("model_id", "source", "display_name", "tags", "notes", "training_data", "replace", "request_id")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DATA_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    source: _struct_pb2.Struct
    display_name: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    notes: str
    training_data: str
    replace: bool
    request_id: str
    def __init__(self, model_id: _Optional[str] = ..., source: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., display_name: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., notes: _Optional[str] = ..., training_data: _Optional[str] = ..., replace: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class RegisterModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _neuronatlas_pb2.Model
    def __init__(self, model: _Optional[_Union[_neuronatlas_pb2.Model, _Mapping]] = ...) -> None: ...

class UpdateModelRequest(_message.Message):
    __slots__ = ("model", "update_mask")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    model: _neuronatlas_pb2.Model
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, model: _Optional[_Union[_neuronatlas_pb2.Model, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class UpdateModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: _neuronatlas_pb2.Model
    def __init__(self, model: _Optional[_Union[_neuronatlas_pb2.Model, _Mapping]] = ...) -> None: ...

class ArtifactHeader(_message.Message):
    __slots__ = ("sha256", "size", "name", "kind")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    name: str
    kind: ArtifactKind
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ..., name: _Optional[str] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ...) -> None: ...

class UploadArtifactRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: ArtifactHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[ArtifactHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("sha256", "size", "name", "kind", "ref")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    size: int
    name: str
    kind: ArtifactKind
    ref: str
    def __init__(self, sha256: _Optional[str] = ..., size: _Optional[int] = ..., name: _Optional[str] = ..., kind: _Optional[_Union[ArtifactKind, str]] = ..., ref: _Optional[str] = ...) -> None: ...

class UploadArtifactResponse(_message.Message):
    __slots__ = ("artifact",)
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    artifact: Artifact
    def __init__(self, artifact: _Optional[_Union[Artifact, _Mapping]] = ...) -> None: ...

class ProbeSet(_message.Message):
    __slots__ = ("name", "images", "classes", "sha256", "origin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    images: int
    classes: _containers.RepeatedScalarFieldContainer[str]
    sha256: str
    origin: str
    def __init__(self, name: _Optional[str] = ..., images: _Optional[int] = ..., classes: _Optional[_Iterable[str]] = ..., sha256: _Optional[str] = ..., origin: _Optional[str] = ...) -> None: ...

class RegisterProbeSetRequest(_message.Message):
    __slots__ = ("name", "folder", "artifact", "limit", "replace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FOLDER_FIELD_NUMBER: _ClassVar[int]
    ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    folder: str
    artifact: str
    limit: int
    replace: bool
    def __init__(self, name: _Optional[str] = ..., folder: _Optional[str] = ..., artifact: _Optional[str] = ..., limit: _Optional[int] = ..., replace: _Optional[bool] = ...) -> None: ...

class RegisterProbeSetResponse(_message.Message):
    __slots__ = ("probe_set",)
    PROBE_SET_FIELD_NUMBER: _ClassVar[int]
    probe_set: ProbeSet
    def __init__(self, probe_set: _Optional[_Union[ProbeSet, _Mapping]] = ...) -> None: ...

class ListProbeSetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProbeSetsResponse(_message.Message):
    __slots__ = ("probe_sets",)
    PROBE_SETS_FIELD_NUMBER: _ClassVar[int]
    probe_sets: _containers.RepeatedCompositeFieldContainer[ProbeSet]
    def __init__(self, probe_sets: _Optional[_Iterable[_Union[ProbeSet, _Mapping]]] = ...) -> None: ...

class IndexModelRequest(_message.Message):
    __slots__ = ("model_id", "source", "replace", "probe_set", "vocabularies", "layers", "k", "options", "request_id")
    class VocabulariesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    PROBE_SET_FIELD_NUMBER: _ClassVar[int]
    VOCABULARIES_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    source: _struct_pb2.Struct
    replace: bool
    probe_set: str
    vocabularies: _containers.ScalarMap[str, str]
    layers: _containers.RepeatedScalarFieldContainer[str]
    k: int
    options: _struct_pb2.Struct
    request_id: str
    def __init__(self, model_id: _Optional[str] = ..., source: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., replace: _Optional[bool] = ..., probe_set: _Optional[str] = ..., vocabularies: _Optional[_Mapping[str, str]] = ..., layers: _Optional[_Iterable[str]] = ..., k: _Optional[int] = ..., options: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class IndexOperationMetadata(_message.Message):
    __slots__ = ("model_id", "state", "stage", "images_done", "images_total", "layers", "elapsed_seconds", "eta_seconds", "create_time", "update_time", "attempts", "worker", "cancel_requested")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_DONE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    state: OperationState
    stage: str
    images_done: int
    images_total: int
    layers: _containers.RepeatedScalarFieldContainer[str]
    elapsed_seconds: float
    eta_seconds: float
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    attempts: int
    worker: str
    cancel_requested: bool
    def __init__(self, model_id: _Optional[str] = ..., state: _Optional[_Union[OperationState, str]] = ..., stage: _Optional[str] = ..., images_done: _Optional[int] = ..., images_total: _Optional[int] = ..., layers: _Optional[_Iterable[str]] = ..., elapsed_seconds: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., attempts: _Optional[int] = ..., worker: _Optional[str] = ..., cancel_requested: _Optional[bool] = ...) -> None: ...

class OperationError(_message.Message):
    __slots__ = ("code", "message", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    reason: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("name", "metadata", "done", "error", "response")
    NAME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    name: str
    metadata: IndexOperationMetadata
    done: bool
    error: OperationError
    response: _neuronatlas_pb2.Model
    def __init__(self, name: _Optional[str] = ..., metadata: _Optional[_Union[IndexOperationMetadata, _Mapping]] = ..., done: _Optional[bool] = ..., error: _Optional[_Union[OperationError, _Mapping]] = ..., response: _Optional[_Union[_neuronatlas_pb2.Model, _Mapping]] = ...) -> None: ...

class IndexModelResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: Operation
    def __init__(self, operation: _Optional[_Union[Operation, _Mapping]] = ...) -> None: ...

class GetOperationResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: Operation
    def __init__(self, operation: _Optional[_Union[Operation, _Mapping]] = ...) -> None: ...

class CancelOperationResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: Operation
    def __init__(self, operation: _Optional[_Union[Operation, _Mapping]] = ...) -> None: ...

class WaitOperationResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: Operation
    def __init__(self, operation: _Optional[_Union[Operation, _Mapping]] = ...) -> None: ...

class GetOperationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListOperationsRequest(_message.Message):
    __slots__ = ("model_id", "states", "page_size", "page_token")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    states: _containers.RepeatedScalarFieldContainer[OperationState]
    page_size: int
    page_token: str
    def __init__(self, model_id: _Optional[str] = ..., states: _Optional[_Iterable[_Union[OperationState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListOperationsResponse(_message.Message):
    __slots__ = ("operations", "next_page_token")
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    next_page_token: str
    def __init__(self, operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelOperationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class WaitOperationRequest(_message.Message):
    __slots__ = ("name", "timeout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    timeout: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetSampleImagesRequest(_message.Message):
    __slots__ = ("probe_set", "indices", "max_size")
    PROBE_SET_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    probe_set: str
    indices: _containers.RepeatedScalarFieldContainer[int]
    max_size: int
    def __init__(self, probe_set: _Optional[str] = ..., indices: _Optional[_Iterable[int]] = ..., max_size: _Optional[int] = ...) -> None: ...

class SampleImage(_message.Message):
    __slots__ = ("index", "sample_id", "label", "png", "width", "height")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    index: int
    sample_id: str
    label: str
    png: bytes
    width: int
    height: int
    def __init__(self, index: _Optional[int] = ..., sample_id: _Optional[str] = ..., label: _Optional[str] = ..., png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class GetSampleImagesResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[SampleImage]
    def __init__(self, images: _Optional[_Iterable[_Union[SampleImage, _Mapping]]] = ...) -> None: ...

class ClaimJobRequest(_message.Message):
    __slots__ = ("worker",)
    WORKER_FIELD_NUMBER: _ClassVar[int]
    worker: str
    def __init__(self, worker: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "model_id", "request", "lease_seconds", "attempts")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model_id: str
    request: _struct_pb2.Struct
    lease_seconds: float
    attempts: int
    def __init__(self, job_id: _Optional[str] = ..., model_id: _Optional[str] = ..., request: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., lease_seconds: _Optional[float] = ..., attempts: _Optional[int] = ...) -> None: ...

class ClaimJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: Job
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ...) -> None: ...

class ReportJobRequest(_message.Message):
    __slots__ = ("job_id", "worker", "report", "progress", "error")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    worker: str
    report: JobReport
    progress: _struct_pb2.Struct
    error: OperationError
    def __init__(self, job_id: _Optional[str] = ..., worker: _Optional[str] = ..., report: _Optional[_Union[JobReport, str]] = ..., progress: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., error: _Optional[_Union[OperationError, _Mapping]] = ...) -> None: ...

class ReportJobResponse(_message.Message):
    __slots__ = ("cancel_requested",)
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    cancel_requested: bool
    def __init__(self, cancel_requested: _Optional[bool] = ...) -> None: ...
