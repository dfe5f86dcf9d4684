"""Activation sketches: a small sample of every layer's pooled activations, kept per model.

The indexer saves one sketch per indexed generation of a model: for each layer an
``(n_samples, units)`` array of the spatially pooled activations on the first
``SKETCH_SAMPLES`` probe samples. Model comparison reads two sketches to compute CKA
between layers, which needs both models to have seen the same samples (``sample_indices``).

Files: ``home/sketches/<model_id>/gen<generation>.npz`` (float16, written atomically).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from neuronatlas.core.atomic import atomic_save_npz
from neuronatlas.core.config import Home, HomeLike
from neuronatlas.core.errors import InvalidArgument, NotFound, StoreCorrupted
from neuronatlas.core.records import validate_model_id

SKETCH_SAMPLES = 1000

# float16 overflows at 65504; layers with larger activations are stored divided by a scale.
_F16_SAFE = 6.0e4
_FORMAT = 1


@dataclass
class Sketch:
    """Pooled activations of one model generation on a fixed subset of probe samples."""

    model_id: str
    generation: int
    sample_indices: np.ndarray  # (n,) int64 rows of the probe set
    layers: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> (n, units) float32
    probe_set: str = ""

    @property
    def n_samples(self) -> int:
        return int(self.sample_indices.shape[0])

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)


def sketch_dir(home: HomeLike, model_id: str) -> Path:
    return Home.of(home).sketch_dir(validate_model_id(model_id))


def sketch_path(home: HomeLike, model_id: str, generation: int) -> Path:
    return sketch_dir(home, model_id) / f"gen{int(generation)}.npz"


def save_sketch(
    home: HomeLike,
    model_id: str,
    generation: int,
    sample_indices: np.ndarray,
    layers: dict[str, np.ndarray],
    probe_set: str = "",
) -> Path:
    """Store a model generation's sketch (replacing any previous one) and return its path.

    ``layers`` maps layer name -> (n_samples, units) pooled activations, in layer order.
    """
    idx = np.asarray(sample_indices)
    if idx.ndim != 1 or idx.shape[0] < 2 or not np.issubdtype(idx.dtype, np.integer):
        raise InvalidArgument(
            "sample_indices must be a 1-D integer array of at least 2 rows", field="sample_indices"
        )
    if not layers:
        raise InvalidArgument("a sketch needs at least one layer", field="layers")
    arrays: dict[str, np.ndarray] = {"sample_indices": idx.astype(np.int64)}
    scales = []
    for i, (name, acts) in enumerate(layers.items()):
        a = np.asarray(acts, dtype=np.float32)
        if a.ndim != 2 or a.shape[0] != idx.shape[0] or a.shape[1] == 0:
            raise InvalidArgument(
                f"layer {name!r}: activations of shape {a.shape}, expected ({idx.shape[0]}, units)",
                field="layers",
            )
        if not np.isfinite(a).all():
            raise InvalidArgument(f"layer {name!r}: activations contain NaN or inf", field="layers")
        peak = float(np.abs(a).max())
        scale = peak / _F16_SAFE if peak > _F16_SAFE else 1.0
        arrays[f"layer_{i}"] = (a / scale).astype(np.float16)
        scales.append(scale)
    meta = {
        "format": _FORMAT,
        "model_id": model_id,
        "generation": int(generation),
        "probe_set": probe_set,
        "layers": list(layers),
        "scales": scales,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    path = sketch_path(home, model_id, generation)
    atomic_save_npz(path, arrays)
    return path


def load_sketch(home: HomeLike, model_id: str, generation: int) -> Sketch:
    """Read a sketch back (float32 activations); NotFound if it was never saved."""
    path = sketch_path(home, model_id, generation)
    if not path.exists():
        raise NotFound(
            f"no activation sketch for model {model_id!r} generation {generation} "
            f"(expected {path}); re-index the model to create it",
            resource_type="activation sketch",
            resource_name=f"{model_id}/gen{generation}",
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            idx = z["sample_indices"].astype(np.int64)
            layers = {
                name: z[f"layer_{i}"].astype(np.float32) * np.float32(meta["scales"][i])
                for i, name in enumerate(meta["layers"])
            }
    except (OSError, KeyError, ValueError) as e:
        raise StoreCorrupted(f"activation sketch {path} cannot be read: {e}") from None
    return Sketch(
        model_id=model_id,
        generation=int(generation),
        sample_indices=idx,
        layers=layers,
        probe_set=str(meta.get("probe_set", "")),
    )


def delete_sketches(home: HomeLike, model_id: str, keep_generation: int | None = None) -> int:
    """Remove a model's sketches (all, or all but one generation). Returns files removed."""
    d = sketch_dir(home, model_id)
    if not d.exists():
        return 0
    keep = (
        sketch_path(home, model_id, keep_generation).name if keep_generation is not None else None
    )
    removed = 0
    for p in d.glob("gen*.npz"):
        if p.name != keep:
            p.unlink(missing_ok=True)
            removed += 1
    return removed
