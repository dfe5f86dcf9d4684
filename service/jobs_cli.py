"""Commands for indexing operations: ``jobs list|get|cancel|wait`` and ``worker``; and
:func:`follow`, the progress bar ``index --server`` and ``jobs wait`` show.

``jobs`` works on a server (``--server HOST:PORT``: GetOperation & co.) or, without one, on the
queue kept in the configured store itself (``neuronatlas.core.jobs``): useful to look at the
jobs of a store whose server is down. ``worker`` is a remote indexing worker: it leases jobs
from a server (ClaimJob / ReportJob, a worker token) and writes the neurons into the store of
its own settings, the remote Qdrant the server uses too.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from datetime import datetime
from typing import Any

import click

from neuronatlas.core.jobs import JobQueue, JobState, Operation, parse_operation_name
from neuronatlas.service.cli import client_options, table
from neuronatlas.service.cli_common import server_options

FOLLOW_POLL_S = 1.0


# -- following an operation ---------------------------------------------------------------------
def follow(
    client: Any, op: Operation, progress: bool = True, timeout: float | None = None
) -> Operation:
    """Wait for ``op`` (WaitOperation, a second at a time) showing a progress bar per stage on
    stderr; returns the operation when done, or as it is after ``timeout`` seconds."""
    from tqdm import tqdm

    deadline = None if timeout is None else time.monotonic() + timeout
    bar = None
    stage = None
    try:
        while True:
            if progress and op.stage != stage and op.stage not in ("queued", "done"):
                if bar is not None:
                    bar.close()
                stage = op.stage
                unit = "img" if stage in ("probe embeddings", "forward") else "neuron"
                bar = tqdm(total=op.images_total or None, desc=f"{op.model_id}: {stage}", unit=unit)
            if bar is not None and op.images_total:
                bar.total = op.images_total
                bar.n = op.images_done
                bar.set_postfix_str(f"ETA {op.eta_s:.0f} s" if op.eta_s else "", refresh=False)
                bar.refresh()
            if op.done or (deadline is not None and time.monotonic() >= deadline):
                return op
            wait = FOLLOW_POLL_S
            if deadline is not None:
                wait = max(0.05, min(wait, deadline - time.monotonic()))
            op = client.wait_operation(op.name, timeout=wait)
    finally:
        if bar is not None:
            bar.close()


def outcome_line(op: Operation) -> str:
    if op.state is JobState.SUCCEEDED:
        return f"{op.name}: succeeded ({op.model_id}, {op.elapsed_s:.1f} s)"
    if op.done:
        e = op.error
        return f"{op.name}: {op.state.value}: {e.get('message', '')} [{e.get('code', '')}]"
    return f"{op.name}: {op.state.value}, stage {op.stage or '-'} (not done yet)"


# -- the queue without a server -------------------------------------------------------------------
class LocalOperations:
    """The operation calls of the client, answered from the store's own queue."""

    def __init__(self, ctx: click.Context):
        from neuronatlas.cli import settings_from
        from neuronatlas.core.store import open_store

        self.store = open_store(settings_from(ctx))
        self.queue = JobQueue(self.store)

    def get_operation(self, name: str) -> Operation:
        return Operation.from_job(self.queue.get(parse_operation_name(name, bare_ok=True)))

    def list_operations(
        self, *, model_id: str = "", states: list[str] | None = None, **_: Any
    ) -> list[Operation]:
        wanted = [JobState(s) for s in states] if states else None
        return [Operation.from_job(j) for j in self.queue.list_jobs(wanted, model_id)]

    def cancel_operation(self, name: str) -> Operation:
        return Operation.from_job(self.queue.cancel(parse_operation_name(name, bare_ok=True)))

    def wait_operation(self, name: str, timeout: float = 60.0) -> Operation:
        from neuronatlas.core.errors import FailedPrecondition

        job_id = parse_operation_name(name, bare_ok=True)
        job = self.queue.wait(job_id, 0 if self.store.exclusive else timeout)
        if not job.done and self.store.exclusive:
            raise FailedPrecondition(
                f"operation {job_id} is {job.state.value}: its server (the only one that may "
                "run the jobs of this embedded store) is not running while the store is open "
                "here; start `neuronatlas serve`, or use --server"
            )
        return Operation.from_job(job)

    def close(self) -> None:
        self.store.close()


def _ops(ctx: click.Context, client: Any) -> Any:
    return client if client is not None else LocalOperations(ctx)


def _close(ops: Any, client: Any) -> None:
    if ops is not client:
        ops.close()


# -- jobs ---------------------------------------------------------------------------------------
def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _op_dict(op: Operation) -> dict[str, Any]:
    return {
        "name": op.name,
        "model_id": op.model_id,
        "state": op.state.value,
        "stage": op.stage,
        "images_done": op.images_done,
        "images_total": op.images_total,
        "layers": op.layers,
        "elapsed_seconds": round(op.elapsed_s, 3),
        "eta_seconds": round(op.eta_s, 3),
        "attempts": op.attempts,
        "worker": op.worker,
        "cancel_requested": op.cancel_requested,
        "created": _when(op.created_at),
        "updated": _when(op.updated_at),
        "error": op.error or None,
        "model": (
            {
                "model_id": op.model.model_id,
                "status": op.model.status.value,
                "generation": op.model.generation,
                "neurons": op.model.neuron_count,
            }
            if op.model is not None
            else None
        ),
    }


def _progress(op: Operation) -> str:
    return f"{op.images_done}/{op.images_total}" if op.images_total else "-"


@click.group()
def jobs() -> None:
    """Indexing operations: list, inspect, cancel, wait (on --server, or the local store's
    queue)."""


@jobs.command("list")
@click.option("--model", "model_id", default="", help="Only operations of this model.")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice([s.value for s in JobState]),
    help="Only operations in this state (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@client_options
@click.pass_context
def jobs_list(ctx, client, model_id: str, states: tuple[str, ...], as_json: bool) -> None:
    """Operations, oldest first."""
    ops = _ops(ctx, client)
    try:
        if client is not None:
            found = ops.list_operations(model_id=model_id, states=list(states), limit=10_000).items
        else:
            found = ops.list_operations(model_id=model_id, states=list(states))
    finally:
        _close(ops, client)
    if as_json:
        click.echo(json.dumps([_op_dict(o) for o in found], indent=2))
        return
    rows = [
        [
            o.name,
            o.model_id,
            o.state.value,
            o.stage,
            _progress(o),
            o.attempts,
            o.worker or "-",
            _when(o.created_at),
        ]
        for o in found
    ]
    head = ["operation", "model", "state", "stage", "progress", "runs", "worker", "created"]
    click.echo(table(head, rows) if rows else "no operations")


@jobs.command("get")
@click.argument("name", metavar="OPERATION")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@client_options
@click.pass_context
def jobs_get(ctx, client, name: str, as_json: bool) -> None:
    """One operation (operations/<id> or the bare id)."""
    ops = _ops(ctx, client)
    try:
        op = ops.get_operation(name)
    finally:
        _close(ops, client)
    d = _op_dict(op)
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    for key, value in d.items():
        if value not in (None, "", [], {}):
            click.echo(f"{key:<17} {value}")


@jobs.command("cancel")
@click.argument("name", metavar="OPERATION")
@client_options
@click.pass_context
def jobs_cancel(ctx, client, name: str) -> None:
    """Cancel an operation: a queued one ends at once, a running one at its next batch (a
    re-indexed model keeps serving its previous generation). Needs a write token."""
    ops = _ops(ctx, client)
    try:
        op = ops.cancel_operation(name)
    finally:
        _close(ops, client)
    if op.done:
        click.echo(outcome_line(op))
    else:
        click.echo(f"{op.name}: cancellation asked; it stops at its next batch")


@jobs.command("wait")
@click.argument("name", metavar="OPERATION")
@click.option(
    "--max-wait",
    type=click.FloatRange(min=0),
    default=None,
    help="Give up waiting after this many seconds (the operation goes on).",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
@client_options
@click.pass_context
def jobs_wait(ctx, client, name: str, max_wait: float | None, progress: bool) -> None:
    """Follow an operation until it is done (exit status 1 unless it succeeded)."""
    ops = _ops(ctx, client)
    try:
        op = follow(ops, ops.get_operation(name), progress and client is not None, max_wait)
    finally:
        _close(ops, client)
    click.echo(outcome_line(op))
    if op.state is not JobState.SUCCEEDED:
        raise SystemExit(1)


# -- worker ---------------------------------------------------------------------------------------
@click.command("worker")
@server_options(
    "The NeuronAtlas server whose queue to work on (env NEURONATLAS_SERVER).",
    token_help="Worker token (NEURONATLAS_TOKEN).",
    required=True,
)
@click.option("--name", default=None, help="Worker name (default worker:<host>:<pid>).")
@click.option("--once", is_flag=True, help="Stop when the queue is empty.")
@click.option(
    "--poll",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between claims while the queue is empty.",
)
@click.pass_context
def worker(
    ctx: click.Context,
    server: str,
    token: str | None,
    tls: bool,
    ca_cert: str | None,
    name: str | None,
    once: bool,
    poll: float,
) -> None:
    """Run indexing jobs of a server's queue here (scope "worker"): the neuron vectors go to
    the store of this machine's settings — the remote Qdrant the server uses (--backend remote
    --qdrant-url ...) — and the probe sets, vocabularies and uploads come from this home
    (share it, or register the same probe sets). SIGTERM / Ctrl-C stop the running job at its
    next batch; its lease runs out and a worker takes it over."""
    from neuronatlas.cli import settings_from
    from neuronatlas.core.embedder import load_embedder
    from neuronatlas.core.errors import FailedPrecondition
    from neuronatlas.core.store import open_store
    from neuronatlas.indexer.worker import IndexWorker, RemoteJobSource, worker_name
    from neuronatlas.service.client import Client

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = settings_from(ctx)
    if settings.backend != "remote":
        raise FailedPrecondition(
            "a worker writes into the store the server serves: that must be a remote Qdrant "
            "(--backend remote --qdrant-url URL); an embedded store is its server's alone "
            "(serve --index-workers)"
        )
    store = open_store(settings)
    client = Client(server, token=token, tls=ca_cert or tls, timeout=30)
    me = IndexWorker(
        name or worker_name(),
        RemoteJobSource(client, poll_s=poll),
        store,
        lambda: load_embedder(settings.embedder, settings.device),
        settings.paths,
        device=settings.device,
        poll_s=poll,
    )
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: me.stop())
    click.echo(f"neuronatlas worker {me.name} on {server}", err=True)
    try:
        me.run(once=once)
    finally:
        client.close()
        store.close()
    click.echo(f"worker {me.name} stopped after {me.jobs_done} jobs", err=True)


COMMANDS: list[click.Command] = [jobs, worker]
