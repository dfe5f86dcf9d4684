"""Indexing workers: take an indexing job from the queue, index, report.

The queue (``neuronatlas.core.jobs``) lives in the knowledge store's catalogue; the service is
the only writer of job state. A worker reaches it through a :class:`JobSource`:

- :class:`LocalJobSource`: the queue object itself (the server's in-process pool, threads
  named ``local:<i>``; :class:`IndexPool`);
- :class:`RemoteJobSource`: ClaimJob / ReportJob over gRPC (``neuronatlas worker --server``,
  a process on another machine that writes neuron vectors to the shared remote Qdrant itself
  and reports only the job's state to the service).

An :class:`IndexWorker` claims a job, registers the model when the job carries a source,
opens the probe set by name from its home, indexes (``pipeline.index_model``) and reports
success (the server reads the Model entry from the store) or the error's code, reason and
message. While it runs, a keeper thread heartbeats the lease with the progress the pipeline
reports (stage, images done / total, layers, elapsed, ETA): every ``heartbeat_s`` seconds and
at once when the stage changes. A heartbeat that says "cancel" stops the run at its next batch
(``JobCancelled`` inside the pipeline: a re-indexed model keeps serving its previous
generation, a model never indexed goes back to ``registered`` with reason "cancelled"); a lost
lease (another worker took the job over) stops it quietly; a worker that stops (server
shutdown) interrupts its run, which stays resumable. A job taken over resumes from the run
state in ``<home>/runs/<model>/`` when the new worker shares that home (the in-process pool,
or workers on one machine), and starts over otherwise.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from neuronatlas.core.artifacts import ArtifactStore
from neuronatlas.core.config import Home, HomeLike
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import InvalidArgument, NeuronAtlasError, NotFound
from neuronatlas.core.jobs import (
    Job,
    JobCancelled,
    JobInterrupted,
    JobQueue,
    LeaseLost,
)
from neuronatlas.core.records import ModelEntry, validate_model_id
from neuronatlas.core.store import KnowledgeStore
from neuronatlas.core.validate import shown

from .accuracy import parse_class_map
from .layers import check_aggregation
from .pipeline import SAMPLE_MODES, IndexOptions, IndexProgress, index_model
from .probes import load_probe_set

log = logging.getLogger("neuronatlas.worker")

INDEX_JOB = "index"  # the job kind of an IndexModel operation
HEARTBEAT_S = 2.0
# IndexOptions fields a request's ``options`` may not set: fields of the request itself
# (layers, k), and the worker machine's own business (device, DataLoader workers, output)
_NOT_REQUEST_OPTIONS = frozenset({"layers", "k", "progress", "on_progress", "device", "workers"})


def request_option_names() -> list[str]:
    """The IndexOptions a request's ``options`` may set."""
    return sorted({f.name for f in dataclasses.fields(IndexOptions)} - _NOT_REQUEST_OPTIONS)


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{name} must be a number, not {shown(value)}", field=name)
    if isinstance(value, float) and not value.is_integer():
        raise InvalidArgument(f"{name} must be a whole number, not {value}", field=name)
    return int(value)


def _nested_options(cls: type, value: Any, where: str) -> Any:
    """A dataclass option (e.g. ``components``) from its JSON object."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be an object", field=where)
    known = {f.name for f in dataclasses.fields(cls)}
    for key in value:
        if key not in known:
            raise InvalidArgument(
                f"unknown key {shown(key)} in {where} (known: {', '.join(sorted(known))})",
                field=f"{where}.{key}" if len(str(key)) <= 64 else where,
            )
    try:
        return cls(**value)
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{where}: {e}", field=where) from None


# -- what a job asks for ----------------------------------------------------------------------
@dataclass
class IndexRequest:
    """An IndexModel request as the job carries it (``Job.request``; a Struct on the wire)."""

    model_id: str
    probe_set: str
    source: dict[str, Any] | None = None
    replace: bool = False
    vocabularies: dict[str, str] = field(default_factory=dict)  # name -> file or artifact ref
    layers: list[str] = field(default_factory=list)
    k: int = 20
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexRequest:
        """From a job's request (numbers may come back as floats from a Struct)."""
        if not isinstance(d, dict):
            raise InvalidArgument("the job's request is not an object", field="request")
        source = d.get("source")
        req = cls(
            model_id=str(d.get("model_id", "")),
            probe_set=str(d.get("probe_set", "")),
            source=dict(source) if isinstance(source, dict) and source else None,
            replace=bool(d.get("replace", False)),
            vocabularies={str(k): str(v) for k, v in dict(d.get("vocabularies") or {}).items()},
            layers=[str(x) for x in d.get("layers") or []],
            k=_int(d.get("k", 20) or 20, "k"),
            options=dict(d.get("options") or {}),
        )
        return req

    def index_options(self, device: str = "cpu") -> IndexOptions:
        """The run's IndexOptions; INVALID_ARGUMENT naming the option for a bad one."""
        if self.k < 1:
            raise InvalidArgument(f"k must be at least 1, not {self.k}", field="k")
        if any(not isinstance(x, str) or not x.strip() for x in self.layers):
            raise InvalidArgument("layer names must not be empty", field="layers")
        allowed = request_option_names()
        defaults = IndexOptions()
        values: dict[str, Any] = {}
        for key, value in self.options.items():
            where = f"options.{key}"
            if key not in allowed:
                raise InvalidArgument(
                    f"unknown index option {shown(key)} (known: {', '.join(allowed)})",
                    field=where,
                )
            default = getattr(defaults, key)
            if dataclasses.is_dataclass(default) and not isinstance(default, type):
                value = _nested_options(type(default), value, where)
            elif isinstance(default, bool):
                if not isinstance(value, bool):
                    raise InvalidArgument(f"{where} must be true or false", field=where)
            elif isinstance(default, int):
                value = _int(value, where)
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise InvalidArgument(f"{where} must be a number", field=where)
                value = float(value)
            elif isinstance(default, str) and not isinstance(value, str):
                raise InvalidArgument(f"{where} must be a string", field=where)
            values[key] = value
        opt = IndexOptions(
            layers=list(self.layers) or None, k=self.k, progress=False, device=device, **values
        )
        for name in ("batch_size", "top_labels", "checkpoint_every"):
            if getattr(opt, name) < 1:
                raise InvalidArgument(f"{name} must be at least 1", field=f"options.{name}")
        if not 0.0 < opt.beta <= 1.0:
            raise InvalidArgument("beta must be in (0, 1]", field="options.beta")
        if opt.samples not in SAMPLE_MODES:
            raise InvalidArgument(
                f"samples must be one of {', '.join(SAMPLE_MODES)}", field="options.samples"
            )
        if not 0.0 < opt.percentile < 100.0:
            raise InvalidArgument("percentile must be in (0, 100)", field="options.percentile")
        check_aggregation(opt.conv_aggregation, opt.token_aggregation)
        if opt.class_map is not None:
            opt.class_map = parse_class_map(opt.class_map)
        return opt

    def vocabulary_files(self, home: HomeLike) -> dict[str, Path]:
        """Vocabulary name -> file (``artifact:<sha256>`` resolved in the home's artifacts);
        NOT_FOUND for a file that is not there."""
        artifacts = ArtifactStore(Home.of(home).artifacts)
        out = {}
        for name, value in self.vocabularies.items():
            if not name.strip():
                raise InvalidArgument("a vocabulary needs a name", field="vocabularies")
            path = Path(artifacts.resolve(value)).expanduser()
            if not path.is_file():
                raise NotFound(
                    f"vocabulary {shown(name)}: no file {shown(value)} on the server",
                    resource_type="vocabulary",
                    resource_name=name,
                )
            out[name] = path
        return out


def check_index_request(req: IndexRequest, store: KnowledgeStore, home: HomeLike) -> None:
    """What can be checked before a job is queued (IndexModel): the model is registered or a
    source is given, the probe set exists, k fits it, the options and vocabularies are valid.
    Layer names are checked when the model is built (the operation then fails)."""
    validate_model_id(req.model_id)
    if req.source is None:
        store.get_model(req.model_id)  # NOT_FOUND: register it first or give a source
    elif not isinstance(req.source.get("kind"), str):
        raise InvalidArgument("source needs a 'kind'", field="source")
    if not req.probe_set:
        raise InvalidArgument("probe_set is required", field="probe_set")
    probe = load_probe_set(home, req.probe_set)
    req.index_options()
    if req.k > len(probe):
        raise InvalidArgument(
            f"k={req.k} but probe set {req.probe_set!r} has {len(probe)} images", field="k"
        )
    req.vocabulary_files(home)


# -- where jobs come from ---------------------------------------------------------------------
class JobSource(Protocol):
    """The worker's side of the job queue."""

    #: seconds a lease lasts without a heartbeat (of the last claimed job)
    lease_s: float

    def claim(self, worker: str) -> Job | None: ...

    def heartbeat(self, job_id: str, worker: str, progress: dict[str, Any]) -> bool:
        """Extend the lease; True when cancellation was asked. LeaseLost when it is gone."""
        ...

    def succeed(self, job_id: str, worker: str, model: ModelEntry) -> None: ...

    def fail(self, job_id: str, worker: str, error: dict[str, str]) -> None: ...

    def cancelled(self, job_id: str, worker: str) -> None: ...

    def release(self, worker: str) -> None:
        """Give the worker's leases back (it stops; its jobs are resumable at once)."""
        ...

    def wait_for_work(self, timeout: float) -> None:
        """Sleep until new work may be there (at most ``timeout`` seconds)."""
        ...


class LocalJobSource:
    """A :class:`JobSource` over the queue object (the server's own workers)."""

    def __init__(self, queue: JobQueue):
        self.queue = queue
        self.lease_s = queue.lease_s

    def claim(self, worker: str) -> Job | None:
        return self.queue.claim(worker, kinds=[INDEX_JOB])

    def heartbeat(self, job_id: str, worker: str, progress: dict[str, Any]) -> bool:
        return self.queue.heartbeat(job_id, worker, progress).cancel_requested

    def succeed(self, job_id: str, worker: str, model: ModelEntry) -> None:
        self.queue.succeed(job_id, worker, {"model": model.to_payload()})

    def fail(self, job_id: str, worker: str, error: dict[str, str]) -> None:
        self.queue.fail(job_id, worker, error)

    def cancelled(self, job_id: str, worker: str) -> None:
        self.queue.cancelled(job_id, worker)

    def release(self, worker: str) -> None:
        self.queue.release(worker)

    def wait_for_work(self, timeout: float) -> None:
        self.queue.wait_for_change(timeout)


class JobClient(Protocol):
    """The calls of ``neuronatlas.service.client.Client`` a remote worker uses."""

    def claim_job(self, worker: str) -> Job | None: ...

    def report_job(
        self,
        job_id: str,
        worker: str,
        report: str,
        progress: dict[str, Any] | None = None,
        error: dict[str, str] | None = None,
    ) -> bool: ...


class RemoteJobSource:
    """A :class:`JobSource` over ClaimJob / ReportJob (``neuronatlas worker --server``). The
    service reads the indexed Model from the shared store when a job succeeds."""

    def __init__(self, client: JobClient, poll_s: float = 2.0):
        self.client = client
        self.poll_s = float(poll_s)
        self.lease_s = 60.0
        self._idle = threading.Event()

    def claim(self, worker: str) -> Job | None:
        job = self.client.claim_job(worker)
        if job is not None and job.lease_expires:
            self.lease_s = max(1.0, job.lease_expires - time.time())
        return job

    def heartbeat(self, job_id: str, worker: str, progress: dict[str, Any]) -> bool:
        return self.client.report_job(job_id, worker, "heartbeat", progress=progress)

    def succeed(self, job_id: str, worker: str, model: ModelEntry) -> None:
        self.client.report_job(job_id, worker, "succeeded")

    def fail(self, job_id: str, worker: str, error: dict[str, str]) -> None:
        self.client.report_job(job_id, worker, "failed", error=error)

    def cancelled(self, job_id: str, worker: str) -> None:
        self.client.report_job(job_id, worker, "cancelled")

    def release(self, worker: str) -> None:
        """Nothing to do: the lease runs out (the API has no release call)."""

    def wait_for_work(self, timeout: float) -> None:
        self._idle.wait(min(timeout, self.poll_s))


def worker_name(prefix: str = "worker") -> str:
    """A name unique per process: ``<prefix>:<host>:<pid>``."""
    return f"{prefix}:{socket.gethostname()}:{os.getpid()}"


# -- the lease keeper -------------------------------------------------------------------------
class _Lease:
    """Heartbeats one job's lease from a thread of its own (so a long stage without progress
    calls, e.g. the index build before the flip, keeps it) with the progress the pipeline
    reports; tells the pipeline to stop (``check``) when cancelled, the lease is lost or the
    worker stops."""

    def __init__(
        self, source: JobSource, job: Job, worker: str, interval: float, stopping: threading.Event
    ):
        self.source, self.job, self.worker = source, job, worker
        self.interval = max(0.05, min(float(interval), source.lease_s / 3.0))
        self.stopping = stopping
        self.t0 = time.monotonic()
        self.progress: dict[str, Any] = {"stage": "loading", "images_done": 0, "images_total": 0}
        self.stop_error: BaseException | None = None
        self._lock = threading.Lock()
        self._kick = threading.Event()
        self._done = threading.Event()
        self._stage_t0 = self.t0
        self._stage_done0 = 0
        self._thread = threading.Thread(
            target=self._keep, name=f"lease-{worker}-{job.job_id[:8]}", daemon=True
        )

    def start(self) -> None:
        self._kick.set()  # the first heartbeat at once: the job shows "loading"
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        self._kick.set()
        self._thread.join(timeout=30)

    def check(self) -> None:
        if self.stop_error is not None:
            raise self.stop_error
        if self.stopping.is_set():
            raise JobInterrupted(f"worker {self.worker} is stopping")

    def set_stage(self, stage: str) -> None:
        self.on_progress(IndexProgress(stage))

    def on_progress(self, p: IndexProgress) -> None:
        """The pipeline's progress callback (its thread): record, maybe stop."""
        now = time.monotonic()
        with self._lock:
            changed = p.stage != self.progress.get("stage")
            if changed:
                self._stage_t0, self._stage_done0 = now, p.done
            eta = 0.0
            rate_n, rate_t = p.done - self._stage_done0, now - self._stage_t0
            if p.total and rate_n > 0 and rate_t > 0:
                eta = (p.total - p.done) * rate_t / rate_n
            self.progress = {
                "stage": p.stage,
                "images_done": p.done,
                "images_total": p.total,
                "layers": list(p.layers),
                "elapsed_seconds": round(now - self.t0, 3),
                "eta_seconds": round(eta, 3),
            }
        if changed:
            self._kick.set()
        self.check()

    def _keep(self) -> None:
        last_ok = time.monotonic()
        while True:
            self._kick.wait(self.interval)
            self._kick.clear()
            if self._done.is_set():
                return
            with self._lock:
                progress = dict(self.progress)
            progress["elapsed_seconds"] = round(time.monotonic() - self.t0, 3)
            try:
                cancel = self.source.heartbeat(self.job.job_id, self.worker, progress)
            except LeaseLost as e:
                self.stop_error = e
                return
            except Exception as e:  # noqa: BLE001 - e.g. the server briefly unreachable
                if time.monotonic() - last_ok > self.source.lease_s:
                    self.stop_error = LeaseLost(
                        f"no heartbeat of {self.worker} reached the queue for "
                        f"{self.source.lease_s:.0f} s ({e})"
                    )
                    return
                log.warning("heartbeat of job %s failed (will retry): %s", self.job.job_id, e)
                continue
            except BaseException as e:  # noqa: BLE001 - the worker is going down: stop the run
                self.stop_error = e
                return
            last_ok = time.monotonic()
            if cancel and not isinstance(self.stop_error, JobCancelled):
                self.stop_error = JobCancelled(f"operation {self.job.job_id} was cancelled")


# -- the worker -------------------------------------------------------------------------------
EmbedderLike = Embedder | Callable[[], Embedder]


class IndexWorker:
    """Claims indexing jobs from a :class:`JobSource` and runs them, one at a time."""

    def __init__(
        self,
        name: str,
        source: JobSource,
        store: KnowledgeStore,
        embedder: EmbedderLike,
        home: HomeLike,
        *,
        device: str = "cpu",
        heartbeat_s: float = HEARTBEAT_S,
        poll_s: float = 1.0,
    ):
        self.name = name
        self.source = source
        self.store = store
        self._embedder = embedder
        self.home = Home.of(home)
        self.device = device
        self.heartbeat_s = float(heartbeat_s)
        self.poll_s = float(poll_s)
        self.stopping = threading.Event()
        self.jobs_done = 0

    def embedder(self) -> Embedder:
        emb = self._embedder
        if isinstance(emb, Embedder):
            return emb
        loaded = emb()
        self._embedder = loaded
        return loaded

    def stop(self) -> None:
        """Stop after (interrupting) the running job; it stays resumable."""
        self.stopping.set()

    def run(self, once: bool = False) -> None:
        """Claim and run jobs until ``stop()`` (``once``: until the queue is empty)."""
        while not self.stopping.is_set():
            try:
                job = self.source.claim(self.name)
            except Exception as e:  # noqa: BLE001 - a remote queue may be briefly unreachable
                log.warning("%s: claiming a job failed (will retry): %s", self.name, e)
                job = None
            if job is None:
                if once:
                    return
                self.source.wait_for_work(self.poll_s)
                continue
            self.run_job(job)
        self.source.release(self.name)

    def run_job(self, job: Job) -> None:
        """Run one claimed job and report how it ended."""
        log.info("%s: job %s (%s), attempt %d", self.name, job.job_id, job.model_id, job.attempts)
        lease = _Lease(self.source, job, self.name, self.heartbeat_s, self.stopping)
        lease.start()
        outcome: Callable[[], None] | None = None
        try:
            entry = self._index(job, lease)
            outcome = lambda: self.source.succeed(job.job_id, self.name, entry)  # noqa: E731
        except JobCancelled:
            log.info("%s: job %s cancelled", self.name, job.job_id)
            outcome = lambda: self.source.cancelled(job.job_id, self.name)  # noqa: E731
        except JobInterrupted:
            log.info("%s: job %s interrupted (resumable)", self.name, job.job_id)
            outcome = lambda: self.source.release(self.name)  # noqa: E731
        except LeaseLost as e:
            log.warning("%s: job %s: lease lost, stopping: %s", self.name, job.job_id, e)
        except NeuronAtlasError as e:
            log.info("%s: job %s failed: %s", self.name, job.job_id, e)
            error = {"code": e.code, "reason": e.reason, "message": str(e)}
            outcome = lambda: self.source.fail(job.job_id, self.name, error)  # noqa: E731
        except Exception as e:
            log.exception("%s: job %s failed", self.name, job.job_id)
            error = {
                "code": "INTERNAL",
                "reason": "INTERNAL",
                "message": f"{type(e).__name__}: {e}",
            }
            outcome = lambda: self.source.fail(job.job_id, self.name, error)  # noqa: E731
        finally:
            lease.close()
        self.jobs_done += 1
        if outcome is not None:
            self._finish(job, outcome)

    def _finish(self, job: Job, report: Callable[[], None]) -> None:
        """Report a job's end; retried while the lease lasts (a remote server may be briefly
        unreachable)."""
        deadline = time.monotonic() + self.source.lease_s
        while True:
            try:
                report()
                return
            except LeaseLost as e:
                log.warning(
                    "%s: job %s: lease lost before its end was reported: %s",
                    self.name,
                    job.job_id,
                    e,
                )
                return
            except Exception as e:  # noqa: BLE001 - retried, then given up with a log line
                if time.monotonic() > deadline:
                    log.error(
                        "%s: could not report the end of job %s: %s", self.name, job.job_id, e
                    )
                    return
                time.sleep(1.0)

    def _index(self, job: Job, lease: _Lease) -> ModelEntry:
        from .api import register_model
        from .sources import artifact_resolver

        req = IndexRequest.from_dict(job.request)
        opt = req.index_options(self.device)
        opt.on_progress = lease.on_progress
        lease.check()
        if req.source is not None:
            register_model(
                self.store,
                job.model_id,
                req.source,
                replace=req.replace,
                resolve=artifact_resolver(self.home),
            )
        probe = load_probe_set(self.home, req.probe_set)
        vocabularies = req.vocabulary_files(self.home)
        embedder = self.embedder()
        lease.check()
        return index_model(self.store, embedder, job.model_id, probe, self.home, vocabularies, opt)


class IndexPool:
    """``n`` :class:`IndexWorker` threads over one local queue: the server's in-process pool.
    ``stop()`` interrupts the running jobs (they stay resumable) and waits for the threads."""

    def __init__(
        self,
        queue: JobQueue,
        store: KnowledgeStore,
        embedder: EmbedderLike,
        home: HomeLike,
        names: list[str],
        *,
        device: str = "cpu",
        heartbeat_s: float = HEARTBEAT_S,
        poll_s: float = 1.0,
    ):
        source = LocalJobSource(queue)
        self.queue = queue
        self.workers = [
            IndexWorker(
                name,
                source,
                store,
                embedder,
                home,
                device=device,
                heartbeat_s=heartbeat_s,
                poll_s=poll_s,
            )
            for name in names
        ]
        self._threads: list[threading.Thread] = []

    def start(self) -> IndexPool:
        for w in self.workers:
            t = threading.Thread(target=self._run, args=(w,), name=f"index-{w.name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    @staticmethod
    def _run(worker: IndexWorker) -> None:
        try:
            worker.run()
        except BaseException:
            log.exception("index worker %s stopped on an error", worker.name)

    def stop(self, timeout: float = 30.0) -> bool:
        """Interrupt and join; False when a thread did not end within ``timeout`` seconds."""
        self.interrupt()
        return self.join(timeout)

    def interrupt(self) -> None:
        """Ask every worker to stop (a running job stops at its next batch)."""
        for w in self.workers:
            w.stop()
        self.queue.wake()  # idle workers sleep in wait_for_change

    def join(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)
