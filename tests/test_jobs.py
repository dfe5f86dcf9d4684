"""The job queue: order, leases, heartbeats, cancellation, idempotent submission, persistence."""

from __future__ import annotations

import pytest

from neuronatlas.core.errors import InvalidArgument, NotFound
from neuronatlas.core.jobs import JobQueue, JobState, LeaseLost, MemoryJobTable


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def queue(clock: Clock) -> JobQueue:
    return JobQueue(MemoryJobTable(), lease_s=30, clock=clock)


def test_jobs_run_in_submission_order(queue: JobQueue):
    a = queue.submit("index", "m1", {"k": 20})
    b = queue.submit("index", "m2", {"k": 20})
    assert [j.job_id for j in queue.list_jobs()] == [a.job_id, b.job_id]
    first = queue.claim("w1")
    assert first is not None and first.job_id == a.job_id and first.state is JobState.RUNNING
    second = queue.claim("w2")
    assert second is not None and second.job_id == b.job_id
    assert queue.claim("w3") is None


def test_lease_expiry_hands_the_job_to_another_runner(queue: JobQueue, clock: Clock):
    job = queue.submit("index", "m1", {})
    assert queue.claim("w1") is not None
    clock.t += 20
    queue.heartbeat(job.job_id, "w1", {"stage": "forward", "done": 10})
    clock.t += 20  # 40 s after the claim, 20 s after the heartbeat: still leased
    assert queue.claim("w2") is None
    clock.t += 11
    taken = queue.claim("w2")
    assert taken is not None and taken.lease_owner == "w2" and taken.attempts == 2
    assert taken.progress == {"stage": "forward", "done": 10}  # progress carries over
    with pytest.raises(LeaseLost):
        queue.heartbeat(job.job_id, "w1")
    with pytest.raises(LeaseLost):
        queue.succeed(job.job_id, "w1", {})
    done = queue.succeed(job.job_id, "w2", {"model_id": "m1"})
    assert done.state is JobState.SUCCEEDED and done.result == {"model_id": "m1"}
    assert done.lease_owner == ""


def test_cancel_queued_and_running(queue: JobQueue):
    a = queue.submit("index", "m1", {})
    b = queue.submit("index", "m2", {})
    assert queue.cancel(b.job_id).state is JobState.CANCELLED  # queued: ends at once
    assert queue.claim("w1").job_id == a.job_id  # type: ignore[union-attr]
    asked = queue.cancel(a.job_id)
    assert asked.state is JobState.RUNNING and asked.cancel_requested
    assert queue.heartbeat(a.job_id, "w1").cancel_requested  # the runner learns it
    assert queue.cancelled(a.job_id, "w1").state is JobState.CANCELLED
    assert queue.cancel(a.job_id).state is JobState.CANCELLED  # idempotent
    assert queue.claim("w2") is None


def test_cancel_requested_job_of_a_dead_runner_ends_cancelled(queue: JobQueue, clock: Clock):
    job = queue.submit("index", "m1", {})
    queue.claim("w1")
    queue.cancel(job.job_id)
    clock.t += 31
    assert queue.claim("w2") is None
    assert queue.get(job.job_id).state is JobState.CANCELLED


def test_idempotent_submission(queue: JobQueue):
    a = queue.submit("index", "m1", {"k": 5}, request_id="req-1")
    again = queue.submit("index", "m1", {"k": 5}, request_id="req-1")
    assert again.job_id == a.job_id and len(queue.list_jobs()) == 1
    with pytest.raises(InvalidArgument, match="request_id"):
        queue.submit("index", "other", {}, request_id="req-1")


def test_fail_records_the_error_and_release_resumes(queue: JobQueue):
    a = queue.submit("index", "m1", {})
    b = queue.submit("index", "m2", {})
    queue.claim("server")
    failed = queue.fail(a.job_id, "server", {"code": "INVALID_ARGUMENT", "message": "bad"})
    assert failed.state is JobState.FAILED and failed.error["message"] == "bad"
    queue.claim("server")
    # the server restarts under the same name: its running job is claimable at once
    assert [j.job_id for j in queue.release("server")] == [b.job_id]
    again = queue.claim("server")
    assert again is not None and again.job_id == b.job_id and again.attempts == 2


def test_queue_state_lives_in_the_table(clock: Clock):
    table = MemoryJobTable()
    job = JobQueue(table, clock=clock).submit("index", "m1", {"probe": "cifar"})
    reopened = JobQueue(table, clock=clock)  # e.g. after kill -9 and restart
    assert reopened.get(job.job_id).request == {"probe": "cifar"}
    assert reopened.claim("w").job_id == job.job_id  # type: ignore[union-attr]


def test_unknown_and_malformed_ids(queue: JobQueue):
    with pytest.raises(NotFound):
        queue.get("0" * 32)
    with pytest.raises(InvalidArgument):
        queue.get("x" * 500)
    with pytest.raises(InvalidArgument):
        JobQueue(MemoryJobTable(), lease_s=0)


def test_wait_returns_when_done_or_at_timeout(queue: JobQueue):
    import threading

    job = queue.submit("index", "m1", {})
    assert queue.wait(job.job_id, timeout=0.05).state is JobState.QUEUED
    queue.claim("w")
    threading.Timer(0.1, lambda: queue.succeed(job.job_id, "w", {})).start()
    assert queue.wait(job.job_id, timeout=10).state is JobState.SUCCEEDED
