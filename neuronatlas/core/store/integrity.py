"""Integrity of the stored neurons: what a model's live generation must hold, and the report of
a full check.

**Seal.** When a generation becomes live (``put_model`` with status ``indexed``: the catalogue
flip), the store reads that generation's points back once and records, in the same catalogue
point write as the flip, under the payload key ``integrity``::

    {"generation": 1, "count": 1146, "digest": "9f3c...", "sealed_at": 1.7e9}

``count`` is the number of points with a vector, ``digest`` the sum modulo 2**64 of a 64-bit
BLAKE2b hash per point over its id, its float32 vector bytes and its payload (canonical JSON):
order-independent, so any scroll order gives the same value, and one changed bit in any vector
or payload changes it. Vectors are compared bit for bit: the seal and every check read the
points back the same way, so the value does not depend on how the engine normalises vectors on
insert (Qdrant Edge returns them bit-exact across optimisation; qdrant-client's ``:memory:``
test double does not: it renormalises stored vectors in place when it searches).

**Open** (embedded store): one exact count per indexed model, of the live slot's points that
have a vector, against ``count`` (entries written before seals existed: against the neuron
count of their layers). A mismatch marks the model ``failed`` in the catalogue with the reason
(``integrity.failure`` keeps it for ``verify``): it is never served partially and
``neuronatlas index`` rebuilds it (the mark is persistent: restoring the files later does not
lift it, re-indexing does). **verify** re-reads every point: counts, digests, vectors
(finite, unit norm), ids (``uuid5(model/layer/unit#generation)`` of the payload; components
also name kind and extraction, ``records.neuron_point_id``) and points no catalogue entry
accounts for.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from neuronatlas.core.records import NEURON_KIND, ModelStatus, neuron_point_id

INTEGRITY_KEY = "integrity"  # catalogue payload: the seal of the live generation
RETIRE_KEY = "retire"  # catalogue payload: generation left behind by a flip, deleted next
TOMBSTONE_KIND = "deleting"  # catalogue point kind while a model's delete is in progress
NORM_TOLERANCE = 1e-3  # a stored (cosine) vector is unit norm
_MOD = 1 << 64


def point_hash(point_id: str, vector: Any, payload: dict[str, Any]) -> int:
    """64-bit hash of one point: id, float32 vector bytes (empty if none), canonical payload."""
    h = hashlib.blake2b(digest_size=8)
    try:
        h.update(uuid.UUID(str(point_id)).bytes)
    except ValueError:
        h.update(str(point_id).encode())
    if vector is not None:
        h.update(np.asarray(vector, dtype=np.float32).tobytes())
    h.update(b"\x00")
    h.update(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode())
    return int.from_bytes(h.digest(), "little")


def digest_hex(value: int) -> str:
    return f"{value % _MOD:016x}"


@dataclass
class SlotTally:
    """Running count and digest of the points of one slot (``model#generation``)."""

    points: int = 0  # points read
    count: int = 0  # points with a vector
    digest: int = 0
    bad_vectors: int = 0  # not finite, or not unit norm
    bad_ids: int = 0  # id is not uuid5(model/layer/unit#generation) of the payload

    def add(self, point_id: str, vector: Any, payload: dict[str, Any]) -> None:
        self.points += 1
        v = None if vector is None else np.asarray(vector, dtype=np.float32)
        self.digest = (self.digest + point_hash(point_id, v, payload)) % _MOD
        if v is not None:
            self.count += 1
            with np.errstate(all="ignore"):
                norm = float(np.linalg.norm(v.astype(np.float64)))
            if not math.isfinite(norm) or abs(norm - 1.0) > NORM_TOLERANCE:
                self.bad_vectors += 1
        try:
            expected_id = neuron_point_id(
                str(payload["model_id"]),
                str(payload["layer"]),
                int(payload["unit"]),
                int(payload["generation"]),
                str(payload.get("kind", NEURON_KIND)),
                str(payload.get("extraction", "")),
            )
        except (KeyError, TypeError, ValueError):
            expected_id = ""
        if expected_id != str(point_id):
            self.bad_ids += 1

    @property
    def digest_hex(self) -> str:
        return digest_hex(self.digest)

    def seal(self, generation: int) -> dict[str, Any]:
        """The ``integrity`` record of a generation that holds these points."""
        return {
            "generation": int(generation),
            "count": self.count,
            "digest": self.digest_hex,
            "sealed_at": time.time(),
        }


def seal_of(payload: dict[str, Any] | None, generation: int) -> dict[str, Any] | None:
    """The catalogue payload's seal if it is a well-formed seal of ``generation``."""
    seal = (payload or {}).get(INTEGRITY_KEY)
    if (
        isinstance(seal, dict)
        and seal.get("generation") == int(generation)
        and isinstance(seal.get("count"), int)
        and isinstance(seal.get("digest"), str)
    ):
        return seal
    return None


@dataclass
class ModelCheck:
    """The result of checking one catalogue model."""

    model_id: str
    status: ModelStatus
    generation: int
    ok: bool = True
    expected_neurons: int | None = None  # None: nothing recorded to compare with
    found_neurons: int | None = None  # None: not checked (model not served)
    expected_digest: str = ""
    found_digest: str = ""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.ok = False
        self.problems.append(text)


@dataclass
class StoreReport:
    """The result of ``KnowledgeStore.verify``: one check per catalogue model plus store-wide
    findings. ``ok`` is False when any model or the store has a problem."""

    ok: bool
    models: list[ModelCheck]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    points_scanned: int = 0
    elapsed_s: float = 0.0
