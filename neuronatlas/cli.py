"""The ``neuronatlas`` command. Each app contributes its own commands:

- ``neuronatlas.indexer.cli``: register, probe, index, show
- ``neuronatlas.service.cli``: serve, search, neuron, labels, models (and models update), stats,
  verify, delete
- ``neuronatlas.service.compare_cli``: compare, audit
- ``neuronatlas.service.jobs_cli``: jobs (indexing operations), worker
"""

from __future__ import annotations

import errno
import sys

import click

from neuronatlas.core.errors import NeuronAtlasError
from neuronatlas.indexer import cli as indexer_cli
from neuronatlas.service import cli as service_cli
from neuronatlas.service import compare_cli, jobs_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="neuronatlas")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="TOML config file (default: $NEURONATLAS_HOME/config.toml).",
)
@click.option("--home", default=None, help="Data directory (env NEURONATLAS_HOME).")
@click.option(
    "--backend",
    type=click.Choice(["edge", "remote"]),
    default=None,
    help="Store backend: embedded Qdrant Edge (default) or a Qdrant server.",
)
@click.option(
    "--store", "store_path", default=None, help="Embedded store directory (default <home>/store)."
)
@click.option("--qdrant-url", "url", default=None, help="Remote Qdrant URL (env NEURONATLAS_URL).")
@click.option(
    "--embedder",
    default=None,
    help="Embedder spec: open_clip:ARCH:TAG|/path/ckpt.pt, or py:package.module:factory "
    "or py:path/to/file.py:factory.",
)
@click.pass_context
def cli(ctx: click.Context, config_file, home, backend, store_path, url, embedder) -> None:
    """NeuronAtlas: index the neurons of vision models and query them across a model zoo."""
    ctx.obj = {
        "settings_args": {
            "config_file": config_file,
            "home": home,
            "backend": backend,
            "store_path": store_path,
            "url": url,
            "embedder": embedder,
        }
    }


def settings_from(ctx: click.Context):
    """Settings for a command, from the root options (+ env + config file)."""
    from neuronatlas.core.config import load_settings
    from neuronatlas.core.errors import InvalidArgument

    args = dict(ctx.find_root().obj["settings_args"])
    config_file = args.pop("config_file")
    settings = load_settings(config_file, **args)
    for what, path in (("--home", settings.home), ("--store", settings.store_path)):
        if path is not None and path.exists() and not path.is_dir():
            raise InvalidArgument(
                f"{what} {path} is a file, not a directory: name a directory (it is created "
                "if missing)",
                field=what.lstrip("-"),
            )
    return settings


_OS_HINTS = {
    errno.EROFS: "the file system is read-only: use a writable --home / --store / --out",
    errno.EACCES: "permission denied: use a path this user may write, or fix its permissions",
    errno.EPERM: "operation not permitted: use a path this user may write",
    errno.ENOTDIR: "a part of the path is a regular file, not a directory",
    errno.EEXIST: "a regular file is in the way where a directory is needed",
    errno.EISDIR: "it is a directory where a file is needed",
    errno.ENOSPC: "the disk is full",
    errno.ENOENT: "no such file or directory",
}


def describe_os_error(e: OSError) -> str:
    """One line for a failed file operation: what, where, and how to fix it."""
    where = e.filename if e.filename is not None else ""
    why = _OS_HINTS.get(e.errno or 0) or (e.strerror or str(e) or type(e).__name__)
    return f"{where}: {why}" if where else why


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# The apps' commands (their modules import ``settings_from`` back only when a command runs).
for _cmd in (
    *indexer_cli.COMMANDS,
    *service_cli.COMMANDS,
    *compare_cli.COMMANDS,
    *jobs_cli.COMMANDS,
):
    cli.add_command(_cmd)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except NeuronAtlasError as e:
        click.echo(f"error: {_one_line(str(e))}", err=True)
        sys.exit(2)
    except OSError as e:  # a path the user named cannot be used: say which and why
        click.echo(f"error: {_one_line(describe_os_error(e))}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
