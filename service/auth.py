"""Bearer-token authentication with four scopes: ``read`` (all queries), ``write`` (also the
catalogue maintenance and indexing calls of ZooService), ``worker`` (reads, and leasing jobs:
ClaimJob / ReportJob) and ``admin`` (everything, also DeleteModel and VerifyStore).

``admin`` implies ``write`` and ``worker``; ``write`` and ``worker`` imply ``read``. Method
scopes are in :data:`METHOD_SCOPES` (for ZooService as the header comment of ``zoo.proto``
says); a NeuronAtlasService method missing from it is a query (read), a method of another of
our services missing from it (AdminService, or a new ZooService method) needs ``admin``: closed
until it is given a scope.

Tokens come from ``NEURONATLAS_TOKENS`` (entries ``scope:token`` separated by commas or
whitespace) and/or a file (``NEURONATLAS_TOKENS_FILE`` or ``--tokens-file``; one ``scope:token``
per line, ``#`` comments). With no token configured the server runs open. Tokens are never
logged or shown: only their count per scope.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc

from neuronatlas.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from neuronatlas.core.validate import shown
from neuronatlas.service.errors import to_rpc_status

log = logging.getLogger("neuronatlas.service")

READ, WRITE, WORKER, ADMIN = "read", "write", "worker", "admin"
SCOPES = (READ, WRITE, WORKER, ADMIN)
#: what each scope may do besides itself
IMPLIES: dict[str, frozenset[str]] = {
    READ: frozenset({READ}),
    WRITE: frozenset({WRITE, READ}),
    WORKER: frozenset({WORKER, READ}),
    ADMIN: frozenset(SCOPES),
}
MIN_TOKEN_CHARS = 8
OURS = "/neuronatlas.v1."
SERVICE = OURS + "NeuronAtlasService/"
ZOO = OURS + "ZooService/"
METHOD_SCOPES: dict[str, str] = {
    **{
        SERVICE + m: READ
        for m in (
            "SearchNeurons",
            "BatchSearchNeurons",
            "GetNeuron",
            "DescribeNeuron",
            "FindNeuronsByLabel",
            "ListModels",
            "GetModel",
            "GetStats",
            "CompareModels",
            "AuditModel",
            "ExplainClass",
        )
    },
    SERVICE + "DeleteModel": ADMIN,
    SERVICE + "VerifyStore": ADMIN,
    **{
        ZOO + m: READ
        for m in (
            "ListProbeSets",
            "GetOperation",
            "ListOperations",
            "WaitOperation",
            "GetSampleImages",
        )
    },
    **{
        ZOO + m: WRITE
        for m in (
            "RegisterModel",
            "UpdateModel",
            "UploadArtifact",
            "RegisterProbeSet",
            "IndexModel",
            "CancelOperation",
        )
    },
    ZOO + "ClaimJob": WORKER,
    ZOO + "ReportJob": WORKER,
    "/neuronatlas.v1.AdminService/BackupStore": ADMIN,  # the whole store, as an archive
}
ADMIN_METHODS = frozenset(m for m, scope in METHOD_SCOPES.items() if scope == ADMIN)
# Health checks and reflection stay open so probes and `buf curl` work without a token.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.v1alpha.", "/grpc.reflection.v1.")


def allows(scopes: str | list[str] | None, need: str) -> bool:
    """Whether a token with ``scopes`` (one or several) may call a method needing ``need``."""
    if scopes is None:
        return False
    for scope in [scopes] if isinstance(scopes, str) else scopes:
        if need in IMPLIES.get(scope, frozenset()):
            return True
    return False


class TokenSet:
    """Known tokens and their scopes (see :data:`IMPLIES`)."""

    def __init__(self, tokens: Mapping[str, str] | None = None):
        self._tokens: list[tuple[bytes, str]] = []
        for token, scope in (tokens or {}).items():
            self.add(scope, token)

    def add(self, scope: str, token: str, where: str = "tokens") -> None:
        if scope not in SCOPES:
            raise InvalidArgument(
                f"{where}: unknown scope {shown(scope)} (use {', '.join(SCOPES)})",
                field="tokens",
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

    def scopes_of(self, token: str) -> list[str]:
        """The scopes a token is listed under (empty: unknown). Compares in constant time
        against every token."""
        given = token.encode()
        return [scope for known, scope in self._tokens if hmac.compare_digest(known, given)]

    def scope_of(self, token: str) -> str | None:
        """The widest scope of a token (admin, else the first listed), or None."""
        scopes = self.scopes_of(token)
        return ADMIN if ADMIN in scopes else (scopes[0] if scopes else None)

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def __repr__(self) -> str:  # never the tokens themselves
        counts = {s: sum(1 for _, sc in self._tokens if sc == s) for s in SCOPES}
        return "TokenSet(" + ", ".join(f"{s}={n}" for s, n in counts.items()) + ")"


def required_scope(method: str) -> str | None:
    """The scope a full method name needs; None for open methods (health, reflection). A
    NeuronAtlasService method without an entry in :data:`METHOD_SCOPES` is a query (read); a
    method of another ``neuronatlas.v1`` service without one (e.g. AdminService's) needs
    admin; any other path (an unknown service or method) needs read and then gets
    UNIMPLEMENTED."""
    if method.startswith(OPEN_PREFIXES):
        return None
    scope = METHOD_SCOPES.get(method)
    if scope is not None:
        return scope
    if method.startswith(SERVICE):  # the query service: a new query is a read
        return READ
    return ADMIN if method.startswith(OURS) and _known(method) else READ


@functools.cache
def _our_services() -> dict[str, frozenset[str]]:
    """Full service name -> method names, of every generated ``neuronatlas.v1`` module."""
    import importlib
    import pkgutil

    import neuronatlas.v1 as v1

    out: dict[str, frozenset[str]] = {}
    for info in pkgutil.iter_modules(v1.__path__):
        if not info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"{v1.__name__}.{info.name}")
        for svc in module.DESCRIPTOR.services_by_name.values():
            out[svc.full_name] = frozenset(svc.methods_by_name)
    return out


def _known(method: str) -> bool:
    """Whether a full method name is a method of one of our services."""
    service, _, name = method.strip("/").partition("/")
    return name in _our_services().get(service, frozenset())


def _bearer(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            kind, _, token = str(value).partition(" ")
            return token.strip() if kind.lower() == "bearer" else ""
    return None


def _reject(
    exc: Exception,
    details: grpc.HandlerCallDetails | None = None,
    continuation: Callable | None = None,
) -> grpc.RpcMethodHandler:
    """A handler that refuses the call with ``exc``'s status, of the same kind (unary or
    streaming) as the method's own handler so a streaming client gets the refusal too."""
    status = to_rpc_status(exc)

    def abort(request, context: grpc.ServicerContext):
        context.abort_with_status(status)

    handler = continuation(details) if continuation is not None and details is not None else None
    if handler is not None and handler.request_streaming:
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(abort)
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler is not None and handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
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
                Unauthenticated("missing bearer token (metadata 'authorization: Bearer <token>')"),
                details,
                continuation,
            )
        scopes = self.tokens.scopes_of(token)
        if not scopes:
            log.warning("rejected call to %s: unknown token", details.method)
            return _reject(Unauthenticated("unknown bearer token"), details, continuation)
        if not allows(scopes, need):
            return _reject(
                PermissionDenied(
                    f"{details.method.rsplit('/', 1)[-1]} needs the {need} scope (this token "
                    f"has {', '.join(dict.fromkeys(scopes))})"
                ),
                details,
                continuation,
            )
        return continuation(details)
