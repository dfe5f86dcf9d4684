"""``neuronatlas.v1.AdminService``: store administration over gRPC (scope ``admin``).

BackupStore streams the archive of ``neuronatlas.core.store.transfer.backup_stream``: a
consistent backup taken while the server keeps answering queries (it only reads the store).
:func:`download_backup` is the client side (``neuronatlas backup OUT --server HOST:PORT``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import grpc

from neuronatlas.core.errors import InvalidArgument
from neuronatlas.core.queries import Atlas
from neuronatlas.core.store import transfer
from neuronatlas.service.errors import from_rpc_error, to_rpc_status
from neuronatlas.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("neuronatlas.service")

ADMIN_SERVICE_NAME = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
DEFAULT_BACKUP_BATCH = 1024


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Implements ``neuronatlas.v1.AdminService``."""

    def __init__(self, atlas: Atlas):
        self.atlas = atlas

    def BackupStore(
        self, request: admin_pb2.BackupStoreRequest, context: grpc.ServicerContext
    ) -> Iterator[admin_pb2.BackupStoreResponse]:
        try:
            batch = int(request.batch_size) or DEFAULT_BACKUP_BATCH
            if not 1 <= batch <= transfer.MAX_BATCH:
                raise InvalidArgument(
                    f"batch_size must be 0..{transfer.MAX_BATCH}, not {request.batch_size}",
                    field="batch_size",
                )
            log.info("backup started")
            sent = 0
            for chunk in transfer.backup_stream(self.atlas.store, batch):
                if not context.is_active():
                    log.info("backup abandoned by the client after %d bytes", sent)
                    return
                sent += len(chunk)
                yield admin_pb2.BackupStoreResponse(data=chunk)
            log.info("backup sent: %d bytes", sent)
        except Exception as exc:
            if not context.is_active():
                raise
            context.abort_with_status(to_rpc_status(exc))


def download_backup(
    channel: grpc.Channel,
    out: str | os.PathLike[str],
    *,
    metadata: Any = (),
    batch_size: int = 0,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Call BackupStore on ``channel`` and write the archive to ``out`` (a temp file renamed
    when the archive is complete); returns its manifest."""
    stub = admin_pb2_grpc.AdminServiceStub(channel)

    def chunks() -> Iterator[bytes]:
        try:
            for response in stub.BackupStore(
                admin_pb2.BackupStoreRequest(batch_size=batch_size),
                metadata=metadata,
                timeout=timeout,
            ):
                yield response.data
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    return transfer.save_stream(chunks(), out)
