"""Build, start and stop the gRPC server: the NeuronAtlas service plus gRPC health checking
and server reflection, optional TLS (and client certificates), bearer-token auth, message
size limits and graceful shutdown."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from neuronatlas.core.config import Home, HomeLike
from neuronatlas.core.errors import InvalidArgument
from neuronatlas.core.queries import Atlas
from neuronatlas.service.auth import AuthInterceptor, TokenSet
from neuronatlas.service.servicer import MAX_REQUEST_BYTES, NeuronAtlasServicer
from neuronatlas.service.wire import MalformedRequestInterceptor
from neuronatlas.v1 import neuronatlas_pb2 as pb
from neuronatlas.v1 import neuronatlas_pb2_grpc as pb_grpc

log = logging.getLogger("neuronatlas.service")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NeuronAtlasService"].full_name
# Transport limits: requests a little above the servicer's own limit still reach it (and get
# INVALID_ARGUMENT with a field violation); responses can hold 1000 hits with vectors.
MAX_RECEIVE_BYTES = 2 * MAX_REQUEST_BYTES
MAX_SEND_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key (PEM files); with ``client_ca`` clients must present a
    certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        try:
            key, cert = Path(self.key).read_bytes(), Path(self.cert).read_bytes()
            ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        except OSError as e:
            raise InvalidArgument(
                f"cannot read TLS file {e.filename}: {e.strerror}", field="tls"
            ) from None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )


class Server:
    """A running NeuronAtlas gRPC server. Use :func:`build_server`, then ``start()``."""

    def __init__(
        self,
        atlas: Atlas,
        address: str = "127.0.0.1:50051",
        *,
        tokens: TokenSet | None = None,
        tls: TlsConfig | None = None,
        max_workers: int = 16,
        close_atlas: bool = False,
        home: HomeLike | None = None,
        grace: float = 5.0,
    ):
        """``home``: where comparisons and audits read sketches and keep caches (sets the
        Atlas's home; default: the Atlas's own). ``grace``: seconds running calls get to finish
        when the server stops (SIGTERM / SIGINT, or ``stop()`` without an argument)."""
        self.atlas = atlas
        self.grace = float(grace)
        self.tokens = tokens or TokenSet()
        self._close_atlas = close_atlas
        self._stopped = threading.Event()
        # Outermost first: malformed request bytes get INVALID_ARGUMENT on every method.
        interceptors: list[grpc.ServerInterceptor] = [MalformedRequestInterceptor()]
        if self.tokens:
            interceptors.append(AuthInterceptor(self.tokens))
        self.grpc_server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=max_workers, thread_name_prefix="neuronatlas-rpc"
            ),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        if home is not None:  # where comparisons and audits read sketches and keep caches
            atlas.home = Home.of(home)
        pb_grpc.add_NeuronAtlasServiceServicer_to_server(
            NeuronAtlasServicer(atlas), self.grpc_server
        )
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc_server
        )
        if tls is not None:
            self.port = self.grpc_server.add_secure_port(address, tls.credentials())
        else:
            self.port = self.grpc_server.add_insecure_port(address)
        if not self.port:
            raise InvalidArgument(f"cannot listen on {address}", field="address")
        self.address = address.rsplit(":", 1)[0] + f":{self.port}"
        self.tls = tls is not None

    def start(self) -> Server:
        self.grpc_server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving %s on %s (tls=%s, auth=%s)", SERVICE_NAME, self.address, self.tls, self.tokens
        )
        return self

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: report NOT_SERVING, refuse new calls, let running calls finish
        for up to ``grace`` seconds (default: the server's ``grace``), then close the store if
        this server owns it."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(self.grace if grace is None else grace).wait()
        if self._close_atlas:
            self.atlas.close()
        log.info("stopped")

    def wait(self) -> None:
        """Block until the server stops; SIGTERM / SIGINT (main thread only) stop it gracefully."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(
                    sig, lambda *_: threading.Thread(target=self.stop, daemon=True).start()
                )
        self.grpc_server.wait_for_termination()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=1.0)


def build_server(atlas: Atlas, address: str = "127.0.0.1:50051", **kwargs: Any) -> Server:
    """A server for ``atlas`` bound to ``address`` (port 0 picks a free port), not started."""
    return Server(atlas, address, **kwargs)
