"""The indexer's public entry points: register a model, index it (``build_index``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neuronatlas.core.config import HomeLike
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import AlreadyExists, NotFound
from neuronatlas.core.imports import absolute_ref
from neuronatlas.core.records import ModelEntry, ModelStatus, validate_model_id
from neuronatlas.core.store import KnowledgeStore

from .layers import check_input
from .pipeline import IndexOptions, index_model
from .probes import open_probe_set
from .sources import artifact_resolver, build_model

_PATH_KEYS = ("weights", "path")


def normalise_source(source: dict[str, Any]) -> dict[str, Any]:
    """Copy of a source with local file paths made absolute (weights enum names untouched; a
    ``path/to/file.py:fn`` factory gets an absolute path, a module factory stays as is)."""
    out = dict(source)
    for key in _PATH_KEYS:
        val = out.get(key)
        if isinstance(val, str) and val and ("/" in val or Path(val).expanduser().exists()):
            out[key] = str(Path(val).expanduser().resolve())
    if isinstance(out.get("factory"), str):
        out["factory"] = absolute_ref(out["factory"])
    return out


def register_model(
    store: KnowledgeStore,
    model_id: str,
    source: dict[str, Any],
    *,
    display_name: str = "",
    training_data: str = "",
    tags: list[str] | None = None,
    notes: str = "",
    replace: bool = False,
    resolve: Callable[[str], str] | None = None,
    extra: dict[str, Any] | None = None,
) -> ModelEntry:
    """Build the model once and run it on one zero batch of its transform's input size (so bad
    weights or a wrong input size fail here, before anything is written) and write its
    catalogue entry (with the effective transform). Registering the same source again returns
    the existing entry; another source under a taken id needs ``replace=True`` (the entry
    returns to ``registered``, whatever it was: ``failed`` after a failed first index, or a
    stale ``indexing`` left by a killed run; an indexed model keeps serving nothing until it
    is indexed again). ``resolve`` maps ``artifact:<sha256>`` file values to the stored files
    (the entry keeps the reference); ``extra`` is merged into the entry's ``extra``."""
    validate_model_id(model_id)
    source = normalise_source(source)
    built = build_model(source, resolve)
    check_input(built.module, built.input.shape, built.input.describe())
    try:
        old = store.get_model(model_id)
    except NotFound:
        old = None
    if old is not None and old.source == source and old.weights_sha256 == built.weights_sha256:
        changed = dict(extra or {})
        if old.transform != built.input.to_dict() or any(
            old.extra.get(k) != v for k, v in changed.items()
        ):  # an entry from before transforms were kept, or new bookkeeping to record
            old.transform = built.input.to_dict()
            old.extra = {**old.extra, **changed}
            store.put_model(old)
        return old
    if old is not None and not replace:
        raise AlreadyExists(
            f"model {model_id!r} is already registered with another source "
            f"({_describe_source(old.source)}); use another id, or replace it (register "
            "--replace)"
        )
    entry = ModelEntry(
        model_id=model_id,
        display_name=display_name or model_id,
        architecture=built.architecture,
        source=source,
        weights_sha256=built.weights_sha256,
        training_data=training_data or built.training_data,
        tags=list(tags or []),
        notes=notes,
        generation=old.generation if old is not None else 0,
        extra={
            "parameters": int(sum(p.numel() for p in built.module.parameters())),
            **(extra or {}),
        },
        transform=built.input.to_dict(),
    )
    if old is not None:
        entry.created_at, entry.updated_at = old.created_at, time.time()
    entry.status = ModelStatus.REGISTERED
    store.put_model(entry)
    return entry


def _describe_source(source: dict[str, Any]) -> str:
    keys = ("kind", "depth", "name", "weights", "path", "factory")
    return ", ".join(f"{k}={source[k]}" for k in keys if k in source)[:200]


def build_index(
    store: KnowledgeStore,
    embedder: Embedder,
    *,
    model_id: str,
    source: dict[str, Any],
    probe_dir: Path,
    probe_name: str,
    home: HomeLike,
    vocabularies: dict[str, Path] | None = None,
    layers: list[str] | None = None,
    k: int = 20,
    probe_limit: int | None = None,
    batch_size: int = 256,
    progress: bool = True,
    replace: bool = False,
    **options: Any,
) -> ModelEntry:
    """Register the model if needed (``replace``: over a registration with another source, e.g.
    one whose first index failed), register/embed the probe set (cached under the home's
    ``cache/``), index, and return the final catalogue entry. Extra keyword arguments go
    to :class:`IndexOptions` (``weighted``, ``conv_aggregation``, ``checkpoint_every``...)."""
    register_model(store, model_id, source, replace=replace, resolve=artifact_resolver(home))
    probe = open_probe_set(home, probe_name, probe_dir, probe_limit, progress=progress)
    opt = IndexOptions(layers=layers, k=k, batch_size=batch_size, progress=progress, **options)
    return index_model(store, embedder, model_id, probe, home, vocabularies, opt)
