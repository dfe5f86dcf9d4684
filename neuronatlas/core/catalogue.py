"""Catalogue maintenance that is neither a query nor indexing: changing a model's metadata, the
probe sets as the service describes them, and thumbnails of probe images.

- :func:`update_metadata`: the fields a person may change on a catalogue entry (display name,
  tags, notes, training data), validated (``core/validate.py``) and written in one
  ``put_model``;
- :class:`ProbeSetInfo`: what the service says about a registered probe set;
- :class:`SampleImage` and :func:`thumbnail`: a probe image as a small PNG, decoded with the
  same bounds as query images (formats, declared pixel count) so a hostile image in an
  uploaded probe archive cannot exhaust the server.

Nothing here knows about gRPC or the indexer.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuronatlas.core import validate as V
from neuronatlas.core.errors import FailedPrecondition, InvalidArgument
from neuronatlas.core.records import ModelEntry
from neuronatlas.core.store.base import KnowledgeStore

#: the catalogue fields UpdateModel / ``models update`` may change
METADATA_FIELDS = ("display_name", "tags", "notes", "training_data")

DEFAULT_THUMBNAIL = 96
MAX_THUMBNAIL = 512
MAX_SAMPLE_INDICES = 64
# probe images are the server's own files (or an uploaded archive's): allow larger images than
# queries, but not decompression bombs
MAX_PROBE_IMAGE_PIXELS = 64 * 1024 * 1024

_update_lock = threading.Lock()


def check_update(changes: dict[str, Any], field_prefix: str = "") -> dict[str, Any]:
    """``changes`` (field -> new value) limited to ``METADATA_FIELDS`` and validated."""
    if not changes:
        raise InvalidArgument(
            f"name at least one field to change ({', '.join(METADATA_FIELDS)})",
            field="update_mask",
        )
    for name in changes:
        if name not in METADATA_FIELDS:
            raise InvalidArgument(
                f"field {V.shown(name)} cannot be changed; only {', '.join(METADATA_FIELDS)}",
                field="update_mask",
            )
    V.check_metadata(**changes, prefix=field_prefix)
    return {k: (list(v) if k == "tags" else v) for k, v in changes.items()}


def update_metadata(store: KnowledgeStore, model_id: str, changes: dict[str, Any]) -> ModelEntry:
    """Change the metadata fields in ``changes`` of a model's entry in one catalogue write
    (``display_name`` "" means the model id again). Updates in this process are serialised;
    the indexer re-reads the entry before each of its own writes, so a change made while a
    model is indexed is kept."""
    V.check_model_id(model_id)
    changes = check_update(dict(changes))
    with _update_lock:
        entry = store.get_model(model_id)
        for name, value in changes.items():
            setattr(entry, name, value)
        if "display_name" in changes and not entry.display_name:
            entry.display_name = model_id
        entry.updated_at = time.time()
        store.put_model(entry)
        return entry


# -- probe sets ---------------------------------------------------------------------------------
@dataclass
class ProbeSetInfo:
    """A registered probe set as the service describes it."""

    name: str
    images: int
    classes: list[str] = field(default_factory=list)  # class folders; empty for a flat folder
    sha256: str = ""
    origin: str = ""  # a folder on the server, or "artifact:<sha256>" of an uploaded archive


def classes_of(files: list[str]) -> list[str]:
    """The class folders of a probe set's files (``<class>/<image>``), or [] when any image is
    not in a folder."""
    tops = {f.split("/", 1)[0] for f in files if "/" in f}
    if not tops or any("/" not in f for f in files):
        return []
    return sorted(tops)


# -- thumbnails ---------------------------------------------------------------------------------
@dataclass
class SampleImage:
    """A probe image as a PNG thumbnail."""

    index: int
    sample_id: str  # path inside the probe set
    label: str  # class folder ("" when none)
    png: bytes
    width: int
    height: int


def check_thumbnail_size(max_size: int, field: str = "max_size") -> int:
    """0 -> the default (96); otherwise 1..512."""
    if max_size == 0:
        return DEFAULT_THUMBNAIL
    return V.check_range(int(max_size), 1, MAX_THUMBNAIL, field)


def thumbnail(path: Path, max_size: int = DEFAULT_THUMBNAIL) -> tuple[bytes, int, int]:
    """(PNG bytes, width, height) of the image at ``path`` scaled so its longest side is at
    most ``max_size`` (never enlarged). FailedPrecondition when the file is missing, not an
    image of a usual format, damaged or too large to decode safely."""
    from PIL import Image

    name = Path(path).name
    try:
        img = Image.open(path, formats=V.IMAGE_FORMATS)
    except FileNotFoundError:
        raise FailedPrecondition(f"probe image {name} is no longer on the server") from None
    except Exception:  # noqa: BLE001 - PIL raises many types for what it cannot read
        raise FailedPrecondition(f"probe image {name} cannot be read") from None
    with img:
        if img.width * img.height > MAX_PROBE_IMAGE_PIXELS:
            raise FailedPrecondition(
                f"probe image {name} is {img.width}x{img.height}, too large for a thumbnail"
            )
        try:
            img.draft("RGB", (max_size, max_size))  # JPEG: decode at a reduced scale
            rgb = img.convert("RGB")
        except Exception:  # noqa: BLE001 - a decoder failing on the data
            raise FailedPrecondition(f"probe image {name} is damaged") from None
    rgb.thumbnail((max_size, max_size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    rgb.save(buf, "PNG", optimize=False)
    return buf.getvalue(), rgb.width, rgb.height
