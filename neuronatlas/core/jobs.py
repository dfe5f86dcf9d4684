"""The job queue behind long-running operations (indexing a model through the service).

A job is a small JSON record kept in a :class:`JobTable`: the knowledge store's catalogue
(so it persists with the data it produces, survives ``kill -9`` and is shared by every service
replica of a remote Qdrant) or a dict in tests. Whoever runs a job — a worker thread inside
the server, or a ``neuronatlas worker`` process elsewhere — *claims* it for a lease period,
*heartbeats* progress to extend the lease, and *finishes* it with a result or an error. A job
whose lease ran out (its runner died) can be claimed again; indexing resumes from its run
state, so a taken-over job continues instead of restarting.

States (AIP-151 operations map onto them): ``queued → running → succeeded | failed |
cancelled``. Cancelling a queued job ends it at once; cancelling a running one sets
``cancel_requested`` and the runner stops at its next heartbeat. Jobs run in submission order
(``seq``). Submission is idempotent with a client ``request_id`` (AIP-155).

Consistency: all mutations of one queue object are serialised by a lock, and each one is a
single record write. With the embedded store the server process is the only writer, so that
is the whole story. With several replicas sharing a remote Qdrant, two replicas could hand the
same expired job to two workers at once; the second write wins, and the loser learns it at its
next heartbeat (``LeaseLost``) and stops, so a job is never *finished* twice. Jobs of one
model never run at the same time: a job waits while an earlier one of its model holds a lease.

Clients see a job as an :class:`Operation` (``operations/<job_id>``), the view the service's
GetOperation and the CLI's ``jobs`` commands show.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from neuronatlas.core.errors import FailedPrecondition, InvalidArgument, NotFound
from neuronatlas.core.records import ModelEntry
from neuronatlas.core.validate import shown

DEFAULT_LEASE_S = 60.0
OPERATION_PREFIX = "operations/"
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def done(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class LeaseLost(FailedPrecondition):
    """The caller no longer holds the job's lease (it expired and another runner took it)."""

    reason = "LEASE_LOST"


class JobCancelled(Exception):
    """A runner stops its job because cancellation was asked. A signal between the worker and
    the pipeline, not an error a call returns (so no NeuronAtlasError: a bare CANCELLED status
    of the transport must not map to it); ``code`` / ``reason`` are those of the operation's
    error."""

    code = "CANCELLED"
    reason = "CANCELLED"


class JobInterrupted(Exception):
    """A runner stops its job because it is shutting down; the job stays resumable."""


@dataclass
class Job:
    """One queued unit of work and everything a client may ask about it."""

    job_id: str
    kind: str  # "index"
    model_id: str
    request: dict[str, Any]  # what to do (e.g. probe set, layers, k ...)
    seq: int
    state: JobState = JobState.QUEUED
    request_id: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    attempts: int = 0
    lease_owner: str = ""
    lease_expires: float = 0.0
    cancel_requested: bool = False
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] = field(default_factory=dict)  # {"code", "reason", "message"}

    @property
    def done(self) -> bool:
        return self.state.done

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = str(self.state)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        known = set(cls.__dataclass_fields__)
        data = {k: v for k, v in d.items() if k in known}
        data["state"] = JobState(data.get("state", JobState.QUEUED))
        return cls(**data)


class JobTable(Protocol):
    """Where job records live (the store's catalogue, or a dict in tests)."""

    def put_job(self, job_id: str, record: dict[str, Any]) -> None: ...

    def get_job(self, job_id: str) -> dict[str, Any] | None: ...

    def all_jobs(self) -> list[dict[str, Any]]: ...


class MemoryJobTable:
    """A :class:`JobTable` in a dict (tests and throwaway servers)."""

    def __init__(self) -> None:
        self._rows: dict[str, dict[str, Any]] = {}

    def put_job(self, job_id: str, record: dict[str, Any]) -> None:
        self._rows[job_id] = dict(record)

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        row = self._rows.get(job_id)
        return dict(row) if row is not None else None

    def all_jobs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._rows.values()]


def _check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise InvalidArgument(f"{shown(job_id)} is not an operation id", field="name")
    return job_id


def operation_name(job_id: str) -> str:
    return OPERATION_PREFIX + job_id


def parse_operation_name(name: str, bare_ok: bool = False) -> str:
    """The job id of ``operations/<id>`` (``bare_ok``: a bare id too); INVALID_ARGUMENT on
    ``name`` for anything else."""
    if isinstance(name, str) and name.startswith(OPERATION_PREFIX):
        job_id = name[len(OPERATION_PREFIX) :]
    elif bare_ok and isinstance(name, str):
        job_id = name
    else:
        raise InvalidArgument(
            f"{shown(name)} is not an operation name (operations/<id>)", field="name"
        )
    return _check_job_id(job_id)


@dataclass
class Operation:
    """What a client sees of a job (AIP-151): its state, progress, and result or error."""

    job_id: str
    model_id: str
    state: JobState
    stage: str = ""
    images_done: int = 0  # items of the current stage (probe images; neurons when writing)
    images_total: int = 0
    layers: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0  # since the job first started running
    eta_s: float = 0.0  # left in the current stage (0: unknown)
    created_at: float = 0.0
    updated_at: float = 0.0
    attempts: int = 0
    worker: str = ""  # who holds the lease (empty when none does)
    cancel_requested: bool = False
    error: dict[str, str] = field(default_factory=dict)  # {"code", "reason", "message"}
    model: ModelEntry | None = None  # the indexed model (succeeded)

    @property
    def name(self) -> str:
        return operation_name(self.job_id)

    @property
    def done(self) -> bool:
        return self.state.done

    @classmethod
    def from_job(cls, job: Job, now: float | None = None) -> Operation:
        now = time.time() if now is None else now
        p = job.progress
        if job.state is JobState.QUEUED:
            stage = "queued"
        elif job.state is JobState.SUCCEEDED:
            stage = "done"
        else:
            stage = str(p.get("stage", "") or "starting")
        end = job.finished_at if job.done else now
        model = job.result.get("model") if isinstance(job.result, dict) else None
        return cls(
            job_id=job.job_id,
            model_id=job.model_id,
            state=job.state,
            stage=stage,
            images_done=int(p.get("images_done", 0) or 0),
            images_total=int(p.get("images_total", 0) or 0),
            layers=[str(x) for x in p.get("layers", []) or []],
            elapsed_s=max(0.0, end - job.started_at) if job.started_at else 0.0,
            eta_s=0.0 if job.done else float(p.get("eta_seconds", 0.0) or 0.0),
            created_at=job.created_at,
            updated_at=job.updated_at,
            attempts=job.attempts,
            worker=job.lease_owner,
            cancel_requested=job.cancel_requested,
            error=dict(job.error),
            model=ModelEntry.from_payload(model) if isinstance(model, dict) else None,
        )


class JobQueue:
    """Submit, claim, heartbeat, finish and cancel jobs kept in a :class:`JobTable`."""

    def __init__(
        self,
        table: JobTable,
        *,
        lease_s: float = DEFAULT_LEASE_S,
        clock: Callable[[], float] = time.time,
    ):
        if lease_s <= 0:
            raise InvalidArgument(f"lease must be positive, not {lease_s}", field="lease_s")
        self.table = table
        self.lease_s = float(lease_s)
        self.clock = clock
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)

    # -- reading -------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        row = self.table.get_job(_check_job_id(job_id))
        if row is None:
            raise NotFound(
                f"no operation {shown(job_id)}",
                resource_type="operation",
                resource_name=operation_name(job_id),
            )
        return Job.from_dict(row)

    def find_request(self, request_id: str) -> Job | None:
        """The job a submission with ``request_id`` created, if any."""
        if not request_id:
            return None
        return next((j for j in self.list_jobs() if j.request_id == request_id), None)

    def list_jobs(self, states: Iterable[JobState] | None = None, model_id: str = "") -> list[Job]:
        """Jobs in submission order, optionally only some states / one model."""
        wanted = set(states) if states is not None else None
        jobs = [Job.from_dict(r) for r in self.table.all_jobs()]
        return sorted(
            (
                j
                for j in jobs
                if (wanted is None or j.state in wanted)
                and (not model_id or j.model_id == model_id)
            ),
            key=lambda j: j.seq,
        )

    def wait_for_change(self, timeout: float) -> None:
        """Block until a job of this queue object changes, or ``timeout`` seconds pass (idle
        runners sleep here instead of polling the table)."""
        with self._changed:
            self._changed.wait(max(0.0, timeout))

    def wake(self) -> None:
        """Wake everyone blocked in ``wait_for_change`` / ``wait`` (e.g. runners stopping)."""
        with self._changed:
            self._changed.notify_all()

    def wait(self, job_id: str, timeout: float) -> Job:
        """The job once done, or as it is when ``timeout`` seconds have passed."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._changed:
            while True:
                job = self.get(job_id)
                left = deadline - time.monotonic()
                if job.done or left <= 0:
                    return job
                # runners elsewhere (remote workers) don't notify: poll at least every second
                self._changed.wait(min(left, 1.0))

    # -- writing -------------------------------------------------------------------------------
    def _save(self, job: Job) -> Job:
        job.updated_at = self.clock()
        self.table.put_job(job.job_id, job.to_dict())
        self._changed.notify_all()
        return job

    def submit(
        self, kind: str, model_id: str, request: dict[str, Any], request_id: str = ""
    ) -> Job:
        """Queue a job. The same ``request_id`` returns the job it created the first time."""
        with self._lock:
            if request_id:
                for job in self.list_jobs():
                    if job.request_id == request_id:
                        if job.kind != kind or job.model_id != model_id:
                            raise InvalidArgument(
                                f"request_id {shown(request_id)} was used for another request",
                                field="request_id",
                            )
                        return job
            jobs = self.list_jobs()
            now = self.clock()
            job = Job(
                job_id=uuid.uuid4().hex,
                kind=kind,
                model_id=model_id,
                request=dict(request),
                seq=(jobs[-1].seq + 1) if jobs else 1,
                request_id=request_id,
                created_at=now,
            )
            return self._save(job)

    def claim(self, owner: str, kinds: Iterable[str] | None = None) -> Job | None:
        """Lease the oldest runnable job to ``owner``: a queued one, or a running one whose
        lease expired. ``None`` when there is nothing to do."""
        wanted = set(kinds) if kinds is not None else None
        with self._lock:
            now = self.clock()
            pending = self.list_jobs([JobState.QUEUED, JobState.RUNNING])
            busy = {  # models with a job under a live lease: their next job waits for it
                j.model_id for j in pending if j.state is JobState.RUNNING and j.lease_expires > now
            }
            for job in pending:
                if wanted is not None and job.kind not in wanted:
                    continue
                if job.state is JobState.RUNNING and job.lease_expires > now:
                    continue
                if job.model_id in busy:
                    continue
                if job.cancel_requested:  # its runner died before it could stop
                    self._end(job, JobState.CANCELLED)
                    continue
                job.state = JobState.RUNNING
                job.lease_owner, job.lease_expires = owner, now + self.lease_s
                job.attempts += 1
                job.started_at = job.started_at or now
                return self._save(job)
            return None

    def _owned(self, job_id: str, owner: str) -> Job:
        job = self.get(job_id)
        if job.state is not JobState.RUNNING or job.lease_owner != owner:
            raise LeaseLost(
                f"operation {job_id} is not leased to {shown(owner)} (state {job.state})"
            )
        return job

    def heartbeat(self, job_id: str, owner: str, progress: dict[str, Any] | None = None) -> Job:
        """Extend the lease and record progress. The returned job's ``cancel_requested`` tells
        the runner to stop."""
        with self._lock:
            job = self._owned(job_id, owner)
            job.lease_expires = self.clock() + self.lease_s
            if progress:
                job.progress = {**job.progress, **progress}
            return self._save(job)

    def succeed(self, job_id: str, owner: str, result: dict[str, Any]) -> Job:
        with self._lock:
            job = self._owned(job_id, owner)
            job.result = dict(result)
            return self._end(job, JobState.SUCCEEDED)

    def fail(self, job_id: str, owner: str, error: dict[str, str]) -> Job:
        with self._lock:
            job = self._owned(job_id, owner)
            job.error = {k: str(v) for k, v in error.items()}
            return self._end(job, JobState.FAILED)

    def cancelled(self, job_id: str, owner: str) -> Job:
        """The runner stopped because it was asked to."""
        with self._lock:
            return self._end(self._owned(job_id, owner), JobState.CANCELLED)

    def cancel(self, job_id: str) -> Job:
        """Cancel: a queued job ends now, a running one is asked to stop; a done job is
        returned unchanged (cancelling is idempotent, AIP-151)."""
        with self._lock:
            job = self.get(job_id)
            if job.done:
                return job
            if job.state is JobState.QUEUED:
                return self._end(job, JobState.CANCELLED)
            job.cancel_requested = True
            return self._save(job)

    def release(self, owner: str) -> list[Job]:
        """Give back every lease ``owner`` holds (a server restarting under the same name
        resumes its running jobs at once instead of waiting for the leases to expire)."""
        with self._lock:
            out = []
            for job in self.list_jobs([JobState.RUNNING]):
                if job.lease_owner == owner:
                    job.lease_expires = 0.0
                    out.append(self._save(job))
            return out

    def release_all(self) -> list[Job]:
        """Give back every lease (a server that is the only runner, over the embedded store,
        starting up: whatever was running when it stopped is resumable at once)."""
        with self._lock:
            out = []
            for job in self.list_jobs([JobState.RUNNING]):
                if job.lease_expires:
                    job.lease_expires = 0.0
                    out.append(self._save(job))
            return out

    def _end(self, job: Job, state: JobState) -> Job:
        job.state = state
        if state is JobState.CANCELLED and not job.error:
            job.error = {
                "code": JobCancelled.code,
                "reason": JobCancelled.reason,
                "message": "cancelled"
                + (" before it started" if not job.started_at else " while it ran"),
            }
        job.finished_at = self.clock()
        job.lease_owner, job.lease_expires = "", 0.0
        return self._save(job)
