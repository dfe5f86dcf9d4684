"""Bearer-token authentication with two scopes: ``read`` (all queries) and ``admin`` (also
DeleteModel and VerifyStore).

Tokens come from ``NEURONATLAS_TOKENS`` (entries ``scope:token`` separated by commas or
whitespace) and/or a file (``NEURONATLAS_TOKENS_FILE`` or ``--tokens-file``; one ``scope:token``
per line, ``#`` comments). With no token configured the server runs open. Tokens are never
logged or shown: only their count per scope.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc

from neuronatlas.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from neuronatlas.service.errors import to_rpc_status

log = logging.getLogger("neuronatlas.service")

READ, ADMIN = "read", "admin"
SCOPES = (READ, ADMIN)
MIN_TOKEN_CHARS = 8
SERVICE = "/neuronatlas.v1.NeuronAtlasService/"
ADMIN_METHODS = frozenset({SERVICE + "DeleteModel", SERVICE + "VerifyStore"})
# Health checks and reflection stay open so probes and `buf curl` work without a token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.", "/grpc.reflection.v1.")


class TokenSet:
    """Known tokens and their scopes. ``admin`` implies ``read``."""

    def __init__(self, tokens: Mapping[str, str] | None = None):
        self._tokens: list[tuple[bytes, str]] = []
        for token, scope in (tokens or {}).items():
            self.add(scope, token)

    def add(self, scope: str, token: str, where: str = "tokens") -> None:
        if scope not in SCOPES:
            raise InvalidArgument(
                f"{where}: unknown scope {scope!r} (use read or admin)", field="tokens"
            )
        if len(token) < MIN_TOKEN_CHARS or re.search(r"\s", token):
            raise InvalidArgument(
                f"{where}: a {scope} token is shorter than {MIN_TOKEN_CHARS} characters or "
                "contains whitespace",
                field="tokens",
            )
        self._tokens.append((token.encode(), scope))

    def parse(self, text: str, where: str) -> None:
        """Add ``scope:token`` entries separated by newlines, commas or whitespace."""
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0]
            for entry in re.split(r"[,\s]+", line.strip()):
                if not entry:
                    continue
                scope, sep, token = entry.partition(":")
                if not sep:
                    raise InvalidArgument(f"{where} line {n}: expected scope:token", field="tokens")
                self.add(scope.strip().lower(), token, f"{where} line {n}")

    @classmethod
    def load(
        cls, file: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
    ) -> TokenSet:
        """Tokens from the environment and the given (or ``NEURONATLAS_TOKENS_FILE``) file."""
        env = os.environ if env is None else env
        out = cls()
        if env.get("NEURONATLAS_TOKENS"):
            out.parse(env["NEURONATLAS_TOKENS"], "NEURONATLAS_TOKENS")
        path = file or env.get("NEURONATLAS_TOKENS_FILE")
        if path:
            p = Path(path).expanduser()
            try:
                text = p.read_text()
            except OSError as e:
                raise InvalidArgument(
                    f"cannot read tokens file {p}: {e.strerror}", field="tokens_file"
                ) from None
            out.parse(text, str(p))
        return out

    def scope_of(self, token: str) -> str | None:
        """The scope of a token, or None. Compares in constant time against every token."""
        given = token.encode()
        found = None
        for known, scope in self._tokens:
            if hmac.compare_digest(known, given):
                found = scope if found != ADMIN else found
        return found

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def __repr__(self) -> str:  # never the tokens themselves
        counts = {s: sum(1 for _, sc in self._tokens if sc == s) for s in SCOPES}
        return f"TokenSet(read={counts[READ]}, admin={counts[ADMIN]})"


def required_scope(method: str) -> str | None:
    """The scope a full method name needs; None for open methods."""
    if method.startswith(OPEN_PREFIXES):
        return None
    return ADMIN if method in ADMIN_METHODS else READ


def _bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            kind, _, token = str(value).partition(" ")
            return token.strip() if kind.lower() == "bearer" else ""
    return None


def _reject(exc: Exception) -> grpc.RpcMethodHandler:
    status = to_rpc_status(exc)

    def abort(request, context: grpc.ServicerContext):
        context.abort_with_status(status)

    return grpc.unary_unary_rpc_method_handler(abort)


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks ``authorization: Bearer <token>`` and the method's scope before the handler runs."""

    def __init__(self, tokens: TokenSet):
        self.tokens = tokens

    def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails):
        need = required_scope(details.method)
        if need is None:
            return continuation(details)
        token = _bearer(details.invocation_metadata)
        if not token:
            return _reject(
                Unauthenticated("missing bearer token (metadata 'authorization: Bearer <token>')")
            )
        scope = self.tokens.scope_of(token)
        if scope is None:
            log.warning("rejected call to %s: unknown token", details.method)
            return _reject(Unauthenticated("unknown bearer token"))
        if need == ADMIN and scope != ADMIN:
            return _reject(
                PermissionDenied(f"{details.method.rsplit('/', 1)[-1]} needs the admin scope")
            )
        return continuation(details)
