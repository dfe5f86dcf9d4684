"""Each error class names its own gRPC status (``code``, ``reason``); the service derives both
directions of the mapping from them."""

from __future__ import annotations

import grpc
import pytest

from neuronatlas.core import errors as E
from neuronatlas.service import errors as S


class _Failed(grpc.RpcError):
    """A failed call as the client sees it."""

    def __init__(self, status: grpc.Status | None, code: grpc.StatusCode | None = None):
        self._status = status
        self._code = code if status is None else status.code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str:
        return self._status.details if self._status else "transport says no"

    def trailing_metadata(self):
        return self._status.trailing_metadata if self._status else ()


def test_every_class_names_a_status_and_a_unique_reason() -> None:
    classes = S.error_classes()
    assert E.StorageFull in classes and S.ServiceUnavailable in classes
    for cls in classes:
        assert cls.code in grpc.StatusCode.__members__, cls
    reasons = [cls.reason for cls in classes]
    assert len(reasons) == len(set(reasons))
    assert set(S.by_reason().values()) == set(classes)


def test_core_errors_import_no_grpc() -> None:
    import neuronatlas.core.errors as core_errors

    assert "grpc" not in vars(core_errors)


@pytest.mark.parametrize("cls", S.error_classes(), ids=lambda c: c.__name__)
def test_each_class_round_trips(cls: type[E.NeuronAtlasError]) -> None:
    exc = cls("went wrong", field="top_k") if issubclass(cls, E.InvalidArgument) else cls("oops")
    status = S.to_rpc_status(exc)
    assert status.code is grpc.StatusCode[cls.code]
    back = S.from_rpc_error(_Failed(status))
    if cls.code == "INTERNAL":  # kept vague on the wire
        assert type(back) is S.ServerError
        return
    assert type(back) is cls and str(exc) in str(back)
    if issubclass(cls, E.InvalidArgument):
        assert back.field == "top_k"


def test_storage_full_is_resource_exhausted() -> None:
    assert S.code_for(E.StorageFull("disk full")) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "STORAGE_FULL",
    )


@pytest.mark.parametrize(
    "code, cls",
    [
        (grpc.StatusCode.UNAVAILABLE, S.ServiceUnavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, S.DeadlineExceeded),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, S.MessageTooLarge),  # over the message size limit
        (grpc.StatusCode.INVALID_ARGUMENT, E.InvalidArgument),
        (grpc.StatusCode.FAILED_PRECONDITION, E.FailedPrecondition),
        (grpc.StatusCode.DATA_LOSS, E.StoreCorrupted),
        (grpc.StatusCode.UNKNOWN, S.ServerError),
        (grpc.StatusCode.CANCELLED, S.ServerError),
    ],
)
def test_a_bare_status_maps_by_its_code(code: grpc.StatusCode, cls: type) -> None:
    back = S.from_rpc_error(_Failed(None, code))
    assert type(back) is cls and code.name in str(back)


def test_a_reason_that_contradicts_the_code_is_not_trusted() -> None:
    status = S.make_status(grpc.StatusCode.NOT_FOUND, "gone", E.NotIndexed.reason)
    assert type(S.from_rpc_error(_Failed(status))) is E.NotFound
