"""AIP-158 paging for the gRPC API: page sizes and opaque page tokens.

A token carries the offset of the next page and a fingerprint of the request it belongs to
(every field except page_size and page_token), so it cannot be replayed against another query.
The typed client (``client.py``) shares this format: it asks for the page at an offset by
minting the token for its own request, and reads the next offset back from the response's.
"""

from __future__ import annotations

import base64
import hashlib
import json

from google.protobuf.message import Message

from neuronatlas.core.errors import InvalidArgument


def page_size(requested: int, default: int, maximum: int, field: str = "page_size") -> int:
    """0 -> ``default``; above ``maximum`` -> clamped; negative -> InvalidArgument."""
    if requested < 0:
        raise InvalidArgument(f"{field} must not be negative, got {requested}", field=field)
    if requested == 0:
        return min(default, maximum)
    return min(requested, maximum)


def _fingerprint(request: Message) -> str:
    clone = type(request)()
    clone.CopyFrom(request)
    for name in ("page_token", "page_size"):
        clone.ClearField(name)
    return hashlib.sha256(clone.SerializeToString(deterministic=True)).hexdigest()[:16]


def encode_token(request: Message, offset: int | None) -> str:
    """The next_page_token for a page that ends at ``offset`` ("" when there is no next page)."""
    if offset is None:
        return ""
    raw = json.dumps({"o": int(offset), "f": _fingerprint(request)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(request: Message) -> int:
    """The offset a request's page_token points at (0 without a token)."""
    offset = offset_of(request, request.page_token)
    return 0 if offset is None else offset


def offset_of(request: Message, token: str) -> int | None:
    """The offset ``token`` (issued for ``request``) points at; None for "" (no next page)."""
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset, fp = int(data["o"]), str(data["f"])
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument(
            "page_token is not a token this service issued", field="page_token"
        ) from None
    if offset < 0 or fp != _fingerprint(request):
        raise InvalidArgument("page_token belongs to a different request", field="page_token")
    return offset
