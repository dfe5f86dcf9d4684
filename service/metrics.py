"""Prometheus metrics of the service, and the interceptor every call goes through.

``serve --metrics-port N`` (setting ``metrics_port``; 0 = off) serves ``/metrics`` over HTTP
on the host of ``--address``. One :class:`Metrics` per server, on its own registry:

=============================================  ==============================================
``neuronatlas_grpc_server_handled_total``       calls by ``grpc_service``, ``grpc_method``,
                                                ``grpc_code`` (auth refusals and malformed
                                                requests included; an unknown path counts as
                                                service and method ``unknown``)
``neuronatlas_grpc_server_handling_seconds``    latency histogram by service and method
``neuronatlas_grpc_server_in_flight``           calls running now
``neuronatlas_embedder_calls_total``            calls into the embedder by ``kind`` (text,
                                                image); ``neuronatlas_embedder_inputs_total``
                                                the texts / images they carried
``neuronatlas_cache_hits_total`` / ``_misses``  the query-text embedding cache
                                                (``cache="text_embeddings"``), and
                                                ``neuronatlas_cache_entries`` / ``_capacity``
``neuronatlas_store_model_points``              points of each model's live generation
                                                (``model_id``, ``status``), from the catalogue
                                                (cached ``store_ttl`` seconds, 15 by default)
``neuronatlas_store_models``                    catalogue entries by ``status``
``neuronatlas_store_points``                    points in the store, every generation
``neuronatlas_store_size_bytes``                disk footprint (embedded store; 0 remote)
``neuronatlas_store_up``                        1 when the last catalogue read worked
``neuronatlas_jobs``                            jobs by ``state`` (``queued``: the queue depth)
``neuronatlas_job_duration_seconds``            run time of finished jobs (``kind``, ``state``)
``neuronatlas_job_wait_seconds``                time started jobs waited in the queue
``neuronatlas_build_info``                      ``version``
=============================================  ==============================================

The job metrics read the job records (``all_jobs()``: the store's job table, or whatever
callable the server passes) at scrape time, cached like the store's.

:class:`CallInterceptor` (outermost) gives every call its request id (see ``logs.py``),
returns it as ``x-request-id`` in the response's initial metadata, writes one access-log line
per call (health checks at DEBUG), opens an OpenTelemetry span when that package is installed,
and counts the call when metrics are on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.embedder.text_cache import TextCache
from neuronatlas.core.queries import Atlas
from neuronatlas.service import logs

log = logging.getLogger("neuronatlas.service")
access_log = logging.getLogger("neuronatlas.access")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
QUIET_SERVICES = ("grpc.health.v1.Health",)  # probes: access log at DEBUG


# -- method names ---------------------------------------------------------------------------------
def _known_methods() -> dict[str, frozenset[str]]:
    """``{full service name: method names}`` of every service this server may answer."""
    from grpc_health.v1 import health_pb2
    from grpc_reflection.v1alpha import reflection_pb2

    from neuronatlas.v1 import admin_pb2, neuronatlas_pb2, zoo_pb2

    out: dict[str, frozenset[str]] = {}
    for module in (neuronatlas_pb2, zoo_pb2, admin_pb2, health_pb2, reflection_pb2):
        for svc in module.DESCRIPTOR.services_by_name.values():
            out[svc.full_name] = frozenset(svc.methods_by_name)
    out["grpc.reflection.v1.ServerReflection"] = frozenset({"ServerReflectionInfo"})
    return out


_KNOWN: dict[str, frozenset[str]] | None = None


def method_labels(path: str) -> tuple[str, str]:
    """``(service, method)`` of a call path; ``("unknown", "unknown")`` for a path that is no
    method of ours (a caller must not be able to create label values)."""
    global _KNOWN
    if _KNOWN is None:
        _KNOWN = _known_methods()
    service, _, method = str(path).strip("/").partition("/")
    if method in _KNOWN.get(service, frozenset()):
        return service, method
    return "unknown", "unknown"


# -- collectors -----------------------------------------------------------------------------------
class _Cached:
    """The families a slow ``compute`` returns, recomputed at most every ``ttl`` seconds."""

    def __init__(self, compute: Callable[[], list[Metric]], ttl: float):
        self._compute, self.ttl = compute, float(ttl)
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._families: list[Metric] = []

    def get(self) -> list[Metric]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                self._families = self._compute()
                self._at = time.monotonic()
            return self._families


class StoreCollector(Collector):
    """Catalogue-derived gauges: points per model, models per status, store size."""

    def __init__(self, atlas: Atlas, ttl: float = 15.0):
        self.atlas = atlas
        self._cache = _Cached(self._read, ttl)

    def collect(self) -> Iterable[Metric]:
        return self._cache.get()

    def _read(self) -> list[Metric]:
        up = GaugeMetricFamily("neuronatlas_store_up", "1 when the last catalogue read worked.")
        points = GaugeMetricFamily(
            "neuronatlas_store_model_points",
            "Points (neurons and components) of each model's live generation.",
            labels=["model_id", "status"],
        )
        models = GaugeMetricFamily(
            "neuronatlas_store_models", "Catalogue entries by status.", labels=["status"]
        )
        total = GaugeMetricFamily(
            "neuronatlas_store_points", "Points in the store, every generation and kind."
        )
        size = GaugeMetricFamily(
            "neuronatlas_store_size_bytes", "Disk footprint of the store (0: not known, remote)."
        )
        store = self.atlas.store
        try:
            entries = store.list_models()
            by_status: dict[str, int] = {}
            for m in entries:
                status = m.status.value
                by_status[status] = by_status.get(status, 0) + 1
                n = store.count(m.model_id, m.generation) if status == "indexed" else 0
                points.add_metric([m.model_id, status], n)
            for status, n in sorted(by_status.items()):
                models.add_metric([status], n)
            total.add_metric([], store.count())
            size.add_metric([], store.size_bytes())
            up.add_metric([], 1)
        except Exception as e:  # noqa: BLE001 - a scrape must never fail
            log.warning("metrics: reading the catalogue failed: %s", e)
            up.add_metric([], 0)
            return [up]
        return [up, points, models, total, size]


class CacheCollector(Collector):
    """The query-text embedding cache's counters (the embedder's own cache when it has one,
    else the Atlas's), read at scrape time without loading the embedder."""

    def __init__(self, atlas: Atlas):
        self.atlas = atlas

    def _cache(self) -> TextCache | None:
        emb = self.atlas.__dict__.get("_embedder")  # loaded or not: never load it for a scrape
        own = getattr(emb, "text_cache", None)
        if isinstance(own, TextCache):
            return own
        fallback = self.atlas.__dict__.get("_text_cache")
        return fallback if isinstance(fallback, TextCache) else None

    def collect(self) -> Iterable[Metric]:
        cache = self._cache()
        info = cache.info() if cache is not None else None
        label = ["text_embeddings"]
        hits = CounterMetricFamily(
            "neuronatlas_cache_hits", "Lookups answered from a cache.", labels=["cache"]
        )
        misses = CounterMetricFamily(
            "neuronatlas_cache_misses", "Lookups a cache could not answer.", labels=["cache"]
        )
        entries = GaugeMetricFamily(
            "neuronatlas_cache_entries", "Entries in a cache.", labels=["cache"]
        )
        capacity = GaugeMetricFamily(
            "neuronatlas_cache_capacity", "Most entries a cache keeps.", labels=["cache"]
        )
        if info is not None:
            hits.add_metric(label, info["hits"])
            misses.add_metric(label, info["misses"])
            entries.add_metric(label, info["size"])
            capacity.add_metric(label, info["maxsize"])
        return [hits, misses, entries, capacity]


def _histogram(
    name: str, doc: str, labels: list[str], samples: dict[tuple[str, ...], list[float]]
) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for key, values in sorted(samples.items()):
        buckets = [(str(float(b)), sum(1 for v in values if v <= b)) for b in JOB_BUCKETS]
        buckets.append(("+Inf", len(values)))
        fam.add_metric(list(key), buckets, sum_value=sum(values))
    return fam


class JobCollector(Collector):
    """Queue depth and job durations from the job records."""

    def __init__(self, jobs: Callable[[], Iterable[dict[str, Any]]], ttl: float = 15.0):
        self.jobs = jobs
        self._cache = _Cached(self._read, ttl)

    def collect(self) -> Iterable[Metric]:
        return self._cache.get()

    def _read(self) -> list[Metric]:
        try:
            records = [dict(r) for r in self.jobs()]
        except Exception as e:  # noqa: BLE001 - a scrape must never fail
            log.warning("metrics: reading the job records failed: %s", e)
            return []
        by_state = dict.fromkeys(JOB_STATES, 0)
        runs: dict[tuple[str, ...], list[float]] = {}
        waits: dict[tuple[str, ...], list[float]] = {}
        for r in records:
            state = str(r.get("state", ""))
            by_state[state] = by_state.get(state, 0) + 1
            kind = str(r.get("kind", ""))
            started, finished = float(r.get("started_at") or 0), float(r.get("finished_at") or 0)
            created = float(r.get("created_at") or 0)
            if started and finished and state in ("succeeded", "failed", "cancelled"):
                runs.setdefault((kind, state), []).append(max(0.0, finished - started))
            if started and created:
                waits.setdefault((kind,), []).append(max(0.0, started - created))
        jobs = GaugeMetricFamily(
            "neuronatlas_jobs", "Jobs by state (queued: the queue depth).", labels=["state"]
        )
        for state, n in sorted(by_state.items()):
            jobs.add_metric([state], n)
        return [
            jobs,
            _histogram(
                "neuronatlas_job_duration_seconds",
                "Run time of finished jobs (start to end).",
                ["kind", "state"],
                runs,
            ),
            _histogram(
                "neuronatlas_job_wait_seconds",
                "Time started jobs waited in the queue.",
                ["kind"],
                waits,
            ),
        ]


# -- the embedder ---------------------------------------------------------------------------------
class CountingEmbedder(Embedder):
    """An embedder that counts its calls; everything else is the wrapped embedder's."""

    def __init__(self, inner: Embedder, metrics: Metrics):
        self._inner, self._metrics = inner, metrics
        self.info = inner.info
        self.preprocess = inner.preprocess

    def __getattr__(self, name: str) -> Any:  # text_cache, cache_info, device ...
        inner = self.__dict__.get("_inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    def _count(self, kind: str, inputs: Any) -> None:
        try:
            n = len(inputs)
        except TypeError:
            n = 1
        self._metrics.embedder_calls.labels(kind).inc()
        self._metrics.embedder_inputs.labels(kind).inc(n)

    def encode_text(self, texts: Any, *args: Any, **kwargs: Any) -> Any:
        self._count("text", [texts] if isinstance(texts, str) else texts)
        return self._inner.encode_text(texts, *args, **kwargs)

    def encode_images(self, images: Any, *args: Any, **kwargs: Any) -> Any:
        self._count("image", images)
        return self._inner.encode_images(images, *args, **kwargs)


# -- the registry ----------------------------------------------------------------------------
class Metrics:
    """The metrics of one server (its own registry) and their HTTP endpoint."""

    def __init__(
        self,
        atlas: Atlas | None = None,
        *,
        jobs: Callable[[], Iterable[dict[str, Any]]] | None = None,
        store_ttl: float = 15.0,
    ):
        self.registry = CollectorRegistry()
        r = self.registry
        self.handled = Counter(
            "neuronatlas_grpc_server_handled",
            "Calls completed, by service, method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.latency = Histogram(
            "neuronatlas_grpc_server_handling_seconds",
            "Call latency, by service and method.",
            ["grpc_service", "grpc_method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("neuronatlas_grpc_server_in_flight", "Calls running.", registry=r)
        self.embedder_calls = Counter(
            "neuronatlas_embedder_calls", "Calls into the embedder.", ["kind"], registry=r
        )
        self.embedder_inputs = Counter(
            "neuronatlas_embedder_inputs",
            "Texts / images passed to the embedder.",
            ["kind"],
            registry=r,
        )
        for kind in ("text", "image"):
            self.embedder_calls.labels(kind)
            self.embedder_inputs.labels(kind)
        build = Gauge("neuronatlas_build_info", "Version of the server.", ["version"], registry=r)
        build.labels(_version()).set(1)
        if atlas is not None:
            r.register(StoreCollector(atlas, store_ttl))
            r.register(CacheCollector(atlas))
            self.instrument(atlas)
        if jobs is not None:
            r.register(JobCollector(jobs, store_ttl))
        self._http: Any = None
        self.port = 0

    def instrument(self, atlas: Atlas) -> None:
        """Count the Atlas's embedder calls (its loaded embedder, or the one it will load)."""
        emb = atlas.__dict__.get("_embedder")
        if emb is not None and not isinstance(emb, CountingEmbedder):
            atlas._embedder = CountingEmbedder(emb, self)
            return
        factory = atlas.__dict__.get("_embedder_factory")
        if emb is None and factory is not None:
            atlas._embedder_factory = lambda: CountingEmbedder(factory(), self)

    def observe(self, service: str, method: str, code: str, seconds: float) -> None:
        self.handled.labels(service, method, code).inc()
        self.latency.labels(service, method).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (port 0: a free one); returns the port."""
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        self._http = server
        self.port = int(server.server_port)
        return self.port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("neuronatlas")
    except Exception:  # noqa: BLE001 - not installed (a source checkout)
        return "unknown"


# -- the interceptor -------------------------------------------------------------------------
class CallInterceptor(grpc.ServerInterceptor):
    """Request id, access log, tracing span and metrics for every call (see the module doc)."""

    def __init__(self, metrics: Metrics | None = None):
        self.metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        method = str(details.method)
        sent = next(
            (v for k, v in details.invocation_metadata or () if k == logs.REQUEST_ID_HEADER), None
        )
        call = _Call(self.metrics, method, logs.accept_request_id(sent))
        changes: dict[str, Any] = {}
        for kind in ("unary_unary", "stream_unary"):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                changes[kind] = call.wrap_unary(behaviour)
        for kind in ("unary_stream", "stream_stream"):
            behaviour = getattr(handler, kind)
            if behaviour is not None:
                changes[kind] = call.wrap_stream(behaviour)
        return handler._replace(**changes)


class _Call:
    """One call being served."""

    def __init__(self, metrics: Metrics | None, method: str, rid: str):
        self.metrics, self.method, self.rid = metrics, method, rid
        self.service, self.name = method_labels(method)

    def wrap_unary(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            with self.serving(context):
                return behaviour(request, context)

        return call

    def wrap_stream(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            with self.serving(context):
                yield from behaviour(request, context)

        return call

    @contextmanager
    def serving(self, context: grpc.ServicerContext) -> Iterator[None]:
        token = logs.request_id.set(self.rid)
        t0 = time.perf_counter()
        if self.metrics is not None:
            self.metrics.in_flight.inc()
        code = "OK"
        try:
            with logs.span(self.method, self.rid) as span:
                try:
                    context.send_initial_metadata(((logs.REQUEST_ID_HEADER, self.rid),))
                except ValueError:  # already sent (never by our handlers)
                    pass
                try:
                    yield
                except GeneratorExit:
                    code = "CANCELLED"
                    raise
                except BaseException:
                    set_code = context.code()
                    code = set_code.name if set_code is not None else "UNKNOWN"
                    raise
                else:
                    set_code = context.code()
                    code = set_code.name if set_code is not None else "OK"
                finally:
                    if span is not None:
                        span.set_attribute("rpc.grpc.status_code", code)
        finally:
            seconds = time.perf_counter() - t0
            if self.metrics is not None:
                self.metrics.in_flight.dec()
                self.metrics.observe(self.service, self.name, code, seconds)
            level = logging.DEBUG if self.service in QUIET_SERVICES else logging.INFO
            if access_log.isEnabledFor(level):
                access_log.log(
                    level,
                    "%s/%s %s %.1f ms",
                    self.service,
                    self.name,
                    code,
                    seconds * 1000,
                    extra={
                        "grpc_service": self.service,
                        "grpc_method": self.name,
                        "grpc_code": code,
                        "duration_ms": round(seconds * 1000, 3),
                        "peer": context.peer(),
                    },
                )
            try:
                logs.request_id.reset(token)
            except ValueError:  # a stream finished from another context
                logs.request_id.set("")
