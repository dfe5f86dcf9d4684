"""Build, start and stop the gRPC server: the NeuronAtlas service plus gRPC health checking
and server reflection, optional TLS (and client certificates), bearer-token auth, message
size limits and graceful shutdown."""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import socket
import ssl
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from neuronatlas.core.artifacts import DEFAULT_MAX_BYTES as DEFAULT_MAX_UPLOAD_BYTES
from neuronatlas.core.artifacts import ArtifactStore
from neuronatlas.core.config import Home, HomeLike
from neuronatlas.core.errors import InvalidArgument
from neuronatlas.core.jobs import DEFAULT_LEASE_S, JobQueue
from neuronatlas.core.queries import Atlas
from neuronatlas.core.validate import shown
from neuronatlas.service import bridge
from neuronatlas.service.admin import ADMIN_SERVICE_NAME, AdminServicer
from neuronatlas.service.auth import AuthInterceptor, TokenSet
from neuronatlas.service.metrics import CallInterceptor, Metrics
from neuronatlas.service.paging import PageTokens
from neuronatlas.service.servicer import MAX_REQUEST_BYTES, NeuronAtlasServicer
from neuronatlas.service.wire import MalformedRequestInterceptor, UnknownMethod
from neuronatlas.service.zoo import ZooContext, ZooServicer
from neuronatlas.v1 import admin_pb2_grpc, zoo_pb2, zoo_pb2_grpc
from neuronatlas.v1 import neuronatlas_pb2 as pb
from neuronatlas.v1 import neuronatlas_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from neuronatlas.indexer.worker import IndexPool

log = logging.getLogger("neuronatlas.service")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NeuronAtlasService"].full_name
ZOO_SERVICE_NAME = zoo_pb2.DESCRIPTOR.services_by_name["ZooService"].full_name
# Transport limits: requests a little above the servicer's own limit still reach it (and get
# INVALID_ARGUMENT with a field violation); responses can hold 1000 hits with vectors.
MAX_RECEIVE_BYTES = 2 * MAX_REQUEST_BYTES
MAX_SEND_BYTES = 64 * 1024 * 1024
POOL_STOP_S = 30.0  # how long stop() waits for the indexing threads after the RPCs


@dataclass(frozen=True)
class TlsConfig:
    """Server certificate and key (PEM files); with ``client_ca`` clients must present a
    certificate signed by it (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def check(self) -> None:
        """Refuse, up front and in one line, files gRPC would fail on later (after a wait, with
        "Failed to bind"): unreadable files, a certificate or key that is not PEM, an encrypted
        key, a key that does not belong to the certificate, a client CA that is not PEM."""
        for what, path in (
            ("certificate", self.cert),
            ("key", self.key),
            ("client CA", self.client_ca),
        ):
            if path is None:
                continue
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                raise InvalidArgument(
                    f"cannot read the TLS {what} {path}: {e.strerror}", field="tls"
                ) from None
            marker = b"PRIVATE KEY-----" if what == "key" else b"-----BEGIN CERTIFICATE-----"
            if marker not in data:
                kind = "private key" if what == "key" else "certificate"
                raise InvalidArgument(f"the TLS {what} {path} is not a PEM {kind}", field="tls")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            # the password callback keeps an encrypted key from prompting on the terminal
            ctx.load_cert_chain(self.cert, self.key, password=lambda: b"")
        except ssl.SSLError as e:
            if e.reason == "KEY_VALUES_MISMATCH":
                why = f"the TLS key {self.key} does not belong to the certificate {self.cert}"
            elif "PRIVATE_KEY" in str(e.reason) or "BAD_DECRYPT" in str(e.reason):
                why = f"the TLS key {self.key} is not a usable unencrypted PEM private key"
            else:
                why = (
                    f"the TLS certificate {self.cert} and key {self.key} are not a usable PEM "
                    f"pair ({e.reason or 'unreadable'})"
                )
            raise InvalidArgument(why, field="tls") from None
        except OSError as e:
            raise InvalidArgument(f"cannot read the TLS files: {e.strerror}", field="tls") from None
        if self.client_ca is not None:
            try:
                ctx.load_verify_locations(cafile=str(self.client_ca))
            except (ssl.SSLError, OSError):
                raise InvalidArgument(
                    f"the TLS client CA {self.client_ca} is not a usable PEM certificate bundle",
                    field="tls",
                ) from None

    def credentials(self) -> grpc.ServerCredentials:
        self.check()
        key, cert = Path(self.key).read_bytes(), Path(self.cert).read_bytes()
        ca = Path(self.client_ca).read_bytes() if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
        )


def check_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) with a port in 0..65535, or INVALID_ARGUMENT saying what
    is wrong (gRPC would wrap port 99999 round to 34463, and fail on the rest with a log line)."""
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidArgument(
            f"address {shown(address)} is not HOST:PORT with a port in 0-65535 "
            "(e.g. 127.0.0.1:50051, [::]:50051, 0.0.0.0:0 for any free port)",
            field="address",
        )
    return host, int(port_text)


def check_bindable(address: str) -> None:
    """Bind ``address`` once with a plain socket, to refuse a busy port, an unknown host or an
    address of another machine in one clear line (gRPC only says "Failed to bind")."""
    host, port = check_address(address)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        raise InvalidArgument(
            f"cannot listen on {shown(address)}: host {shown(host)} is not known", field="address"
        ) from None
    failures: list[OSError] = []
    for family, kind, proto, _, sockaddr in infos:  # gRPC binds every address a host names
        with socket.socket(family, kind, proto) as probe:
            # as gRPC's listener: a port left in TIME_WAIT by a stopped server is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as e:
                failures.append(e)
    if failures and (len(failures) == len(infos) or any(_in_use(f) for f in failures)):
        err = next((f for f in failures if _in_use(f)), failures[0])
        if _in_use(err):
            why = f"port {port} is already in use (stop the other server or pick another port)"
        elif err.errno == errno.EADDRNOTAVAIL:
            why = f"{host} is not an address of this machine"
        elif err.errno == errno.EACCES:
            why = f"port {port} needs privileges (use a port above 1023)"
        else:
            why = err.strerror or "bind failed"
        raise InvalidArgument(f"cannot listen on {shown(address)}: {why}", field="address")


def _in_use(e: OSError) -> bool:
    return e.errno == errno.EADDRINUSE


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
        page_token_key: str | None = None,
        zoo: bool = True,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        allow_python_sources: bool = False,
        index_workers: int = 0,
        lease_s: float = DEFAULT_LEASE_S,
        heartbeat_s: float = 2.0,
        index_device: str = "cpu",
        metrics_port: int = 0,
        metrics_host: str | None = None,
    ):
        """``home``: where comparisons and audits read sketches and keep caches (sets the
        Atlas's home; default: the Atlas's own). ``grace``: seconds running calls get to finish
        when the server stops (SIGTERM / SIGINT, or ``stop()`` without an argument).
        ``page_token_key``: secret the page tokens are signed with (else
        ``NEURONATLAS_PAGE_TOKEN_KEY``, else a key kept in the home, else one for this process;
        see ``paging.py``). ``zoo``: also serve ``neuronatlas.v1.ZooService`` (needs a home:
        probe sets and uploads live there) with uploads up to ``max_upload_bytes`` and, with
        ``allow_python_sources``, RegisterModel of python factory sources.

        ``index_workers``: indexing threads that run the IndexModel operations of the zoo's
        job queue (kept in the store's catalogue; ``lease_s``: seconds a job's lease lasts
        without a heartbeat, sent every ``heartbeat_s``). Over the embedded store the server
        is the store's only writer: its threads are ``local:0..N-1`` and on start it gives
        back every lease, so a job that was running when the server died resumes at once.
        Over a remote store (shared with replicas and ``neuronatlas worker`` processes) the
        threads are named by host and pid and leases of a dead server expire. ``stop()``
        interrupts the running jobs between batches; they stay resumable.

        ``metrics_port``: serve Prometheus metrics on ``http://<metrics_host>:<port>/metrics``
        (0: off; ``metrics_host`` defaults to the host of ``address``; see ``metrics.py``)."""
        # Refused up front, in one line: a bad address, a busy port, TLS files gRPC cannot use.
        if not address.startswith(("unix:", "unix-abstract:")):
            check_bindable(address)
        self.metrics_host = metrics_host or _metrics_host(address)
        if metrics_port:
            check_bindable(f"[{self.metrics_host}]:{int(metrics_port)}")
        credentials = tls.credentials() if tls is not None else None
        self.atlas = atlas
        self.grace = float(grace)
        self.tokens = tokens or TokenSet()
        self._close_atlas = close_atlas
        self._stopped = threading.Event()  # stop() was called
        self._terminated = threading.Event()  # and has finished
        self.metrics_port = int(metrics_port)
        self.metrics = (
            Metrics(atlas, jobs=getattr(atlas.store, "all_jobs", None)) if metrics_port else None
        )
        # Outermost first: every call gets a request id, an access-log line and its metrics;
        # malformed request bytes get INVALID_ARGUMENT on every method.
        interceptors: list[grpc.ServerInterceptor] = [
            CallInterceptor(self.metrics),
            MalformedRequestInterceptor(),
        ]
        if self.tokens:
            interceptors.append(AuthInterceptor(self.tokens))
        # Handlers are synchronous code served by a grpc.aio server (bridge.py): quick calls
        # inline on the event loop, the rest on this pool.
        self._pool = futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="neuronatlas-rpc"
        )
        self._lane = futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="neuronatlas-batch"
        )
        policy, lanes = inline_policy(atlas), batch_lanes(atlas, self._lane)
        self.grpc_server: aio.Server = bridge.on_loop(
            lambda: aio.server(
                interceptors=[bridge.Bridge(interceptors, self._pool, policy, lanes)],
                options=[
                    ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                    ("grpc.max_send_message_length", MAX_SEND_BYTES),
                    ("grpc.so_reuseport", 0),
                ],
            )
        )
        if home is not None:  # where comparisons and audits read sketches and keep caches
            atlas.home = Home.of(home)
        self.page_tokens = PageTokens.load(page_token_key, atlas.home)
        pb_grpc.add_NeuronAtlasServiceServicer_to_server(
            NeuronAtlasServicer(atlas, self.page_tokens), self.grpc_server
        )
        services = [SERVICE_NAME]
        self.zoo: ZooContext | None = None
        if zoo and atlas.home is not None:
            self.zoo = ZooContext(
                atlas=atlas,
                home=atlas.home,
                queue=JobQueue(atlas.store, lease_s=lease_s),
                artifacts=ArtifactStore(atlas.home.artifacts, max_upload_bytes),
                pages=self.page_tokens,
                allow_python_sources=allow_python_sources,
            )
            zoo_pb2_grpc.add_ZooServiceServicer_to_server(ZooServicer(self.zoo), self.grpc_server)
            services.append(ZOO_SERVICE_NAME)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(atlas), self.grpc_server)
        services.append(ADMIN_SERVICE_NAME)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc_server)
        # the synchronous reflection servicer, bridged like ours (enable_server_reflection
        # would pick the asynchronous one for an aio server)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.ReflectionServicer(
                (*services, health.SERVICE_NAME, reflection.SERVICE_NAME)
            ),
            self.grpc_server,
        )
        self.services = services
        self.pool: IndexPool | None = None
        if index_workers > 0 and self.zoo is not None:
            from neuronatlas.indexer.worker import IndexPool

            if atlas.store.exclusive:
                names = [f"local:{i}" for i in range(index_workers)]
            else:
                names = [f"{socket.gethostname()}:{os.getpid()}:{i}" for i in range(index_workers)]
            self.pool = IndexPool(
                self.zoo.queue,
                atlas.store,
                atlas.embedder,
                self.zoo.home,
                names,
                device=index_device,
                heartbeat_s=heartbeat_s,
            )
        self.grpc_server.add_generic_rpc_handlers((UnknownMethod(),))  # last: any other path
        try:
            if credentials is not None:
                self.port = self.grpc_server.add_secure_port(address, credentials)
            else:
                self.port = self.grpc_server.add_insecure_port(address)
        except RuntimeError:
            self.port = 0
        if not self.port:
            raise InvalidArgument(f"cannot listen on {shown(address)}", field="address")
        self.address = address.rsplit(":", 1)[0] + f":{self.port}"
        self.tls = tls is not None

    def start(self) -> Server:
        # Everything alive now (modules, the CLIP model, the opened store) lives as long as the
        # server: moved out of the collector's sight, a full collection while serving scans
        # only what calls create (0.24 s a full collection with a CLIP model loaded, 6 ms
        # after the freeze; bench/results/grpc.md).
        gc.collect()
        gc.freeze()
        bridge.run(self.grpc_server.start())
        if self.metrics is not None:
            self.metrics_port = self.metrics.serve(self.metrics_host, self.metrics_port)
            log.info("metrics on http://%s:%d/metrics", self.metrics_host, self.metrics_port)
        if self.pool is not None and self.zoo is not None:
            if self.atlas.store.exclusive:  # the only runner: what was running resumes now
                for job in self.zoo.queue.release_all():
                    log.info("resuming operations/%s (%s)", job.job_id, job.model_id)
            self.pool.start()
        for name in ("", *self.services):
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
        if self.pool is not None:
            self.pool.interrupt()  # running jobs stop at their next batch, resumable
        bridge.run(self.grpc_server.stop(self.grace if grace is None else grace))
        self._pool.shutdown(wait=False, cancel_futures=True)  # calls past the grace: dropped
        self._lane.shutdown(wait=False, cancel_futures=True)
        if self.pool is not None and not self.pool.join(POOL_STOP_S):
            log.warning("an indexing thread did not stop within %.0f s", POOL_STOP_S)
        if self.metrics is not None:
            self.metrics.close()
        if self._close_atlas:
            self.atlas.close()
        self._terminated.set()
        log.info("stopped")

    def wait(self) -> None:
        """Block until the server stops; SIGTERM / SIGINT (main thread only) stop it gracefully."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(
                    sig, lambda *_: threading.Thread(target=self.stop, daemon=True).start()
                )
        self._terminated.wait()

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(grace=1.0)


def inline_policy(atlas: Atlas) -> bridge.InlinePolicy:
    """The calls served inline on the event loop: those that take well under a millisecond
    and never wait, i.e. searches of the embedded store by a vector or a stored neuron (not
    per model: that is one search per model; no thumbnails: those read files), neuron and
    model lookups and health checks. Over a remote store every call waits on the network, so
    all of them go to the pool."""
    if not atlas.store.exclusive:
        return {}

    def quick_search(r: pb.SearchNeuronsRequest) -> bool:
        return (
            r.WhichOneof("query") in ("vector", "neuron")
            and r.per_model == 0
            and not r.include_thumbnails
        )

    service = f"/{SERVICE_NAME}/"
    return {
        service + "SearchNeurons": quick_search,
        service + "GetNeuron": lambda r: not r.include_thumbnails,
        service + "GetModel": lambda r: True,
        f"/{health.SERVICE_NAME}/Check": lambda r: True,
    }


def batch_lanes(atlas: Atlas, lane: futures.Executor) -> bridge.Lanes:
    """BatchSearchNeurons calls whose searches are all quick (``inline_policy``) run on
    ``lane``, one thread: one batch is tens of quick searches back to back, too long to hold
    the event loop, and batches run side by side by the pool's threads only contend for the
    GIL (1M neurons, 32 clients: 1.86 ms of server CPU a search on the pool, 1.10 on one
    thread; bench/results/grpc.md). Over a remote store every search waits on the network, so
    batches go to the pool like every call."""
    quick = inline_policy(atlas).get(f"/{SERVICE_NAME}/SearchNeurons")
    if quick is None:
        return {}
    return {
        f"/{SERVICE_NAME}/BatchSearchNeurons": (
            lane,
            lambda r: all(quick(x) for x in r.requests),
        )
    }


def _metrics_host(address: str) -> str:
    """The host the metrics endpoint listens on: that of the gRPC address (loopback for a
    unix socket)."""
    if address.startswith(("unix:", "unix-abstract:")):
        return "127.0.0.1"
    host = address.rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def build_server(atlas: Atlas, address: str = "127.0.0.1:50051", **kwargs: Any) -> Server:
    """A server for ``atlas`` bound to ``address`` (port 0 picks a free port), not started."""
    return Server(atlas, address, **kwargs)
