"""AIP-158 paging for the gRPC API: page sizes and opaque, integrity-checked page tokens.

A page token is 25 bytes, base64url without padding (34 characters)::

    version (1 byte, 1) | offset (8 bytes, big-endian) | tag (16 bytes)
    tag = HMAC-SHA256(key, "neuronatlas.page-token.v1" | request message full name
                           | SHA-256 of the request without page_size and page_token | offset)[:16]

Only the server mints tokens, and it parses nothing it did not sign: a token of another RPC,
of the same RPC with other parameters, from a server with another key, cut short, padded or
made up is refused with INVALID_ARGUMENT naming ``page_token`` before any field of it is used
(no JSON, no numbers from the caller). The offset is not secret, only unforgeable.

The key (:meth:`PageTokens.load`): the ``page_token_key`` setting / ``NEURONATLAS_PAGE_TOKEN_KEY``
(a secret of at least 16 characters; give every replica behind one address the same one), else
a random key created once and kept in the home (``<home>/page_token.key``, mode 0600) so tokens
survive a restart, else (no home, or a read-only one) a random key for this process. Tokens of a
server that changed its key are refused like any other foreign token; the typed client then
starts its walk over.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import secrets
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path

from google.protobuf.message import Message

from neuronatlas.core.config import Home, HomeLike
from neuronatlas.core.errors import InvalidArgument

log = logging.getLogger("neuronatlas.service")

KEY_ENV = "NEURONATLAS_PAGE_TOKEN_KEY"
MIN_SECRET_CHARS = 16
VERSION = 1
TAG_BYTES = 16
_HEAD = struct.Struct(">BQ")
TOKEN_BYTES = _HEAD.size + TAG_BYTES
TOKEN_CHARS = len(base64.urlsafe_b64encode(b"\0" * TOKEN_BYTES).rstrip(b"="))
_CONTEXT = b"neuronatlas.page-token.v1\0"
_MAX_OFFSET = 2**63 - 1


def page_size(requested: int, default: int, maximum: int, field: str = "page_size") -> int:
    """0 -> ``default``; above ``maximum`` -> clamped; negative -> InvalidArgument."""
    if requested < 0:
        raise InvalidArgument(f"{field} must not be negative, got {requested}", field=field)
    if requested == 0:
        return min(default, maximum)
    return min(requested, maximum)


def fingerprint(request: Message) -> bytes:
    """SHA-256 of the request's parameters: every field except page_size and page_token."""
    clone = type(request)()
    clone.CopyFrom(request)
    for name in ("page_token", "page_size"):
        clone.ClearField(name)
    return hashlib.sha256(clone.SerializeToString(deterministic=True)).digest()


def _refused(why: str) -> InvalidArgument:
    return InvalidArgument(
        f"page_token {why}; pass the next_page_token of the previous response to the same "
        "request unchanged, or no page_token for the first page",
        field="page_token",
    )


class PageTokens:
    """Mints and checks the page tokens of one server (one key)."""

    def __init__(self, key: bytes, source: str = "given"):
        if len(key) < 16:
            raise ValueError("a page-token key has at least 16 bytes")
        self._key = bytes(key)
        self.source = source  # where the key came from: setting, home, process, given

    def __repr__(self) -> str:  # never the key
        return f"PageTokens(source={self.source!r})"

    # -- the key ------------------------------------------------------------------------------
    @classmethod
    def random(cls) -> PageTokens:
        """A key for this process only: tokens die with it."""
        return cls(secrets.token_bytes(32), "process")

    @classmethod
    def from_secret(cls, secret: str, where: str = KEY_ENV) -> PageTokens:
        """The key derived from a shared secret (every replica given it mints the same tokens)."""
        if len(secret) < MIN_SECRET_CHARS:
            raise InvalidArgument(
                f"{where} must be at least {MIN_SECRET_CHARS} characters", field="page_token_key"
            )
        return cls(hashlib.sha256(b"neuronatlas page tokens\0" + secret.encode()).digest(), where)

    @classmethod
    def load(
        cls,
        secret: str | None = None,
        home: HomeLike | None = None,
        env: Mapping[str, str] | None = None,
    ) -> PageTokens:
        """The server's key: ``secret`` (the setting), else ``NEURONATLAS_PAGE_TOKEN_KEY``, else
        the key kept in ``home`` (created on first use), else a key for this process."""
        env = os.environ if env is None else env
        if secret:
            return cls.from_secret(secret, "page_token_key")
        if env.get(KEY_ENV):
            return cls.from_secret(env[KEY_ENV], KEY_ENV)
        if home is not None:
            path = Home.of(home).page_token_key
            try:
                return cls(_home_key(path), "home")
            except OSError as e:
                log.warning(
                    "cannot keep the page-token key in %s (%s): page tokens are valid for this "
                    "process only; set %s to share one",
                    path,
                    e.strerror or e,
                    KEY_ENV,
                )
        return cls.random()

    # -- tokens -------------------------------------------------------------------------------
    def _tag(self, request: Message, offset: int) -> bytes:
        mac = hmac.new(self._key, _CONTEXT, hashlib.sha256)
        mac.update(request.DESCRIPTOR.full_name.encode() + b"\0")
        mac.update(fingerprint(request))
        mac.update(struct.pack(">Q", offset))
        return mac.digest()[:TAG_BYTES]

    def encode(self, request: Message, offset: int | None) -> str:
        """The next_page_token of a page that ends at ``offset`` ("" when there is no next page)."""
        if offset is None:
            return ""
        offset = int(offset)
        if not 0 <= offset <= _MAX_OFFSET:
            raise ValueError(f"offset {offset} out of range")
        raw = _HEAD.pack(VERSION, offset) + self._tag(request, offset)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def offset_of(self, request: Message, token: str) -> int:
        """The offset ``token`` (issued for ``request``) points at; 0 for no token."""
        if not token:
            return 0
        if len(token) != TOKEN_CHARS or not token.isascii():
            raise _refused("is not a token this service issued")
        try:
            raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise _refused("is not a token this service issued") from None
        canonical = base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
        if len(raw) != TOKEN_BYTES or raw[0] != VERSION or canonical != token:
            raise _refused("is not a token this service issued")
        _, offset = _HEAD.unpack_from(raw)
        if offset > _MAX_OFFSET or not hmac.compare_digest(
            raw[_HEAD.size :], self._tag(request, offset)
        ):
            raise _refused("was not issued for this request (or by this server)")
        return int(offset)

    def decode(self, request: Message) -> int:
        """The offset a request's page_token points at (0 without a token)."""
        return self.offset_of(request, request.page_token)


def _home_key(path: Path) -> bytes:
    """The 32-byte key kept at ``path``: read it, or create it once (atomically: concurrent
    servers on one home agree on the first one written)."""
    try:
        key = bytes.fromhex(path.read_text().strip())
        if len(key) == 32:
            return key
        log.warning("page-token key file %s is malformed: replacing it", path)
        replace = True
    except FileNotFoundError:
        replace = False
    except ValueError:
        log.warning("page-token key file %s is malformed: replacing it", path)
        replace = True
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_bytes(32).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if another server created it meanwhile: use theirs
            except FileExistsError:
                pass
    finally:
        Path(tmp).unlink(missing_ok=True)
    key = bytes.fromhex(path.read_text().strip())
    if len(key) != 32:
        raise OSError(f"page-token key file {path} is malformed")
    return key
