"""Click option groups shared by the service and indexer commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

BEARER_TOKEN_HELP = "Bearer token (env NEURONATLAS_TOKEN)."


def tls_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--tls (system roots) and --ca-cert (a PEM CA bundle): ``tls`` and ``ca_cert`` arguments."""
    fn = click.option(
        "--ca-cert",
        type=click.Path(dir_okay=False, exists=True),
        default=None,
        help="Connect with TLS trusting this PEM CA bundle.",
    )(fn)
    return click.option("--tls", "tls", is_flag=True, help="Connect with TLS (system roots).")(fn)


def server_options(
    server_help: str,
    *,
    token_help: str = BEARER_TOKEN_HELP,
    required: bool = False,
    timeout: float | None = None,
) -> _Decorator:
    """--server/--token/--tls/--ca-cert and, with a default ``timeout``, --timeout: the
    arguments ``server``, ``token``, ``tls``, ``ca_cert`` (and ``timeout``)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if timeout is not None:
            fn = click.option(
                "--timeout",
                type=float,
                default=timeout,
                show_default=True,
                help="Deadline per call, seconds.",
            )(fn)
        fn = tls_options(fn)
        fn = click.option("--token", envvar="NEURONATLAS_TOKEN", default=None, help=token_help)(fn)
        server: dict[str, Any] = {"required": True} if required else {"default": None}
        return click.option(
            "--server",
            envvar="NEURONATLAS_SERVER",
            metavar="HOST:PORT",
            help=server_help,
            **server,
        )(fn)

    return decorate


#: the arguments ``server_options`` gives a command
CONNECTION_ARGS = ("server", "token", "tls", "ca_cert", "timeout")


def pop_connection(kwargs: dict[str, Any]) -> tuple[str | None, str | None, bool | str, float]:
    """Take ``server_options``' arguments out of a command's ``kwargs``: (server, token, tls —
    the CA bundle's path, or the --tls flag —, timeout)."""
    server, token, tls, ca_cert, timeout = (kwargs.pop(name, None) for name in CONNECTION_ARGS)
    return server, token, ca_cert or bool(tls), timeout
