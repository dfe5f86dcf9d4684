"""Commands that move a store's data: ``migrate``, ``backup``, ``restore``
(``neuronatlas.core.store.transfer`` does the work; listed in ``service/cli.py``'s COMMANDS).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from neuronatlas.core.store.integrity import StoreReport
from neuronatlas.service.cli_common import server_options


class _Progress:
    """Progress lines on stderr, at most one a second (and the last one)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if self.quiet or (now - self._last < 1.0 and done != total):
            return
        self._last = now
        if total:
            click.echo(f"{phase}: {done}/{total} ({100 * done / total:.1f} %)", err=True)
        else:
            click.echo(f"{phase}: {done}", err=True)


def _verify_line(report: StoreReport) -> str:
    state = "OK" if report.ok else "DAMAGED"
    line = f"verify: store {state}, {len(report.models)} models, {report.points_scanned} points"
    problems = [f"{m.model_id}: {p}" for m in report.models for p in m.problems]
    problems += report.problems
    return "\n".join([line, *(f"  {p}" for p in problems)])


def _settings(ctx: click.Context) -> Any:
    from neuronatlas.cli import settings_from

    return settings_from(ctx)


@click.command("migrate")
@click.option(
    "--to",
    "to",
    required=True,
    metavar="LOCATION",
    help="Destination: a Qdrant URL (http(s)://host:6333; ':memory:' is the in-process test "
    "double) or the directory of an embedded store.",
)
@click.option(
    "--from",
    "from_",
    default=None,
    metavar="LOCATION",
    help="Source, as --to (default: the configured store).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 8192),
    default=512,
    show_default=True,
    help="Points per copied batch (one checkpoint entry each).",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    default=None,
    help="Checkpoint file (default: <home>/transfers/migrate-<source+destination>.json). "
    "Running the same migration again continues after its last copied batch.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Copy into a destination that already holds data (same ids replaced, others kept).",
)
@click.option("--no-verify", is_flag=True, help="Skip the destination's full integrity check.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def migrate_cmd(
    ctx: click.Context,
    to: str,
    from_: str | None,
    batch_size: int,
    checkpoint: str | None,
    force: bool,
    no_verify: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Copy a store (catalogue, neurons, components, jobs: every record, ids kept) to another
    store: embedded to a Qdrant server or cluster and back. Resumable: rerun the same command
    after an interruption. The source is read only; stop writers (an embedded store is locked
    while a server has it open: stop the server, or migrate a `backup`'s restored copy)."""
    from neuronatlas.core.store import open_store
    from neuronatlas.core.store import transfer as T

    settings = _settings(ctx)
    src = T.open_location(from_, settings) if from_ else open_store(settings)
    try:
        dst = T.open_location(to, settings)
        try:
            ck = (
                Path(checkpoint)
                if checkpoint
                else T.default_checkpoint(settings.home, T.describe(src), T.describe(dst))
            )
            if ck.exists():
                click.echo(f"resuming from the checkpoint {ck}", err=True)
            result = T.migrate(
                src,
                dst,
                checkpoint=ck,
                batch_size=batch_size,
                force=force,
                progress=_Progress(quiet),
            )
            report = None if no_verify else dst.verify()
        finally:
            dst.close()
    finally:
        src.close()
    data = {
        "source": result.source,
        "destination": result.destination,
        "neurons_copied": result.neurons,
        "neurons_total": result.neurons_total,
        "resumed_at": result.resumed_at,
        "catalogue_points": result.catalogue,
        "batches": result.batches,
        "changed_vectors": result.changed_vectors,
        "max_vector_change": result.max_vector_change,
        "resealed": result.resealed,
        "skipped_without_vector": result.skipped_without_vector,
        "elapsed_s": round(result.elapsed_s, 3),
        "verified": None if report is None else report.ok,
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(
            f"migrated {result.source} -> {result.destination}: {result.neurons_total} neuron "
            f"points ({result.neurons} by this run"
            + (f", {result.resumed_at} before" if result.resumed_at else "")
            + f"), {result.catalogue} catalogue points in {result.elapsed_s:.1f} s"
        )
        if result.changed_vectors:
            click.echo(
                f"the destination re-normalised {result.changed_vectors} vectors (largest "
                f"change {result.max_vector_change:.2g}); re-sealed: {', '.join(result.resealed)}"
            )
        if result.skipped_without_vector:
            click.echo(f"skipped {result.skipped_without_vector} source points without a vector")
        if report is not None:
            click.echo(_verify_line(report))
    if report is not None and not report.ok:
        raise SystemExit(1)


@click.command("backup")
@click.argument("out", type=click.Path(dir_okay=False))
@server_options(
    "Back up a running server's store through its BackupStore call (admin token); "
    "default: open the store directly (the server must not be running).",
    token_help="Bearer token (admin).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 8192),
    default=1024,
    show_default=True,
    help="Neuron points per archive member.",
)
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@click.pass_context
def backup_cmd(
    ctx: click.Context,
    out: str,
    server: str | None,
    token: str | None,
    tls: bool,
    ca_cert: str | None,
    batch_size: int,
    quiet: bool,
    as_json: bool,
) -> None:
    """Write a consistent backup of the store to OUT (a tar archive: the catalogue and the live
    generation of every indexed model, checked against their integrity seals). With --server
    the running server takes it while it keeps answering queries."""
    from neuronatlas.core.store import transfer as T

    t0 = time.perf_counter()
    if server:
        from neuronatlas.service.admin import download_backup
        from neuronatlas.service.client import Client

        with Client(server, token=token, tls=ca_cert or tls) as client:
            manifest = download_backup(
                client._channel, out, metadata=client._metadata, batch_size=batch_size
            )
    else:
        from neuronatlas.core.store import open_store

        with open_store(_settings(ctx)) as store:
            manifest = T.write_backup(store, out, batch_size, progress=_Progress(quiet))
    size = Path(out).stat().st_size
    summary = {
        "path": str(out),
        "bytes": size,
        "models": [m["model_id"] for m in manifest["models"]],
        "neuron_points": manifest["neuron_points"],
        "catalogue_points": manifest["catalogue"]["points"],
        "warnings": manifest["warnings"],
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(
        f"backup {out}: {len(summary['models'])} models, {summary['neuron_points']} neuron "
        f"points, {summary['catalogue_points']} catalogue points, {size / 2**20:.1f} MiB in "
        f"{summary['elapsed_s']:.1f} s"
    )
    for w in manifest["warnings"]:
        click.echo(f"WARNING {w}")


@click.command("restore")
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace the contents of a store that holds data.")
@click.option("--no-verify", is_flag=True, help="Skip the full integrity check afterwards.")
@click.option("--quiet", is_flag=True, help="No progress lines.")
@click.pass_context
def restore_cmd(
    ctx: click.Context, archive: str, force: bool, no_verify: bool, quiet: bool
) -> None:
    """Load a backup ARCHIVE into the configured store (stop the server first). A store that
    holds data is refused unless --force (which deletes its contents first). Ends with the
    full integrity check (`neuronatlas verify`); exit status 1 if it fails."""
    from neuronatlas.core.store import open_store
    from neuronatlas.core.store import transfer as T

    T.read_manifest(archive)  # a bad archive is refused before the store is touched
    store = open_store(_settings(ctx))
    try:
        store, result = T.restore(store, archive, force=force, progress=_Progress(quiet))
        report = None if no_verify else store.verify()
    finally:
        store.close()
    click.echo(
        f"restored {archive}: {result.models} models, {result.neurons} neuron points, "
        f"{result.catalogue} catalogue points in {result.elapsed_s:.1f} s"
        + (" (the store's previous contents were deleted)" if result.wiped else "")
    )
    for w in result.warnings:
        click.echo(f"WARNING {w}")
    if report is not None:
        click.echo(_verify_line(report))
        if not report.ok:
            raise SystemExit(1)


COMMANDS: list[click.Command] = [migrate_cmd, backup_cmd, restore_cmd]
