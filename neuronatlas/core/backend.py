"""``QueryBackend``: the read API, whether it is answered in-process or by a server.

Two implementations, the same method names and signatures, the same core result types:

- :class:`neuronatlas.core.queries.Atlas` answers from a store opened in this process;
- ``neuronatlas.service.client.Client`` asks a NeuronAtlas gRPC server.

The CLI picks one (``--server`` or not) and talks to it only through this protocol;
``tests/test_congruence.py`` checks that both give the same answers. Results are core records;
paged results are a :class:`~neuronatlas.core.queries.Page` (``next_offset`` is None on the
last page). What a remote backend cannot carry is said where it matters: a search hit's record
holds the hit summary (key fields, depth, quality scores, the best label of each vocabulary)
and ``get_neuron`` the whole record; a comparison's per-neuron table knows the labels of the
neurons in its pairs only.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from neuronatlas.core import validate as V
from neuronatlas.core.records import NEURON_KIND, ModelEntry, NeuronRecord
from neuronatlas.core.store.base import Hit, LabelScope, SearchFilter
from neuronatlas.core.store.integrity import StoreReport

if TYPE_CHECKING:
    from neuronatlas.core.audit import Audit
    from neuronatlas.core.compare import Comparison
    from neuronatlas.core.explain import Explanation
    from neuronatlas.core.queries import Description, Page, Query, Search, StoreStats


@runtime_checkable
class QueryBackend(Protocol):
    """The NeuronAtlas read API (plus the admin calls ``delete_model`` and ``verify_store``).
    See the module docstring."""

    def search_neurons(
        self,
        query: Query,
        flt: SearchFilter | None = None,
        *,
        top_k: int = V.DEFAULT_TOP_K,
        per_model: int = 0,
        offset: int = 0,
        limit: int | None = None,
    ) -> Page[Hit]:
        """Neurons closest to a text, image, neuron or vector query; see ``Atlas``."""
        ...

    def search_many(self, searches: Sequence[Search]) -> list[Page[Hit]]:
        """Several searches at once (at most ``MAX_BATCH_SEARCHES``), all or nothing; see
        ``Atlas.search_many``."""
        ...

    def get_neuron(
        self,
        model_id: str,
        layer: str,
        unit: int,
        *,
        with_vector: bool = False,
        kind: str = NEURON_KIND,
    ) -> NeuronRecord: ...

    def describe_neuron(
        self,
        model_id: str,
        layer: str,
        unit: int,
        *,
        labels: Sequence[str] | None = None,
        top_n: int = V.DEFAULT_TOP_N,
        kind: str = NEURON_KIND,
    ) -> Description: ...

    def find_by_label(
        self,
        label: str,
        *,
        prefix: bool = False,
        flt: SearchFilter | None = None,
        offset: int = 0,
        limit: int = 20,
        scope: LabelScope | str = LabelScope.SET,
    ) -> Page[Hit]:
        """Neurons carrying ``label`` in ``scope`` (the adaptive label set by default)."""
        ...

    def list_models(self, *, offset: int = 0, limit: int = 50) -> Page[ModelEntry]: ...

    def get_model(self, model_id: str) -> ModelEntry: ...

    def delete_model(self, model_id: str) -> int: ...

    def stats(self) -> StoreStats: ...

    def verify_store(self) -> StoreReport:
        """The full integrity check (admin on a server): see ``KnowledgeStore.verify``."""
        ...

    def compare_models(
        self,
        model_a: str,
        model_b: str,
        layers: Sequence[str] | None = None,
        *,
        tau: float | None = None,
        activation: bool = True,
        offset: int = 0,
        limit: int | None = 50,
        kind: str = NEURON_KIND,
    ) -> Comparison: ...

    def audit_model(
        self,
        model_id: str,
        valid: Sequence[str] = (),
        spurious: Sequence[str] = (),
        *,
        threshold: float | None = None,
        kind: str = NEURON_KIND,
        class_name: str | None = None,
    ) -> Audit: ...

    def explain_class(
        self,
        model_id: str,
        class_name: str,
        *,
        kinds: Sequence[str] | None = None,
        top_n: int = 5,
    ) -> Explanation:
        """What drives a class: the most important neurons / components of each kind."""
        ...

    def close(self) -> None: ...


def all_models(backend: QueryBackend, page: int = 500) -> Iterator[ModelEntry]:
    """Every catalogue entry, following the pages."""
    offset: int | None = 0
    while offset is not None:
        got = backend.list_models(offset=offset, limit=page)
        yield from got.items
        offset = got.next_offset
