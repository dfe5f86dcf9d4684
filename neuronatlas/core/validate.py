"""Request validation: the one place that decides what a caller may ask and words the refusal.

Every user-facing argument check of the read API lives here and raises ``InvalidArgument`` with
the offending field (``filter.depth_min``, ``neuron.unit``, ``labels[2]``...). The queries
(``core/queries.py``) call these before doing any work, the store calls :func:`check_filter`
and :func:`check_page` on what it is handed, and the gRPC layer only converts messages: a
request gets the same answer in-process and over the network. :func:`check_embedder` is the one
embedder-identity check.

Limits are documented in ``protos/neuronatlas/v1/neuronatlas.proto``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from neuronatlas.core.errors import EmbedderMismatch, InvalidArgument
from neuronatlas.core.records import KINDS, NEURON_KIND, EmbedderInfo, validate_model_id
from neuronatlas.core.store.base import LabelScope, SearchFilter

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

MAX_TOP_K = 1000
DEFAULT_TOP_K = 10
MAX_PER_MODEL = 100
MAX_TEXT_CHARS = 1000
MAX_IMAGE_BYTES = 4 * 1024 * 1024
MAX_IMAGE_PIXELS = 4096 * 4096
# Query image formats: decoded in-process by Pillow. Others (EPS shells out to Ghostscript, and
# many rarely used decoders) are refused.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
MAX_CUSTOM_LABELS = 64  # DescribeNeuron: each new label costs text-encoder calls
MAX_LABEL_CHARS = 200
MAX_LAYER_CHARS = 256
MAX_TOP_N = 100
MAX_BATCH_SEARCHES = 64  # searches in one batch (BatchSearchNeurons, Atlas.search_many)
DEFAULT_TOP_N = 5
MAX_FILTER_ITEMS = 1000
MAX_AUDIT_CONCEPTS = 100
MAX_EXPLAIN_TOP = 100
# catalogue metadata (RegisterModel, UpdateModel, `models update`)
MAX_DISPLAY_NAME_CHARS = 200
MAX_TAGS = 64
MAX_TAG_CHARS = 64
MAX_NOTES_CHARS = 4000
MAX_TRAINING_DATA_CHARS = 1000
MAX_REQUEST_ID_CHARS = 64


SHOWN_CHARS = 80  # characters of a caller's value that an error message echoes


# -- echoing input -----------------------------------------------------------------------------
def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``value`` as an error message may echo it: quoted (``repr``), at most about ``limit``
    characters of it, and its length when it was cut — never an object's repr with its address.
    A 4,000-character model id must not make the refusal larger than gRPC's trailer limit."""
    if isinstance(value, str | bytes):
        text = repr(value[:limit])
        if len(value) <= limit and len(text) <= limit + 3:
            return text
        unit = "characters" if isinstance(value, str) else "bytes"
        # escapes (\x00, \u2028) make a repr longer than its value: cut the repr too
        return f"{text[: limit + 1]}…{text[-1]} ({len(value)} {unit})"
    if value is None or isinstance(value, bool | int | float):
        text = repr(value)
        return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} digits)"
    return f"a {type(value).__name__}"


# -- names -------------------------------------------------------------------------------------
def check_model_id(model_id: str, field: str = "model_id") -> str:
    try:
        return validate_model_id(model_id)
    except InvalidArgument as e:
        raise InvalidArgument(str(e), field=field) from None


def check_layer(layer: str, field: str = "layer") -> str:
    if not isinstance(layer, str) or not layer or len(layer) > MAX_LAYER_CHARS:
        raise InvalidArgument(f"layer names must be 1-{MAX_LAYER_CHARS} characters", field=field)
    return layer


def check_ref(
    model_id: str, layer: str, unit: int, field: str = "neuron", kind: str = NEURON_KIND
) -> None:
    """A neuron reference ``model_id/layer/unit`` (of a component: and its kind)."""
    check_model_id(model_id, f"{field}.model_id")
    check_layer(layer, f"{field}.layer")
    if int(unit) < 0:
        raise InvalidArgument(f"unit must be >= 0, not {shown(unit)}", field=f"{field}.unit")
    check_kind(kind, f"{field}.kind")


def check_kind(kind: str, field: str = "kind") -> str:
    """A record kind (``records.KINDS``); empty means neuron."""
    if not kind:
        return NEURON_KIND
    if kind not in KINDS:
        raise InvalidArgument(
            f"kind must be one of {', '.join(KINDS)}, not {shown(kind)}", field=field
        )
    return kind


def check_kinds(kinds: Sequence[str] | None, field: str = "kinds") -> tuple[str, ...] | None:
    """A kind filter: None (neurons only) or a non-empty list of known kinds."""
    if kinds is None:
        return None
    if isinstance(kinds, str) or len(kinds) == 0:
        raise InvalidArgument(
            f"{field} must be a non-empty list of kinds (leave it out for neurons only)",
            field=field,
        )
    if len(kinds) > MAX_FILTER_ITEMS:
        raise InvalidArgument(f"at most {MAX_FILTER_ITEMS} kinds", field=field)
    for i, k in enumerate(kinds):
        if not isinstance(k, str) or k not in KINDS:
            raise InvalidArgument(
                f"kind must be one of {', '.join(KINDS)}, not {shown(k)}", field=f"{field}[{i}]"
            )
    return tuple(dict.fromkeys(kinds))


def check_label(label: str, field: str = "label") -> str:
    if not isinstance(label, str) or not label.strip():
        raise InvalidArgument("label must not be empty", field=field)
    if len(label) > MAX_LABEL_CHARS:
        raise InvalidArgument(f"label is longer than {MAX_LABEL_CHARS} characters", field=field)
    return label


def check_label_lookup(label: str, flt: SearchFilter | None) -> str:
    """The label of a label lookup; the lookup's filter may not name a label (or a label
    scope: the lookup has its own) of its own."""
    check_label(label, "label")
    if flt is not None and flt.label is not None:
        raise InvalidArgument(
            "filter.label cannot be combined with a label lookup", field="filter.label"
        )
    if flt is not None and flt.label_scope is not None:
        raise InvalidArgument(
            "filter.label_scope cannot be combined with a label lookup; use the lookup's scope",
            field="filter.label_scope",
        )
    return label


def check_label_scope(scope: LabelScope | str, field: str = "scope") -> LabelScope:
    """A label scope: a ``LabelScope`` or its name (top1, set, top5)."""
    try:
        return LabelScope(scope)
    except ValueError:
        names = ", ".join(s.value for s in LabelScope)
        raise InvalidArgument(
            f"label scope must be one of {names}, not {shown(scope)}", field=field
        ) from None


def check_labels(labels: Sequence[str], field: str = "labels") -> tuple[str, ...]:
    """A custom label list (may be empty)."""
    if len(labels) > MAX_CUSTOM_LABELS:
        raise InvalidArgument(f"at most {MAX_CUSTOM_LABELS} labels, not {len(labels)}", field=field)
    for i, lab in enumerate(labels):
        check_label(lab, f"{field}[{i}]")
    return tuple(labels)


# -- numbers -----------------------------------------------------------------------------------
def check_range(value: int, low: int, high: int, field: str) -> int:
    if not low <= value <= high:
        raise InvalidArgument(f"{field} must be in {low}..{high}, not {shown(value)}", field=field)
    return value


def check_page(offset: int, limit: int, *, limit_field: str = "limit") -> None:
    if int(limit) < 1:
        raise InvalidArgument(
            f"{limit_field} must be positive, not {shown(limit)}", field=limit_field
        )
    if int(offset) < 0:
        raise InvalidArgument(f"offset must be >= 0, not {shown(offset)}", field="offset")


def _finite(value: float, field: str) -> float:
    if not math.isfinite(float(value)):
        raise InvalidArgument(f"{field} must be a finite number, not {shown(value)}", field=field)
    return float(value)


# -- filters -----------------------------------------------------------------------------------
def check_filter(flt: SearchFilter | None, field: str = "filter") -> SearchFilter | None:
    """Sane sizes and ranges. Whether the named models exist and are indexed is the store's
    answer (NotFound / NotIndexed), from its catalogue snapshot."""
    if flt is None:
        return None
    for name in ("model_ids", "layers"):
        items: tuple[str, ...] | None = getattr(flt, name)
        if items is None:
            continue
        if len(items) == 0:
            raise InvalidArgument(
                f"{field}.{name} is empty (leave it out for no restriction)",
                field=f"{field}.{name}",
            )
        if len(items) > MAX_FILTER_ITEMS:
            raise InvalidArgument(f"at most {MAX_FILTER_ITEMS} {name}", field=f"{field}.{name}")
    for i, model_id in enumerate(flt.model_ids or ()):
        check_model_id(model_id, f"{field}.model_ids[{i}]")
    for i, layer in enumerate(flt.layers or ()):
        check_layer(layer, f"{field}.layers[{i}]")
    for name in ("depth_min", "depth_max"):
        v = getattr(flt, name)
        if v is not None and not 0.0 <= _finite(v, f"{field}.{name}") <= 1.0:
            raise InvalidArgument(
                f"{name} must be in [0, 1], not {shown(v)}", field=f"{field}.{name}"
            )
    if flt.depth_min is not None and flt.depth_max is not None and flt.depth_min > flt.depth_max:
        raise InvalidArgument("depth_min is above depth_max", field=f"{field}.depth_min")
    if flt.min_clarity is not None:
        _finite(flt.min_clarity, f"{field}.min_clarity")
    if flt.label is not None:
        check_label(flt.label, f"{field}.label")
    check_kinds(flt.kinds, f"{field}.kinds")
    if flt.label_scope is not None:
        check_label_scope(flt.label_scope, f"{field}.label_scope")
        if flt.label is None:
            raise InvalidArgument(
                f"{field}.label_scope is set without {field}.label", field=f"{field}.label_scope"
            )
    return flt


# -- queries -----------------------------------------------------------------------------------
def check_text(text: str, field: str = "text") -> str:
    if not text.strip():
        raise InvalidArgument("query text is empty", field=field)
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidArgument(f"query text is longer than {MAX_TEXT_CHARS} characters", field=field)
    return text


def check_image_bytes(data: bytes, field: str = "image") -> bytes:
    if not data:
        raise InvalidArgument("query image is empty", field=field)
    if len(data) > MAX_IMAGE_BYTES:
        raise InvalidArgument(f"query image is larger than {MAX_IMAGE_BYTES} bytes", field=field)
    return data


def check_image_size(width: int, height: int, field: str = "image") -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidArgument(
            f"image is {width}x{height}, more than {MAX_IMAGE_PIXELS} pixels", field=field
        )


def decode_image(data: bytes, field: str = "image") -> PILImage:
    """A query image decoded to RGB, or InvalidArgument saying what is wrong with the bytes:
    not one of ``IMAGE_FORMATS`` (decided from the bytes, never from a name), more than
    ``MAX_IMAGE_PIXELS`` pixels (checked on the declared size, before anything is decoded, so a
    small file declaring a huge image costs nothing), or damaged data."""
    from PIL import Image

    check_image_bytes(data, field)
    names = ", ".join(IMAGE_FORMATS[:-1]) + " or " + IMAGE_FORMATS[-1]
    try:
        img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError:  # declares even more than Pillow's own limit
        raise InvalidArgument(
            f"image declares more than {MAX_IMAGE_PIXELS} pixels", field=field
        ) from None
    except Exception:  # noqa: BLE001 - any failure to recognise the bytes is the caller's
        raise InvalidArgument(
            f"image bytes are not a readable {names} image", field=field
        ) from None
    with img:
        check_image_size(img.width, img.height, field)
        try:
            return img.convert("RGB")
        except Exception:  # noqa: BLE001 - a decoder failing on the data: damaged input
            raise InvalidArgument(
                f"image data is damaged or truncated (a {img.format} image that cannot be decoded)",
                field=field,
            ) from None


def check_vector_size(size: int, field: str = "vector") -> None:
    if size == 0:
        raise InvalidArgument("query vector is empty", field=field)


def no_query(field: str = "query") -> InvalidArgument:
    return InvalidArgument("a query (text, image, neuron or vector) is required", field=field)


# -- comparison and audit ----------------------------------------------------------------------
def check_compare(
    model_a: str,
    model_b: str,
    layers: Sequence[str] | None,
    tau: float | None,
    kind: str = NEURON_KIND,
) -> None:
    check_model_id(model_a, "model_a")
    check_kind(kind)
    check_model_id(model_b, "model_b")
    if layers is not None:
        if len(layers) > MAX_FILTER_ITEMS:
            raise InvalidArgument(f"at most {MAX_FILTER_ITEMS} layers", field="layers")
        for layer in layers:
            check_layer(layer, "layers")
    if tau is not None and not -1.0 <= _finite(tau, "tau") <= 1.0:
        raise InvalidArgument(f"tau must be a cosine in [-1, 1], not {shown(tau)}", field="tau")


def check_class_name(class_name: str, field: str = "class_name") -> str:
    if not isinstance(class_name, str) or not class_name.strip():
        raise InvalidArgument("class name must not be empty", field=field)
    if len(class_name) > MAX_LABEL_CHARS:
        raise InvalidArgument(
            f"class name is longer than {MAX_LABEL_CHARS} characters", field=field
        )
    return class_name


def check_explain(
    model_id: str, class_name: str, kinds: Sequence[str] | None, top_n: int
) -> tuple[str, ...] | None:
    """ExplainClass arguments; returns the kind filter (None: every kind)."""
    check_model_id(model_id, "model_id")
    check_class_name(class_name)
    check_range(top_n, 1, MAX_EXPLAIN_TOP, "top_n")
    return check_kinds(kinds)


def check_audit(
    model_id: str,
    valid: Sequence[str],
    spurious: Sequence[str],
    threshold: float | None,
    kind: str = NEURON_KIND,
    class_name: str | None = None,
) -> None:
    check_model_id(model_id, "model_id")
    check_kind(kind)
    if class_name is not None:
        check_class_name(class_name)
    if not valid and not spurious:
        raise InvalidArgument("give at least one valid or spurious concept", field="valid")
    if len(valid) + len(spurious) > MAX_AUDIT_CONCEPTS:
        raise InvalidArgument(f"at most {MAX_AUDIT_CONCEPTS} concepts in all", field="valid")
    for name, concepts in (("valid", valid), ("spurious", spurious)):
        for i, c in enumerate(concepts):
            if not isinstance(c, str) or not c.strip() or len(c) > MAX_LABEL_CHARS:
                raise InvalidArgument(
                    f"{name} concepts must be 1-{MAX_LABEL_CHARS} characters", field=f"{name}[{i}]"
                )
    if threshold is not None:
        _finite(threshold, "threshold")


# -- catalogue metadata ------------------------------------------------------------------------
def _check_text_field(value: object, limit: int, field: str, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be text, not {shown(value)}", field=field)
    if len(value) > limit:
        raise InvalidArgument(
            f"{what} is longer than {limit} characters ({len(value)})", field=field
        )
    if "\x00" in value:
        raise InvalidArgument(f"{what} contains a NUL character", field=field)
    return value


def check_metadata(
    *,
    display_name: str | None = None,
    tags: Sequence[str] | None = None,
    notes: str | None = None,
    training_data: str | None = None,
    prefix: str = "",
) -> None:
    """A model's people-facing metadata (each argument that is not None): ``display_name`` at
    most 200 characters, at most 64 ``tags`` of 1-64 characters without whitespace at their
    ends, ``notes`` at most 4,000 and ``training_data`` at most 1,000 characters. ``prefix``
    goes in front of the field names (``model.``)."""
    if display_name is not None:
        _check_text_field(
            display_name, MAX_DISPLAY_NAME_CHARS, f"{prefix}display_name", "display_name"
        )
    if tags is not None:
        if len(tags) > MAX_TAGS:
            raise InvalidArgument(
                f"at most {MAX_TAGS} tags, not {len(tags)}", field=f"{prefix}tags"
            )
        for i, tag in enumerate(tags):
            field = f"{prefix}tags[{i}]"
            _check_text_field(tag, MAX_TAG_CHARS, field, "a tag")
            if not tag.strip() or tag != tag.strip():
                raise InvalidArgument(
                    f"tag {shown(tag)} is empty or starts or ends with whitespace", field=field
                )
    if notes is not None:
        _check_text_field(notes, MAX_NOTES_CHARS, f"{prefix}notes", "notes")
    if training_data is not None:
        _check_text_field(
            training_data, MAX_TRAINING_DATA_CHARS, f"{prefix}training_data", "training_data"
        )


def check_request_id(request_id: str, field: str = "request_id") -> str:
    """A client's idempotency key (AIP-155): empty (none) or 1-64 printable ASCII characters."""
    if not isinstance(request_id, str):
        raise InvalidArgument("request_id must be text", field=field)
    if len(request_id) > MAX_REQUEST_ID_CHARS or not all(" " < c <= "~" for c in request_id):
        raise InvalidArgument(
            f"request_id {shown(request_id)} must be at most {MAX_REQUEST_ID_CHARS} printable "
            "ASCII characters without spaces (e.g. a UUID)",
            field=field,
        )
    return request_id


# -- embedder identity -------------------------------------------------------------------------
def check_embedder(store: EmbedderInfo | None, embedder: EmbedderInfo) -> None:
    """EmbedderMismatch unless ``embedder`` is the one that produced the store's vectors (name,
    weights and dimension); a store without vectors (None) accepts any."""
    if store is None or (store.name, store.weights, store.dim) == (
        embedder.name,
        embedder.weights,
        embedder.dim,
    ):
        return
    raise EmbedderMismatch(
        f"the store holds vectors of {store.name} ({store.weights}, dim {store.dim}) but the "
        f"embedder is {embedder.name} ({embedder.weights}, dim {embedder.dim}); use the store's "
        "embedder, or another store"
    )
