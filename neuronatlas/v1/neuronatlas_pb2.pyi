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

class LabelScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_SCOPE_UNSPECIFIED: _ClassVar[LabelScope]
    LABEL_SCOPE_TOP1: _ClassVar[LabelScope]
    LABEL_SCOPE_SET: _ClassVar[LabelScope]
    LABEL_SCOPE_TOP5: _ClassVar[LabelScope]

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
LABEL_SCOPE_UNSPECIFIED: LabelScope
LABEL_SCOPE_TOP1: LabelScope
LABEL_SCOPE_SET: LabelScope
LABEL_SCOPE_TOP5: LabelScope
LABEL_MATCH_UNSPECIFIED: LabelMatch
LABEL_MATCH_EXACT: LabelMatch
LABEL_MATCH_PREFIX: LabelMatch
MODEL_STATUS_UNSPECIFIED: ModelStatus
MODEL_STATUS_REGISTERED: ModelStatus
MODEL_STATUS_INDEXING: ModelStatus
MODEL_STATUS_INDEXED: ModelStatus
MODEL_STATUS_FAILED: ModelStatus

class NeuronRef(_message.Message):
    __slots__ = ("model_id", "layer", "unit", "kind")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    layer: str
    unit: int
    kind: str
    def __init__(self, model_id: _Optional[str] = ..., layer: _Optional[str] = ..., unit: _Optional[int] = ..., kind: _Optional[str] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("label", "score", "vocabulary")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    vocabulary: str
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ..., vocabulary: _Optional[str] = ...) -> None: ...

class LabelList(_message.Message):
    __slots__ = ("labels",)
    LABELS_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class TopSample(_message.Message):
    __slots__ = ("sample_id", "index", "activation", "thumbnail")
    SAMPLE_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    THUMBNAIL_FIELD_NUMBER: _ClassVar[int]
    sample_id: str
    index: int
    activation: float
    thumbnail: bytes
    def __init__(self, sample_id: _Optional[str] = ..., index: _Optional[int] = ..., activation: _Optional[float] = ..., thumbnail: _Optional[bytes] = ...) -> None: ...

class QualityScores(_message.Message):
    __slots__ = ("clarity", "polysemanticity", "redundancy", "polysemanticity_sl")
    CLARITY_FIELD_NUMBER: _ClassVar[int]
    POLYSEMANTICITY_FIELD_NUMBER: _ClassVar[int]
    REDUNDANCY_FIELD_NUMBER: _ClassVar[int]
    POLYSEMANTICITY_SL_FIELD_NUMBER: _ClassVar[int]
    clarity: float
    polysemanticity: float
    redundancy: float
    polysemanticity_sl: float
    def __init__(self, clarity: _Optional[float] = ..., polysemanticity: _Optional[float] = ..., redundancy: _Optional[float] = ..., polysemanticity_sl: _Optional[float] = ...) -> None: ...

class NeuronHit(_message.Message):
    __slots__ = ("neuron", "key", "score", "layer_index", "depth", "top_labels", "quality", "top_samples")
    NEURON_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LAYER_INDEX_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    TOP_LABELS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    TOP_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    neuron: NeuronRef
    key: str
    score: float
    layer_index: int
    depth: float
    top_labels: _containers.RepeatedCompositeFieldContainer[Label]
    quality: QualityScores
    top_samples: _containers.RepeatedCompositeFieldContainer[TopSample]
    def __init__(self, neuron: _Optional[_Union[NeuronRef, _Mapping]] = ..., key: _Optional[str] = ..., score: _Optional[float] = ..., layer_index: _Optional[int] = ..., depth: _Optional[float] = ..., top_labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ..., quality: _Optional[_Union[QualityScores, _Mapping]] = ..., top_samples: _Optional[_Iterable[_Union[TopSample, _Mapping]]] = ...) -> None: ...

class Neuron(_message.Message):
    __slots__ = ("neuron", "key", "layer_index", "depth", "labels", "label_set", "top_samples", "quality", "stats", "generation", "vector", "component", "top_classes")
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
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    TOP_CLASSES_FIELD_NUMBER: _ClassVar[int]
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
    component: _struct_pb2.Struct
    top_classes: _containers.RepeatedCompositeFieldContainer[ClassImportance]
    def __init__(self, neuron: _Optional[_Union[NeuronRef, _Mapping]] = ..., key: _Optional[str] = ..., layer_index: _Optional[int] = ..., depth: _Optional[float] = ..., labels: _Optional[_Mapping[str, LabelList]] = ..., label_set: _Optional[_Iterable[str]] = ..., top_samples: _Optional[_Iterable[_Union[TopSample, _Mapping]]] = ..., quality: _Optional[_Union[QualityScores, _Mapping]] = ..., stats: _Optional[_Mapping[str, float]] = ..., generation: _Optional[int] = ..., vector: _Optional[_Iterable[float]] = ..., component: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., top_classes: _Optional[_Iterable[_Union[ClassImportance, _Mapping]]] = ...) -> None: ...

class ClassImportance(_message.Message):
    __slots__ = ("class_name", "importance")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    importance: float
    def __init__(self, class_name: _Optional[str] = ..., importance: _Optional[float] = ...) -> None: ...

class NeuronFilter(_message.Message):
    __slots__ = ("model_ids", "layers", "depth_min", "depth_max", "min_clarity", "label", "label_scope", "kinds")
    MODEL_IDS_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_MIN_FIELD_NUMBER: _ClassVar[int]
    DEPTH_MAX_FIELD_NUMBER: _ClassVar[int]
    MIN_CLARITY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_SCOPE_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    model_ids: _containers.RepeatedScalarFieldContainer[str]
    layers: _containers.RepeatedScalarFieldContainer[str]
    depth_min: float
    depth_max: float
    min_clarity: float
    label: str
    label_scope: LabelScope
    kinds: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_ids: _Optional[_Iterable[str]] = ..., layers: _Optional[_Iterable[str]] = ..., depth_min: _Optional[float] = ..., depth_max: _Optional[float] = ..., min_clarity: _Optional[float] = ..., label: _Optional[str] = ..., label_scope: _Optional[_Union[LabelScope, str]] = ..., kinds: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchNeuronsRequest(_message.Message):
    __slots__ = ("text", "image", "neuron", "vector", "filter", "top_k", "per_model", "page_size", "page_token", "include_thumbnails")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    NEURON_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    PER_MODEL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    text: str
    image: bytes
    neuron: NeuronRef
    vector: Vector
    filter: NeuronFilter
    top_k: int
    per_model: int
    page_size: int
    page_token: str
    include_thumbnails: bool
    def __init__(self, text: _Optional[str] = ..., image: _Optional[bytes] = ..., neuron: _Optional[_Union[NeuronRef, _Mapping]] = ..., vector: _Optional[_Union[Vector, _Mapping]] = ..., filter: _Optional[_Union[NeuronFilter, _Mapping]] = ..., top_k: _Optional[int] = ..., per_model: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_thumbnails: _Optional[bool] = ...) -> None: ...

class SearchNeuronsResponse(_message.Message):
    __slots__ = ("results", "next_page_token")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[NeuronHit]
    next_page_token: str
    def __init__(self, results: _Optional[_Iterable[_Union[NeuronHit, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class BatchSearchNeuronsRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[SearchNeuronsRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[SearchNeuronsRequest, _Mapping]]] = ...) -> None: ...

class BatchSearchNeuronsResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[SearchNeuronsResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[SearchNeuronsResponse, _Mapping]]] = ...) -> None: ...

class GetNeuronRequest(_message.Message):
    __slots__ = ("neuron", "include_vector", "include_thumbnails")
    NEURON_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_VECTOR_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_THUMBNAILS_FIELD_NUMBER: _ClassVar[int]
    neuron: NeuronRef
    include_vector: bool
    include_thumbnails: bool
    def __init__(self, neuron: _Optional[_Union[NeuronRef, _Mapping]] = ..., include_vector: _Optional[bool] = ..., include_thumbnails: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("label", "match", "filter", "page_size", "page_token", "scope")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    label: str
    match: LabelMatch
    filter: NeuronFilter
    page_size: int
    page_token: str
    scope: LabelScope
    def __init__(self, label: _Optional[str] = ..., match: _Optional[_Union[LabelMatch, str]] = ..., filter: _Optional[_Union[NeuronFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., scope: _Optional[_Union[LabelScope, str]] = ...) -> None: ...

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
    __slots__ = ("model_id", "display_name", "architecture", "source", "weights_sha256", "training_data", "layers", "embedder", "probe_set", "status", "status_reason", "generation", "create_time", "update_time", "index_time", "index_wall_seconds", "tags", "notes", "neuron_count", "extra", "transform", "probe_accuracy")
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
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    TRANSFORM_FIELD_NUMBER: _ClassVar[int]
    PROBE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
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
    extra: _struct_pb2.Struct
    transform: InputTransform
    probe_accuracy: ProbeAccuracy
    def __init__(self, model_id: _Optional[str] = ..., display_name: _Optional[str] = ..., architecture: _Optional[str] = ..., source: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., weights_sha256: _Optional[str] = ..., training_data: _Optional[str] = ..., layers: _Optional[_Iterable[_Union[Layer, _Mapping]]] = ..., embedder: _Optional[str] = ..., probe_set: _Optional[str] = ..., status: _Optional[_Union[ModelStatus, str]] = ..., status_reason: _Optional[str] = ..., generation: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., index_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., index_wall_seconds: _Optional[float] = ..., tags: _Optional[_Iterable[str]] = ..., notes: _Optional[str] = ..., neuron_count: _Optional[int] = ..., extra: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., transform: _Optional[_Union[InputTransform, _Mapping]] = ..., probe_accuracy: _Optional[_Union[ProbeAccuracy, _Mapping]] = ...) -> None: ...

class InputTransform(_message.Message):
    __slots__ = ("resize", "crop", "mean", "std", "interpolation", "input_height", "input_width", "description")
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    CROP_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATION_FIELD_NUMBER: _ClassVar[int]
    INPUT_HEIGHT_FIELD_NUMBER: _ClassVar[int]
    INPUT_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    resize: _containers.RepeatedScalarFieldContainer[int]
    crop: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    interpolation: str
    input_height: int
    input_width: int
    description: str
    def __init__(self, resize: _Optional[_Iterable[int]] = ..., crop: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., interpolation: _Optional[str] = ..., input_height: _Optional[int] = ..., input_width: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class ProbeAccuracy(_message.Message):
    __slots__ = ("accuracy", "chance", "images", "correct", "classes", "mapping", "warning")
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    CHANCE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    accuracy: float
    chance: float
    images: int
    correct: int
    classes: int
    mapping: str
    warning: str
    def __init__(self, accuracy: _Optional[float] = ..., chance: _Optional[float] = ..., images: _Optional[int] = ..., correct: _Optional[int] = ..., classes: _Optional[int] = ..., mapping: _Optional[str] = ..., warning: _Optional[str] = ...) -> None: ...

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

class VerifyStoreRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelIntegrity(_message.Message):
    __slots__ = ("model_id", "status", "generation", "ok", "expected_neurons", "found_neurons", "expected_digest", "found_digest", "problems", "notes")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_NEURONS_FIELD_NUMBER: _ClassVar[int]
    FOUND_NEURONS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    FOUND_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    status: ModelStatus
    generation: int
    ok: bool
    expected_neurons: int
    found_neurons: int
    expected_digest: str
    found_digest: str
    problems: _containers.RepeatedScalarFieldContainer[str]
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_id: _Optional[str] = ..., status: _Optional[_Union[ModelStatus, str]] = ..., generation: _Optional[int] = ..., ok: _Optional[bool] = ..., expected_neurons: _Optional[int] = ..., found_neurons: _Optional[int] = ..., expected_digest: _Optional[str] = ..., found_digest: _Optional[str] = ..., problems: _Optional[_Iterable[str]] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

class VerifyStoreResponse(_message.Message):
    __slots__ = ("ok", "models", "problems", "notes", "points_scanned", "elapsed_seconds")
    OK_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    POINTS_SCANNED_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    models: _containers.RepeatedCompositeFieldContainer[ModelIntegrity]
    problems: _containers.RepeatedScalarFieldContainer[str]
    notes: _containers.RepeatedScalarFieldContainer[str]
    points_scanned: int
    elapsed_seconds: float
    def __init__(self, ok: _Optional[bool] = ..., models: _Optional[_Iterable[_Union[ModelIntegrity, _Mapping]]] = ..., problems: _Optional[_Iterable[str]] = ..., notes: _Optional[_Iterable[str]] = ..., points_scanned: _Optional[int] = ..., elapsed_seconds: _Optional[float] = ...) -> None: ...

class Matrix(_message.Message):
    __slots__ = ("rows", "cols", "values", "row_labels", "col_labels")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    ROW_LABELS_FIELD_NUMBER: _ClassVar[int]
    COL_LABELS_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    values: _containers.RepeatedScalarFieldContainer[float]
    row_labels: _containers.RepeatedScalarFieldContainer[str]
    col_labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ..., row_labels: _Optional[_Iterable[str]] = ..., col_labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreWithFloor(_message.Message):
    __slots__ = ("value", "noise_floor")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NOISE_FLOOR_FIELD_NUMBER: _ClassVar[int]
    value: float
    noise_floor: float
    def __init__(self, value: _Optional[float] = ..., noise_floor: _Optional[float] = ...) -> None: ...

class DepthAlignment(_message.Message):
    __slots__ = ("layers", "depth", "matched_depth", "rho", "p_value")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    MATCHED_DEPTH_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    layers: _containers.RepeatedScalarFieldContainer[str]
    depth: _containers.RepeatedScalarFieldContainer[float]
    matched_depth: _containers.RepeatedScalarFieldContainer[float]
    rho: ScoreWithFloor
    p_value: float
    def __init__(self, layers: _Optional[_Iterable[str]] = ..., depth: _Optional[_Iterable[float]] = ..., matched_depth: _Optional[_Iterable[float]] = ..., rho: _Optional[_Union[ScoreWithFloor, _Mapping]] = ..., p_value: _Optional[float] = ...) -> None: ...

class ConceptCount(_message.Message):
    __slots__ = ("label", "count_a", "count_b")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_A_FIELD_NUMBER: _ClassVar[int]
    COUNT_B_FIELD_NUMBER: _ClassVar[int]
    label: str
    count_a: int
    count_b: int
    def __init__(self, label: _Optional[str] = ..., count_a: _Optional[int] = ..., count_b: _Optional[int] = ...) -> None: ...

class MatchedPair(_message.Message):
    __slots__ = ("a", "b", "similarity", "a_label", "b_label")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    A_LABEL_FIELD_NUMBER: _ClassVar[int]
    B_LABEL_FIELD_NUMBER: _ClassVar[int]
    a: NeuronRef
    b: NeuronRef
    similarity: float
    a_label: str
    b_label: str
    def __init__(self, a: _Optional[_Union[NeuronRef, _Mapping]] = ..., b: _Optional[_Union[NeuronRef, _Mapping]] = ..., similarity: _Optional[float] = ..., a_label: _Optional[str] = ..., b_label: _Optional[str] = ...) -> None: ...

class ComparedModel(_message.Message):
    __slots__ = ("model_id", "generation", "layers", "layer_sizes", "neuron_count")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    LAYER_SIZES_FIELD_NUMBER: _ClassVar[int]
    NEURON_COUNT_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    generation: int
    layers: _containers.RepeatedScalarFieldContainer[str]
    layer_sizes: _containers.RepeatedScalarFieldContainer[int]
    neuron_count: int
    def __init__(self, model_id: _Optional[str] = ..., generation: _Optional[int] = ..., layers: _Optional[_Iterable[str]] = ..., layer_sizes: _Optional[_Iterable[int]] = ..., neuron_count: _Optional[int] = ...) -> None: ...

class CompareModelsRequest(_message.Message):
    __slots__ = ("model_a", "model_b", "layers", "tau", "semantic_only", "page_size", "page_token", "kind")
    MODEL_A_FIELD_NUMBER: _ClassVar[int]
    MODEL_B_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    TAU_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    model_a: str
    model_b: str
    layers: _containers.RepeatedScalarFieldContainer[str]
    tau: float
    semantic_only: bool
    page_size: int
    page_token: str
    kind: str
    def __init__(self, model_a: _Optional[str] = ..., model_b: _Optional[str] = ..., layers: _Optional[_Iterable[str]] = ..., tau: _Optional[float] = ..., semantic_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., kind: _Optional[str] = ...) -> None: ...

class CompareModelsResponse(_message.Message):
    __slots__ = ("model_a", "model_b", "layer_similarity", "layer_similarity_floor", "alignment", "alignment_b", "best_match", "matching", "matching_method", "coverage_a_to_b", "coverage_b_to_a", "tau", "floor_exact", "has_activation", "cka", "cka_floor", "cka_alignment", "cka_samples", "shared_concepts", "unique_concepts_a", "unique_concepts_b", "pairs", "total_pairs", "next_page_token", "cached", "cka_alignment_b", "kind")
    MODEL_A_FIELD_NUMBER: _ClassVar[int]
    MODEL_B_FIELD_NUMBER: _ClassVar[int]
    LAYER_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    LAYER_SIMILARITY_FLOOR_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENT_B_FIELD_NUMBER: _ClassVar[int]
    BEST_MATCH_FIELD_NUMBER: _ClassVar[int]
    MATCHING_FIELD_NUMBER: _ClassVar[int]
    MATCHING_METHOD_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_A_TO_B_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_B_TO_A_FIELD_NUMBER: _ClassVar[int]
    TAU_FIELD_NUMBER: _ClassVar[int]
    FLOOR_EXACT_FIELD_NUMBER: _ClassVar[int]
    HAS_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    CKA_FIELD_NUMBER: _ClassVar[int]
    CKA_FLOOR_FIELD_NUMBER: _ClassVar[int]
    CKA_ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    CKA_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SHARED_CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_CONCEPTS_A_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_CONCEPTS_B_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAIRS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    CKA_ALIGNMENT_B_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    model_a: ComparedModel
    model_b: ComparedModel
    layer_similarity: Matrix
    layer_similarity_floor: Matrix
    alignment: DepthAlignment
    alignment_b: DepthAlignment
    best_match: ScoreWithFloor
    matching: ScoreWithFloor
    matching_method: str
    coverage_a_to_b: ScoreWithFloor
    coverage_b_to_a: ScoreWithFloor
    tau: float
    floor_exact: bool
    has_activation: bool
    cka: Matrix
    cka_floor: Matrix
    cka_alignment: DepthAlignment
    cka_samples: int
    shared_concepts: _containers.RepeatedCompositeFieldContainer[ConceptCount]
    unique_concepts_a: _containers.RepeatedCompositeFieldContainer[ConceptCount]
    unique_concepts_b: _containers.RepeatedCompositeFieldContainer[ConceptCount]
    pairs: _containers.RepeatedCompositeFieldContainer[MatchedPair]
    total_pairs: int
    next_page_token: str
    cached: bool
    cka_alignment_b: DepthAlignment
    kind: str
    def __init__(self, model_a: _Optional[_Union[ComparedModel, _Mapping]] = ..., model_b: _Optional[_Union[ComparedModel, _Mapping]] = ..., layer_similarity: _Optional[_Union[Matrix, _Mapping]] = ..., layer_similarity_floor: _Optional[_Union[Matrix, _Mapping]] = ..., alignment: _Optional[_Union[DepthAlignment, _Mapping]] = ..., alignment_b: _Optional[_Union[DepthAlignment, _Mapping]] = ..., best_match: _Optional[_Union[ScoreWithFloor, _Mapping]] = ..., matching: _Optional[_Union[ScoreWithFloor, _Mapping]] = ..., matching_method: _Optional[str] = ..., coverage_a_to_b: _Optional[_Union[ScoreWithFloor, _Mapping]] = ..., coverage_b_to_a: _Optional[_Union[ScoreWithFloor, _Mapping]] = ..., tau: _Optional[float] = ..., floor_exact: _Optional[bool] = ..., has_activation: _Optional[bool] = ..., cka: _Optional[_Union[Matrix, _Mapping]] = ..., cka_floor: _Optional[_Union[Matrix, _Mapping]] = ..., cka_alignment: _Optional[_Union[DepthAlignment, _Mapping]] = ..., cka_samples: _Optional[int] = ..., shared_concepts: _Optional[_Iterable[_Union[ConceptCount, _Mapping]]] = ..., unique_concepts_a: _Optional[_Iterable[_Union[ConceptCount, _Mapping]]] = ..., unique_concepts_b: _Optional[_Iterable[_Union[ConceptCount, _Mapping]]] = ..., pairs: _Optional[_Iterable[_Union[MatchedPair, _Mapping]]] = ..., total_pairs: _Optional[int] = ..., next_page_token: _Optional[str] = ..., cached: _Optional[bool] = ..., cka_alignment_b: _Optional[_Union[DepthAlignment, _Mapping]] = ..., kind: _Optional[str] = ...) -> None: ...

class AuditModelRequest(_message.Message):
    __slots__ = ("model_id", "valid", "spurious", "threshold", "kind", "class_name")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    SPURIOUS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    valid: _containers.RepeatedScalarFieldContainer[str]
    spurious: _containers.RepeatedScalarFieldContainer[str]
    threshold: float
    kind: str
    class_name: str
    def __init__(self, model_id: _Optional[str] = ..., valid: _Optional[_Iterable[str]] = ..., spurious: _Optional[_Iterable[str]] = ..., threshold: _Optional[float] = ..., kind: _Optional[str] = ..., class_name: _Optional[str] = ...) -> None: ...

class ConceptAudit(_message.Message):
    __slots__ = ("concept", "kind", "threshold", "aligned_neurons", "share", "layer_share", "best_score", "class_share")
    CONCEPT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    ALIGNED_NEURONS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    LAYER_SHARE_FIELD_NUMBER: _ClassVar[int]
    BEST_SCORE_FIELD_NUMBER: _ClassVar[int]
    CLASS_SHARE_FIELD_NUMBER: _ClassVar[int]
    concept: str
    kind: str
    threshold: float
    aligned_neurons: int
    share: ScoreWithFloor
    layer_share: _containers.RepeatedScalarFieldContainer[float]
    best_score: float
    class_share: ScoreWithFloor
    def __init__(self, concept: _Optional[str] = ..., kind: _Optional[str] = ..., threshold: _Optional[float] = ..., aligned_neurons: _Optional[int] = ..., share: _Optional[_Union[ScoreWithFloor, _Mapping]] = ..., layer_share: _Optional[_Iterable[float]] = ..., best_score: _Optional[float] = ..., class_share: _Optional[_Union[ScoreWithFloor, _Mapping]] = ...) -> None: ...

class SpuriousNeuron(_message.Message):
    __slots__ = ("neuron", "concept", "score", "top_sample_ids", "importance")
    NEURON_FIELD_NUMBER: _ClassVar[int]
    CONCEPT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TOP_SAMPLE_IDS_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    neuron: NeuronRef
    concept: str
    score: float
    top_sample_ids: _containers.RepeatedScalarFieldContainer[str]
    importance: float
    def __init__(self, neuron: _Optional[_Union[NeuronRef, _Mapping]] = ..., concept: _Optional[str] = ..., score: _Optional[float] = ..., top_sample_ids: _Optional[_Iterable[str]] = ..., importance: _Optional[float] = ...) -> None: ...

class AuditModelResponse(_message.Message):
    __slots__ = ("model_id", "generation", "neuron_count", "layers", "layer_depths", "layer_sizes", "concepts", "valid_share", "spurious_share", "layer_valid_share", "layer_spurious_share", "spurious_neurons", "kind", "class_name", "class_valid_share", "class_spurious_share")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    NEURON_COUNT_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    LAYER_DEPTHS_FIELD_NUMBER: _ClassVar[int]
    LAYER_SIZES_FIELD_NUMBER: _ClassVar[int]
    CONCEPTS_FIELD_NUMBER: _ClassVar[int]
    VALID_SHARE_FIELD_NUMBER: _ClassVar[int]
    SPURIOUS_SHARE_FIELD_NUMBER: _ClassVar[int]
    LAYER_VALID_SHARE_FIELD_NUMBER: _ClassVar[int]
    LAYER_SPURIOUS_SHARE_FIELD_NUMBER: _ClassVar[int]
    SPURIOUS_NEURONS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    CLASS_VALID_SHARE_FIELD_NUMBER: _ClassVar[int]
    CLASS_SPURIOUS_SHARE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    generation: int
    neuron_count: int
    layers: _containers.RepeatedScalarFieldContainer[str]
    layer_depths: _containers.RepeatedScalarFieldContainer[float]
    layer_sizes: _containers.RepeatedScalarFieldContainer[int]
    concepts: _containers.RepeatedCompositeFieldContainer[ConceptAudit]
    valid_share: ScoreWithFloor
    spurious_share: ScoreWithFloor
    layer_valid_share: _containers.RepeatedScalarFieldContainer[float]
    layer_spurious_share: _containers.RepeatedScalarFieldContainer[float]
    spurious_neurons: _containers.RepeatedCompositeFieldContainer[SpuriousNeuron]
    kind: str
    class_name: str
    class_valid_share: ScoreWithFloor
    class_spurious_share: ScoreWithFloor
    def __init__(self, model_id: _Optional[str] = ..., generation: _Optional[int] = ..., neuron_count: _Optional[int] = ..., layers: _Optional[_Iterable[str]] = ..., layer_depths: _Optional[_Iterable[float]] = ..., layer_sizes: _Optional[_Iterable[int]] = ..., concepts: _Optional[_Iterable[_Union[ConceptAudit, _Mapping]]] = ..., valid_share: _Optional[_Union[ScoreWithFloor, _Mapping]] = ..., spurious_share: _Optional[_Union[ScoreWithFloor, _Mapping]] = ..., layer_valid_share: _Optional[_Iterable[float]] = ..., layer_spurious_share: _Optional[_Iterable[float]] = ..., spurious_neurons: _Optional[_Iterable[_Union[SpuriousNeuron, _Mapping]]] = ..., kind: _Optional[str] = ..., class_name: _Optional[str] = ..., class_valid_share: _Optional[_Union[ScoreWithFloor, _Mapping]] = ..., class_spurious_share: _Optional[_Union[ScoreWithFloor, _Mapping]] = ...) -> None: ...

class ExplainClassRequest(_message.Message):
    __slots__ = ("model_id", "class_name", "kinds", "top_n")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    class_name: str
    kinds: _containers.RepeatedScalarFieldContainer[str]
    top_n: int
    def __init__(self, model_id: _Optional[str] = ..., class_name: _Optional[str] = ..., kinds: _Optional[_Iterable[str]] = ..., top_n: _Optional[int] = ...) -> None: ...

class ExplainedComponent(_message.Message):
    __slots__ = ("component", "importance", "rank")
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    IMPORTANCE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    component: Neuron
    importance: float
    rank: int
    def __init__(self, component: _Optional[_Union[Neuron, _Mapping]] = ..., importance: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class ExplainClassResponse(_message.Message):
    __slots__ = ("model_id", "generation", "class_name", "method", "images", "classes", "components")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    generation: int
    class_name: str
    method: str
    images: int
    classes: _containers.RepeatedScalarFieldContainer[str]
    components: _containers.RepeatedCompositeFieldContainer[ExplainedComponent]
    def __init__(self, model_id: _Optional[str] = ..., generation: _Optional[int] = ..., class_name: _Optional[str] = ..., method: _Optional[str] = ..., images: _Optional[int] = ..., classes: _Optional[_Iterable[str]] = ..., components: _Optional[_Iterable[_Union[ExplainedComponent, _Mapping]]] = ...) -> None: ...
