"""The knowledge-store interface. Two backends implement it:

- ``EdgeStore`` (``edge.py``): Qdrant Edge, in-process, persisted on disk (the default);
- ``RemoteStore`` (``remote.py``): a Qdrant server or cluster through qdrant-client.

Everything above this module (indexer, service) talks to ``KnowledgeStore`` only.

Visibility rule: every neuron record carries ``generation``; a model's catalogue entry names
its live ``generation``. Reads (search, get, label lookup, counts) only see the live slot of
models whose status is ``indexed``, so a re-index writes the other slot, flips the catalogue
entry in one write, then deletes the old slot: queries never see half a model.

Crash safety and integrity (``integrity.py``): a delete starts with a tombstone write, a flip
seals the new generation (point count + content digest) and remembers the old one; opening
finishes what a killed process left and marks a model whose count no longer matches ``failed``;
``verify`` re-reads everything.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from neuronatlas.core.records import NEURON_KIND, EmbedderInfo, ModelEntry, NeuronRecord
from neuronatlas.core.store.integrity import StoreReport


class LabelScope(StrEnum):
    """Which stored labels of a neuron a label filter or lookup matches (nested: the best label
    is in the set unless no label scores > 0, and the set is in what ``TOP5`` matches)."""

    TOP1 = "top1"  # the best label over all vocabularies (payload ``top_label``)
    SET = "set"  # the adaptive label set, >= beta x best (payload ``label_set``); the default
    TOP5 = "top5"  # any vocabulary's top labels, or the set (payload ``label_all``)

    @property
    def payload_field(self) -> str:
        return _SCOPE_FIELDS[self]


_SCOPE_FIELDS = {
    LabelScope.TOP1: "top_label",
    LabelScope.SET: "label_set",
    LabelScope.TOP5: "label_all",
}


@dataclass(frozen=True)
class SearchFilter:
    """Restricts a search. ``None`` means "no restriction" for every field."""

    model_ids: tuple[str, ...] | None = None
    layers: tuple[str, ...] | None = None
    depth_min: float | None = None
    depth_max: float | None = None
    min_clarity: float | None = None
    label: str | None = None  # exact match against the neuron's labels in ``label_scope``
    label_scope: LabelScope | None = None  # where ``label`` must be; None: LabelScope.SET
    # which record kinds (records.KINDS: neuron, nmf, cluster, cav); None: neurons only, so a
    # caller that does not know about components gets what it got before they existed
    kinds: tuple[str, ...] | None = None


# The payload keys a search answer (service ``hit_to_pb``) shows: ``search(fields=HIT_FIELDS)``
# reads only these (not top_samples, label_all, stats...), which ``NeuronRecord.from_payload``
# needs at least (model_id, layer, layer_index, depth, unit) plus the hit's labels and scores.
HIT_FIELDS = (
    "model_id",
    "layer",
    "layer_index",
    "depth",
    "unit",
    "kind",
    "generation",
    "labels",
    "clarity",
    "polysemanticity",
    "polysemanticity_sl",
    "redundancy",
)


@dataclass
class Hit:
    record: NeuronRecord  # vector is empty unless asked for
    score: float


class KnowledgeStore(ABC):
    """Neuron records + model catalogue + the embedder identity of the vectors."""

    #: True when this process is the store's only writer (the embedded store holds an
    #: exclusive lock); False when other processes may write too (a remote Qdrant)
    exclusive: bool = False

    # -- embedder identity ---------------------------------------------------------------
    @property
    @abstractmethod
    def embedder(self) -> EmbedderInfo | None:
        """The embedder that produced this store's vectors; None for a store never written."""

    @abstractmethod
    def bind_embedder(self, info: EmbedderInfo) -> None:
        """Record the embedder on first use; raise EmbedderMismatch if another one is bound."""

    # -- neurons -------------------------------------------------------------------------
    @abstractmethod
    def upsert_neurons(self, records: Sequence[NeuronRecord]) -> int:
        """Write a batch (ids are deterministic, so rewriting is idempotent). Returns count."""

    @abstractmethod
    def get_neuron(
        self,
        model_id: str,
        layer: str,
        unit: int,
        with_vector: bool = True,
        kind: str = NEURON_KIND,
    ) -> NeuronRecord:
        """The live record of one neuron (or component of ``kind``), or NotFound."""

    @abstractmethod
    def search(
        self,
        vector: np.ndarray,
        limit: int = 10,
        flt: SearchFilter | None = None,
        offset: int = 0,
        with_vectors: bool = False,
        exact: bool = False,
        fields: Sequence[str] | None = None,
    ) -> list[Hit]:
        """Cosine search over live neurons, best first. ``exact`` bypasses the HNSW index.
        ``fields``: read only these payload keys (the hits' records then hold defaults for the
        rest, e.g. ``HIT_FIELDS`` for what a search answer shows); None: the whole payload."""

    @abstractmethod
    def search_per_model(
        self,
        vector: np.ndarray,
        per_model: int = 1,
        flt: SearchFilter | None = None,
        max_models: int | None = None,
    ) -> list[Hit]:
        """Best ``per_model`` hits of every model, models ordered by their best score."""

    @abstractmethod
    def find_by_label(
        self,
        label: str,
        prefix: bool = False,
        limit: int = 10,
        offset: int = 0,
        flt: SearchFilter | None = None,
        scope: LabelScope = LabelScope.SET,
    ) -> list[Hit]:
        """Live neurons carrying ``label`` (exact, or any label starting with it) in
        ``scope`` (the adaptive label set by default), ranked by that label's score (the
        Hit's score)."""

    @abstractmethod
    def scroll_neurons(
        self,
        model_id: str,
        generation: int | None = None,
        with_vectors: bool = True,
        batch_size: int = 1024,
        kinds: Sequence[str] | None = None,
    ) -> Iterator[NeuronRecord]:
        """All records of a model (the live generation unless one is named), in id order: every
        kind, or only ``kinds``."""

    @abstractmethod
    def count(self, model_id: str | None = None, generation: int | None = None) -> int:
        """Number of stored neurons (all slots, unless a model/generation is named)."""

    @abstractmethod
    def counts_by_layer(self) -> dict[str, dict[str, int]]:
        """{model_id: {layer: live neuron count}}."""

    @abstractmethod
    def delete_neurons(self, model_id: str, generation: int | None = None) -> None:
        """Delete a model's neurons (one generation, or all)."""

    # -- catalogue -----------------------------------------------------------------------
    @abstractmethod
    def put_model(self, entry: ModelEntry) -> None:
        """Create or replace a catalogue entry (one atomic point write)."""

    @abstractmethod
    def get_model(self, model_id: str) -> ModelEntry:
        """The catalogue entry, or NotFound."""

    @abstractmethod
    def list_models(self) -> list[ModelEntry]:
        """All catalogue entries, ordered by model id."""

    @abstractmethod
    def delete_model(self, model_id: str) -> int:
        """Remove a model's records and its catalogue entry (NotFound if unknown); returns the
        neuron records removed. Atomic: a crash at any moment leaves the model either fully
        present or (after the next open) fully gone."""

    @abstractmethod
    def refresh(self) -> None:
        """Re-read the catalogue snapshot reads are filtered by, now (another process, e.g. a
        remote indexing worker, flipped or added a model)."""

    # -- jobs (the queue of long-running operations, ``neuronatlas.core.jobs``) -----------
    # Job records live in the catalogue shard / collection as points of kind "job": they
    # persist with the data they produce and are shared by every process of a remote store.
    # They never show up as models.
    @abstractmethod
    def put_job(self, job_id: str, record: dict[str, Any]) -> None:
        """Create or replace a job record (one atomic point write, flushed)."""

    @abstractmethod
    def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job record, or None."""

    @abstractmethod
    def all_jobs(self) -> list[dict[str, Any]]:
        """Every job record (unordered)."""

    # -- maintenance ---------------------------------------------------------------------
    @abstractmethod
    def verify(self) -> StoreReport:
        """The full integrity check: every point read back; per model its count and content
        digest against what was recorded when it was indexed (``integrity.py``)."""

    @abstractmethod
    def optimize(self) -> None:
        """Build indexes after bulk writes so queries use HNSW, then flush."""

    @abstractmethod
    def size_bytes(self) -> int:
        """Disk footprint of the store (0 if unknown, e.g. remote)."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release (the embedded store's lock too). Idempotent."""

    def __enter__(self) -> KnowledgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
