import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LabelMatch(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_MATCH_UNSPECIFIED: _ClassVar[LabelMatch]
    LABEL_MATCH_EXACT: _ClassVar[LabelMatch]
    LABEL_MATCH_PREFIX: _ClassVar[LabelMatch]

class ModelStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATUS_UNSPECIFIED: _ClassVar[ModelStatus]
    MODEL_STATUS_REGISTERED: _ClassVar[ModelStatus]
    MODEL_STATUS_INDEXING: _ClassVar[ModelStatus]
    MODEL_STATUS_INDEXED: _ClassVar[ModelStatus]
    MODEL_STATUS_FAILED: _ClassVar[ModelStatus]
LABEL_MATCH_UNSPECIFIED: LabelMatch
LABEL_MATCH_EXACT: LabelMatch
LABEL_MATCH_PREFIX: LabelMatch
MODEL_STATUS_UNSPECIFIED: ModelStatus
MODEL_STATUS_REGISTERED: ModelStatus
MODEL_STATUS_INDEXING: ModelStatus
MODEL_STATUS_INDEXED: ModelStatus
MODEL_STATUS_FAILED: ModelStatus

class NeuronRef(_message.Message):
    __slots__ = ("model_id", "layer", "unit")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    layer: str
    unit: int
    def __init__(self, model_id: _Optional[str] = ..., layer: _Optional[str] = ..., unit: _Optional[int] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class LabelList(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class TopSample(_message.Message):
    __slots__ = ("sample_id", "index", "activation")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    index: int
    activation: float
    def __init__(self, sample_id: _Optional[str] = ..., index: _Optional[int] = ..., activation: _Optional[float] = ...) -> None: ...

class QualityScores(_message.Message):
    __slots__ = ("clarity", "polysemanticity", "redundancy")
    CLARITY_FIELD_NUMBER: _ClassVar[int]
    POLYSEMANTICITY_FIELD_NUMBER: _ClassVar[int]
    REDUNDANCY_FIELD_NUMBER: _ClassVar[int]
    clarity: float
    polysemanticity: float
    redundancy: float
    def __init__(self, clarity: _Optional[float] = ..., polysemanticity: _Optional[float] = ..., redundancy: _Optional[float] = ...) -> None: ...

class NeuronHit(_message.Message):
    __slots__ = ("neuron", "key", "score", "layer_index", "depth", "top_labels", "quality")
    NEURON_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LAYER_INDEX_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    TOP_LABELS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    neuron: NeuronRef
    key: str
    score: float
    layer_index: int
    depth: float
    top_labels: _containers.RepeatedCompositeFieldContainer[Label]
    quality: QualityScores
    def __init__(self, neuron: _Optional[_Union[NeuronRef, _Mapping]] = ..., key: _Optional[str] = ..., score: _Optional[float] = ..., layer_index: _Optional[int] = ..., depth: _Optional[float] = ..., top_labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., quality: _Optional[_Union[QualityScores, _Mapping]] = ...) -> None: ...

class Neuron(_message.Message):
    __slots__ = ("neuron", "key", "layer_index", "depth", "labels", "label_set", "top_samples", "quality", "stats", "generation", "vector")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: LabelList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[LabelList, _Mapping]] = ...) -> None: ...
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NEURON_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LAYER_INDEX_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_SET_FIELD_NUMBER: _ClassVar[int]
    TOP_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    neuron: NeuronRef
    key: str
    layer_index: int
    depth: float
    labels: _containers.MessageMap[str, LabelList]
    label_set: _containers.RepeatedScalarFieldContainer[str]
    top_samples: _containers.RepeatedCompositeFieldContainer[TopSample]
    quality: QualityScores
    stats: _containers.ScalarMap[str, float]
    generation: int
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, neuron: _Optional[_Union[NeuronRef, _Mapping]] = ..., key: _Optional[str] = ..., layer_index: _Optional[int] = ..., depth: _Optional[float] = ..., labels: _Optional[_Mapping[str, LabelList]] = ..., label_set: _Optional[_Iterable[str]] = ..., top_samples: _Optional[_Iterable[_Union[TopSample, _Mapping]]] = ..., quality: _Optional[_Union[QualityScores, _Mapping]] = ..., stats: _Optional[_Mapping[str, float]] = ..., generation: _Optional[int] = ..., vector: _Optional[_Iterable[float]] = ...) -> None: ...

class NeuronFilter(_message.Message):
    __slots__ = ("model_ids", "layers", "depth_min", "depth_max", "min_clarity", "label")
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_MIN_FIELD_NUMBER: _ClassVar[int]
    DEPTH_MAX_FIELD_NUMBER: _ClassVar[int]
    MIN_CLARITY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    layers: _containers.RepeatedScalarFieldContainer[str]
    depth_min: float
    depth_max: float
    min_clarity: float
    label: str
    def __init__(self, model_ids: _Optional[_Iterable[str]] = ..., layers: _Optional[_Iterable[str]] = ..., depth_min: _Optional[float] = ..., depth_max: _Optional[float] = ..., min_clarity: _Optional[float] = ..., label: _Optional[str] = ...) -> None: ...

class SearchNeuronsRequest(_message.Message):
    __slots__ = ("text", "image", "neuron", "vector", "filter", "top_k", "per_model", "page_size", "page_token")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    NEURON_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    PER_MODEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: bytes
    neuron: NeuronRef
    vector: Vector
    filter: NeuronFilter
    top_k: int
    per_model: int
    page_size: int
    page_token: str
    def __init__(self, text: _Optional[str] = ..., image: _Optional[bytes] = ..., neuron: _Optional[_Union[NeuronRef, _Mapping]] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., filter: _Optional[_Union[NeuronFilter, _Mapping]] = ..., top_k: _Optional[int] = ..., per_model: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class SearchNeuronsResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[NeuronHit]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[NeuronHit, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetNeuronRequest(_message.Message):
    __slots__ = ("neuron", "include_vector")
    NEURON_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTOR_FIELD_NUMBER: _ClassVar[int]
    neuron: NeuronRef
    include_vector: bool
    def __init__(self, neuron: _Optional[_Union[NeuronRef, _Mapping]] = ..., include_vector: _Optional[bool] = ...) -> None: ...

class GetNeuronResponse(_message.Message):
    __slots__ = ("neuron",)
    NEURON_FIELD_NUMBER: _ClassVar[int]
    neuron: Neuron
    def __init__(self, neuron: _Optional[_Union[Neuron, _Mapping]] = ...) -> None: ...

class DescribeNeuronRequest(_message.Message):
    __slots__ = ("neuron", "labels", "top_n")
    NEURON_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    neuron: NeuronRef
    labels: _containers.RepeatedScalarFieldContainer[str]
    top_n: int
    def __init__(self, neuron: _Optional[_Union[NeuronRef, _Mapping]] = ..., labels: _Optional[_Iterable[str]] = ..., top_n: _Optional[int] = ...) -> None: ...

class DescribeNeuronResponse(_message.Message):
    __slots__ = ("neuron", "labels", "label_set")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: LabelList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[LabelList, _Mapping]] = ...) -> None: ...
    NEURON_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_SET_FIELD_NUMBER: _ClassVar[int]
    neuron: NeuronRef
    labels: _containers.MessageMap[str, LabelList]
    label_set: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, neuron: _Optional[_Union[NeuronRef, _Mapping]] = ..., labels: _Optional[_Mapping[str, LabelList]] = ..., label_set: _Optional[_Iterable[str]] = ...) -> None: ...

class FindNeuronsByLabelRequest(_message.Message):
    __slots__ = ("label", "match", "filter", "page_size", "page_token")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    label: str
    match: LabelMatch
    filter: NeuronFilter
    page_size: int
    page_token: str
    def __init__(self, label: _Optional[str] = ..., match: _Optional[_Union[LabelMatch, str]] = ..., filter: _Optional[_Union[NeuronFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class FindNeuronsByLabelResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[NeuronHit]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[NeuronHit, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Layer(_message.Message):
    __slots__ = ("name", "index", "depth", "neurons", "kind")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    NEURONS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    name: str
    index: int
    depth: float
    neurons: int
    kind: str
    def __init__(self, name: _Optional[str] = ..., index: _Optional[int] = ..., depth: _Optional[float] = ..., neurons: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("model_id", "display_name", "architecture", "source", "weights_sha256", "training_data", "layers", "embedder", "probe_set", "status", "status_reason", "generation", "create_time", "update_time", "index_time", "index_wall_seconds", "tags", "notes", "neuron_count")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DATA_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    PROBE_SET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    INDEX_TIME_FIELD_NUMBER: _ClassVar[int]
    INDEX_WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    NEURON_COUNT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    display_name: str
    architecture: str
    source: _struct_pb2.Struct
    weights_sha256: str
    training_data: str
    layers: _containers.RepeatedCompositeFieldContainer[Layer]
    embedder: str
    probe_set: str
    status: ModelStatus
    status_reason: str
    generation: int
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    index_time: _timestamp_pb2.Timestamp
    index_wall_seconds: float
    tags: _containers.RepeatedScalarFieldContainer[str]
    notes: str
    neuron_count: int
    def __init__(self, model_id: _Optional[str] = ..., display_name: _Optional[str] = ..., architecture: _Optional[str] = ..., source: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., weights_sha256: _Optional[str] = ..., training_data: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., embedder: _Optional[str] = ..., probe_set: _Optional[str] = ..., status: _Optional[_Union[ModelStatus, str]] = ..., status_reason: _Optional[str] = ..., generation: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., index_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., index_wall_seconds: _Optional[float] = ..., tags: _Optional[_Iterable[str]] = ..., notes: _Optional[str] = ..., neuron_count: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("model_id",)
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    def __init__(self, model_id: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("model_id", "deleted_neurons")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    DELETED_NEURONS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    deleted_neurons: int
    def __init__(self, model_id: _Optional[str] = ..., deleted_neurons: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelStats(_message.Message):
    __slots__ = ("model_id", "status", "neurons", "layers")
    class LayersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NEURONS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    status: ModelStatus
    neurons: int
    layers: _containers.ScalarMap[str, int]
    def __init__(self, model_id: _Optional[str] = ..., status: _Optional[_Union[ModelStatus, str]] = ..., neurons: _Optional[int] = ..., layers: _Optional[_Mapping[str, int]] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("total_neurons", "models", "store_size_bytes", "embedder", "embedder_weights", "embedding_dim", "backend")
    TOTAL_NEURONS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    STORE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    total_neurons: int
    models: _containers.RepeatedCompositeFieldContainer[ModelStats]
    store_size_bytes: int
    embedder: str
    embedder_weights: str
    embedding_dim: int
    backend: str
    def __init__(self, total_neurons: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelStats, _Mapping]]] = ..., store_size_bytes: _Optional[int] = ..., embedder: _Optional[str] = ..., embedder_weights: _Optional[str] = ..., embedding_dim: _Optional[int] = ..., backend: _Optional[str] = ...) -> None: ...
