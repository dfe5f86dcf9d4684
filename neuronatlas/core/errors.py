"""Error types of NeuronAtlas.

Every failure the user can cause or fix is raised as one of these. They carry no gRPC
dependency, but each class names its status: ``code`` is the name of a gRPC status code (a
plain string, e.g. ``"NOT_FOUND"``) and ``reason`` the ``google.rpc.ErrorInfo`` reason that
identifies the class on the wire. ``neuronatlas.service.errors`` derives both directions of
the mapping from these attributes; a new class only has to set them.

Each class sets its own ``reason`` (unique); a class that left it out would travel as its
parent.
"""

from __future__ import annotations

from typing import ClassVar


class NeuronAtlasError(Exception):
    """Base class for all errors raised on purpose by NeuronAtlas."""

    #: gRPC status code name (``grpc.StatusCode[code]``)
    code: ClassVar[str] = "INTERNAL"
    #: ``google.rpc.ErrorInfo.reason``: identifies the class on the wire
    reason: ClassVar[str] = "INTERNAL"


class InvalidArgument(NeuronAtlasError, ValueError):
    """The caller passed something malformed (bad dimension, NaN, empty batch, bad name...).

    ``field`` names the offending argument so the service can report a field violation.
    """

    code = "INVALID_ARGUMENT"
    reason = "INVALID_ARGUMENT"

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class NotFound(NeuronAtlasError, LookupError):
    """A model, neuron, probe set or file that was asked for does not exist.

    ``resource_type`` / ``resource_name`` say which (e.g. "model", "resnet20"); the service
    reports them in a ``google.rpc.ResourceInfo``.
    """

    code = "NOT_FOUND"
    reason = "NOT_FOUND"

    def __init__(self, message: str, *, resource_type: str = "", resource_name: str = ""):
        super().__init__(message)
        self.resource_type = resource_type
        self.resource_name = resource_name


class AlreadyExists(NeuronAtlasError):
    """Something that must be unique is already there."""

    code = "ALREADY_EXISTS"
    reason = "ALREADY_EXISTS"


class FailedPrecondition(NeuronAtlasError):
    """The system is not in a state where the operation can run (e.g. model not indexed yet)."""

    code = "FAILED_PRECONDITION"
    reason = "FAILED_PRECONDITION"


class NotIndexed(FailedPrecondition):
    """The store is empty, or the model is registered but not (fully) indexed."""

    reason = "NOT_INDEXED"


class EmbedderMismatch(FailedPrecondition):
    """Vectors from another embedder (name, weights or dimension) than the store's."""

    reason = "EMBEDDER_MISMATCH"


class StoreError(NeuronAtlasError):
    """Base class for problems with the knowledge store itself."""

    code = "FAILED_PRECONDITION"
    reason = "STORE_ERROR"


class NotAStore(StoreError):
    """A directory exists but does not hold a NeuronAtlas store."""

    reason = "NOT_A_STORE"


class StoreCorrupted(StoreError):
    """A store's files exist but cannot be read back consistently."""

    code = "DATA_LOSS"
    reason = "STORE_CORRUPTED"


class StoreLocked(StoreError):
    """Another process holds the embedded store open."""

    code = "UNAVAILABLE"
    reason = "STORE_LOCKED"


class StoreUnavailable(StoreError):
    """The remote Qdrant server cannot be reached."""

    code = "UNAVAILABLE"
    reason = "STORE_UNAVAILABLE"


class StorageFull(StoreError):
    """Too little free disk space to write safely; nothing was written."""

    code = "RESOURCE_EXHAUSTED"
    reason = "STORAGE_FULL"


class WeightsUnavailable(NeuronAtlasError):
    """Model or embedder weights cannot be loaded (no network, missing file, wrong file)."""

    code = "FAILED_PRECONDITION"
    reason = "WEIGHTS_UNAVAILABLE"


class Unauthenticated(NeuronAtlasError):
    """No or an unknown credential."""

    code = "UNAUTHENTICATED"
    reason = "UNAUTHENTICATED"


class PermissionDenied(NeuronAtlasError):
    """A valid credential whose scope does not allow the operation."""

    code = "PERMISSION_DENIED"
    reason = "PERMISSION_DENIED"
