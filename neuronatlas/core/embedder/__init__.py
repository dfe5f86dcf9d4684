"""Foundation-model embedders, chosen by a spec string:

- ``open_clip:ARCH:TAG`` — open_clip architecture with pretrained weights (downloaded once);
- ``open_clip:ARCH:/path/to/checkpoint.pt`` — the same with a local weights file;
- ``open_clip:ARCH:random`` / ``open_clip:ARCH:random:SEED`` — deterministic random weights
  (tests and offline smoke runs; ``open_clip:na-tiny:random:0`` is the tiny test model);
- ``py:package.module:factory`` or ``py:path/to/file.py:factory`` — your own model, see
  :mod:`neuronatlas.core.embedder.plugin`.
"""

from __future__ import annotations

from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import InvalidArgument

__all__ = ["Embedder", "load_embedder", "parse_spec"]

SPEC_HELP = (
    "open_clip:ARCH:TAG, open_clip:ARCH:/path/to/file.pt, open_clip:ARCH:random[:SEED] "
    "or py:package.module:factory / py:path/to/file.py:factory"
)


def parse_spec(spec: str) -> tuple[str, str, str]:
    """Split a spec into ``(kind, target, weights)``: ``("open_clip", ARCH, WEIGHTS)`` or
    ``("py", "package.module:factory", "")``."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidArgument(f"empty embedder spec; use {SPEC_HELP}", field="embedder")
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if kind == "py" and sep and rest:
        return "py", rest, ""
    if kind == "open_clip" and sep and rest:
        arch, _, weights = rest.partition(":")
        if arch:
            return "open_clip", arch, weights
    raise InvalidArgument(
        f"embedder spec {spec!r} not understood; use {SPEC_HELP}", field="embedder"
    )


def load_embedder(spec: str, device: str = "auto") -> Embedder:
    """Load the embedder named by ``spec`` on ``device`` (``auto`` = CUDA if available, else CPU).

    Raises ``InvalidArgument`` for a malformed spec, unknown architecture/tag or bad plug-in,
    and ``WeightsUnavailable`` when the weights cannot be downloaded or read.
    """
    kind, target, weights = parse_spec(spec)
    if kind == "py":
        from neuronatlas.core.embedder.plugin import load_plugin

        return load_plugin(target, device=device)
    from neuronatlas.core.embedder.openclip import load_open_clip

    return load_open_clip(target, weights, device=device)
