"""The input transform: how a probe image becomes model input. One spec, validated in one place.

A transform is resize -> centre crop -> ``ToTensor`` -> ``Normalize(mean, std)``:

- ``resize``: ``None`` (no resize), ``N`` (shorter side to N, aspect ratio kept, like
  ``torchvision.transforms.Resize(N)``) or ``(H, W)`` (exactly H x W);
- ``crop``: ``None`` or ``N`` (centre N x N crop);
- ``mean`` / ``std``: three values each (RGB), every std > 0;
- ``interpolation``: one of :data:`INTERPOLATIONS`.

Every model input must have one size, so a transform needs a crop or an exact ``(H, W)``
resize. Each source kind has a default (``sources.py``); a source overrides it with the keys
of :data:`TRANSFORM_KEYS` (the CLI options ``--input-size``, ``--resize``, ``--crop``,
``--mean``, ``--std``, ``--interpolation`` set the same keys):

- ``resize`` / ``crop`` replace that step of the default (``None`` removes it);
- ``input_size`` N states the model's input size and replaces the default's resize and crop:
  alone it means "resize to N x N, no crop"; with ``resize`` it is the crop after resizing;
  with ``crop`` the two must agree;
- ``mean``, ``std``, ``interpolation`` replace the default's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from neuronatlas.core.errors import InvalidArgument

INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
TRANSFORM_KEYS = ("input_size", "resize", "crop", "mean", "std", "interpolation")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPTIONS_HINT = (
    "set the model's input with --input-size N (or --resize / --crop), and --mean / --std "
    "(source keys input_size, resize, crop, mean, std)"
)

Resize = int | tuple[int, int] | None


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool):
        raise InvalidArgument(f"{key} must be a positive integer, not {value!r}", field=key)
    try:
        n = int(value)
        ok = float(value) == n
    except (TypeError, ValueError):
        ok = False
    if not ok or n < 1:
        raise InvalidArgument(f"{key} must be a positive integer, not {value!r}", field=key)
    return n


def parse_resize(value: Any) -> Resize:
    """``None``/``"none"``, ``N``/``"N"``, ``[H, W]`` or ``"HxW"`` -> a resize value."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise InvalidArgument(
                f"resize must be N (shorter side), HxW or none, not {value!r}", field="resize"
            )
        value = [int(p) for p in parts] if len(parts) == 2 else int(parts[0])
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise InvalidArgument(
                f"resize must be N (shorter side) or H x W, not {value!r}", field="resize"
            )
        return (_positive_int(value[0], "resize"), _positive_int(value[1], "resize"))
    return _positive_int(value, "resize")


def _three(value: Any, key: str) -> tuple[float, float, float]:
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"{key} must be three numbers (RGB), not {value!r}", field=key
        ) from None
    if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
        raise InvalidArgument(f"{key} must be three finite numbers (RGB), not {value!r}", field=key)
    return (vals[0], vals[1], vals[2])


def _fmt(vals: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in vals) + "]"


@dataclass(frozen=True)
class TransformSpec:
    """Resize -> centre crop -> ToTensor -> Normalize; validated on construction."""

    resize: Resize
    crop: int | None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        resize = parse_resize(self.resize)
        crop = None if self.crop is None else _positive_int(self.crop, "crop")
        mean, std = _three(self.mean, "mean"), _three(self.std, "std")
        if any(s <= 0 for s in std):
            raise InvalidArgument(f"std values must be > 0, not {_fmt(std)}", field="std")
        if self.interpolation not in INTERPOLATIONS:
            raise InvalidArgument(
                f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}",
                field="interpolation",
            )
        if crop is None and not isinstance(resize, tuple):
            what = "no resize" if resize is None else f"resize {resize} (shorter side)"
            raise InvalidArgument(
                f"{what} without a crop gives images of different sizes; add a crop "
                "(--crop N), or resize to an exact size (--resize HxW, or --input-size N)",
                field="crop",
            )
        if crop is not None and resize is not None:
            short = resize if isinstance(resize, int) else min(resize)
            if crop > short:
                raise InvalidArgument(
                    f"crop {crop} is larger than the resized image ({short} px)", field="crop"
                )
        for name, val in (("resize", resize), ("crop", crop), ("mean", mean), ("std", std)):
            object.__setattr__(self, name, val)

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        if self.crop is not None:
            return (self.crop, self.crop)
        assert isinstance(self.resize, tuple)  # checked in __post_init__
        return self.resize

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one model input."""
        return (3, *self.input_hw)

    def transform(self) -> Callable[[Any], torch.Tensor]:
        from torchvision import transforms as T

        steps: list[Any] = []
        if self.resize is not None:
            steps.append(
                T.Resize(self.resize, interpolation=T.InterpolationMode(self.interpolation))
            )
        if self.crop is not None:
            steps.append(T.CenterCrop(self.crop))
        steps += [T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)

    def describe(self) -> str:
        steps = []
        if isinstance(self.resize, tuple):
            steps.append(f"Resize({self.resize[0]}x{self.resize[1]}, {self.interpolation})")
        elif self.resize is not None:
            steps.append(f"Resize(shorter side {self.resize}, {self.interpolation})")
        if self.crop is not None:
            steps.append(f"CenterCrop({self.crop})")
        steps += ["ToTensor", f"Normalize(mean={_fmt(self.mean)}, std={_fmt(self.std)})"]
        h, w = self.input_hw
        return " -> ".join(steps) + f"; input 3x{h}x{w}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (catalogue entry, run fingerprint): the five settings plus the derived
        ``input_size`` [H, W] and ``description``."""
        return {
            "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "input_size": list(self.input_hw),
            "description": self.describe(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TransformSpec:
        return cls(
            parse_resize(d.get("resize")),
            d.get("crop"),
            _three(d["mean"], "mean"),
            _three(d["std"], "std"),
            str(d.get("interpolation", "bilinear")),
        )


_UNSET: Any = object()


def resolve_transform(source: dict[str, Any], default: TransformSpec) -> TransformSpec:
    """The transform a source asks for: ``default`` with the source's keys applied (rules in
    the module docstring). Raises InvalidArgument for a bad or contradictory value."""
    size_v = source.get("input_size")
    size = None if size_v is None else _positive_int(size_v, "input_size")
    resize = parse_resize(source["resize"]) if "resize" in source else _UNSET
    crop_v = source.get("crop", _UNSET)
    crop = crop_v if crop_v is _UNSET or crop_v is None else _positive_int(crop_v, "crop")
    if size is not None:
        if resize is _UNSET and crop is _UNSET:
            resize, crop = (size, size), None
        elif crop is _UNSET:
            crop = size
        if resize is _UNSET:
            resize = None
    spec = TransformSpec(
        default.resize if resize is _UNSET else resize,
        default.crop if crop is _UNSET else crop,
        _three(source["mean"], "mean") if source.get("mean") is not None else default.mean,
        _three(source["std"], "std") if source.get("std") is not None else default.std,
        str(source.get("interpolation") or default.interpolation),
    )
    if size is not None and spec.input_hw != (size, size):
        h, w = spec.input_hw
        raise InvalidArgument(
            f"input_size {size} contradicts the resize/crop given, which make {h}x{w} inputs",
            field="input_size",
        )
    return spec


def user_keys(source: dict[str, Any]) -> list[str]:
    """The transform keys a source sets (empty: the kind's default transform)."""
    return [
        k
        for k in TRANSFORM_KEYS
        if k in source and (source[k] is not None or k in ("resize", "crop"))
    ]
