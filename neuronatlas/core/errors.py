"""Error types of NeuronAtlas.

Every failure the user can cause or fix is raised as one of these. They carry no gRPC
dependency; the service maps each class to a status code in one place
(``neuronatlas.service.errors``).
"""

from __future__ import annotations


class NeuronAtlasError(Exception):
    """Base class for all errors raised on purpose by NeuronAtlas."""


class InvalidArgument(NeuronAtlasError, ValueError):
    """The caller passed something malformed (bad dimension, NaN, empty batch, bad name...).

    ``field`` names the offending argument so the service can report a field violation.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class NotFound(NeuronAtlasError, LookupError):
    """A model, neuron, probe set or file that was asked for does not exist."""


class AlreadyExists(NeuronAtlasError):
    """Something that must be unique is already there."""


class FailedPrecondition(NeuronAtlasError):
    """The system is not in a state where the operation can run (e.g. model not indexed yet)."""


class NotIndexed(FailedPrecondition):
    """The store is empty, or the model is registered but not (fully) indexed."""


class EmbedderMismatch(FailedPrecondition):
    """Vectors from another embedder (name, weights or dimension) than the store's."""


class StoreError(NeuronAtlasError):
    """Base class for problems with the knowledge store itself."""


class NotAStore(StoreError):
    """A directory exists but does not hold a NeuronAtlas store."""


class StoreCorrupted(StoreError):
    """A store's files exist but cannot be read back consistently."""


class StoreLocked(StoreError):
    """Another process holds the embedded store open."""


class StoreUnavailable(StoreError):
    """The remote Qdrant server cannot be reached."""


class StorageFull(StoreError):
    """Too little free disk space to write safely; nothing was written."""


class WeightsUnavailable(NeuronAtlasError):
    """Model or embedder weights cannot be loaded (no network, missing file, wrong file)."""


class Unauthenticated(NeuronAtlasError):
    """No or an unknown credential."""


class PermissionDenied(NeuronAtlasError):
    """A valid credential whose scope does not allow the operation."""
