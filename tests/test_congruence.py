"""The two QueryBackends agree: the same calls answered in-process (an ``Atlas`` over the store)
and over the network (the typed ``Client`` of a real gRPC server on an ephemeral port over the
same store) give the same core results, field by field (floats within float32 round-off), and
the same errors with the same fields.

The store is the one the real indexer filled for the service tests (resnet20 + resnet32, the
``server`` fixture in conftest.py). A search hit carries a summary of its neuron over the wire
(``core/backend.py``), so hits are compared on that summary; everything else in full.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from neuronatlas.core import errors as E
from neuronatlas.core.backend import QueryBackend
from neuronatlas.core.queries import (
    Atlas,
    NeuronQuery,
    Page,
    Search,
    TextQuery,
    VectorQuery,
    top_labels,
)
from neuronatlas.core.store.base import Hit, LabelScope, SearchFilter

pytestmark = pytest.mark.integration

REL, ABS = 1e-5, 1e-5  # float32 on the wire


@pytest.fixture(scope="module")
def direct(server, tiny_embedder, indexed_home) -> QueryBackend:
    """An Atlas over the server's own store (the edge store is locked to one opener)."""
    return Atlas(server.atlas.store, tiny_embedder, backend="edge", home=indexed_home)


@pytest.fixture(scope="module")
def remote(client) -> QueryBackend:
    return client


# -- field-by-field comparison ------------------------------------------------------------------
def assert_same(a: Any, b: Any, path: str = "result", skip: frozenset[str] = frozenset()) -> None:
    """``a`` and ``b`` equal in every field (paths in ``skip`` left out, e.g. "result.cached")."""
    if path in skip:
        return
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}", skip)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]", skip)
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]", skip)
    elif isinstance(a, np.ndarray):
        b = np.asarray(b)
        assert a.shape == b.shape, f"{path}: shape {a.shape} vs {b.shape}"
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            np.testing.assert_allclose(b, a, rtol=REL, atol=ABS, err_msg=path)
        else:
            assert np.array_equal(a, b), path
    elif isinstance(a, (float, np.floating)) and not isinstance(a, bool):
        assert math.isclose(float(a), float(b), rel_tol=REL, abs_tol=ABS), f"{path}: {a} vs {b}"
    elif isinstance(a, enum.Enum):
        assert a is b, f"{path}: {a} vs {b}"
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def hit_summary(h: Hit) -> dict[str, Any]:
    """What a hit says about its neuron on either backend."""
    r = h.record
    return {
        "key": r.key,
        "score": h.score,
        "layer_index": r.layer_index,
        "depth": r.depth,
        "quality": (r.clarity, r.polysemanticity, r.polysemanticity_sl, r.redundancy),
        "top_labels": [(lab.label, lab.score) for lab in top_labels(r)],
    }


def view(result: Any) -> Any:
    """Hits (alone or in a page) as their summaries; anything else as it is."""
    if isinstance(result, Page):
        return Page([view(x) for x in result.items], result.next_offset)
    if isinstance(result, Hit):
        return hit_summary(result)
    if isinstance(result, list):
        return [view(x) for x in result]
    return result


# -- the calls ---------------------------------------------------------------------------------
def _label_of(b: QueryBackend) -> str:
    return b.get_neuron("resnet20", "layer2.0.conv2", 1).labels["broden"][0].label


def _vector_of(b: QueryBackend) -> np.ndarray:
    return b.get_neuron("resnet20", "layer3.0.conv2", 5, with_vector=True).vector


Call = Callable[[QueryBackend], Any]

CALLS: dict[str, Call] = {
    "search text": lambda b: b.search_neurons(TextQuery("striped texture"), top_k=15),
    "search text, second page": lambda b: b.search_neurons(
        TextQuery("dog"), top_k=30, offset=10, limit=10
    ),
    "search vector": lambda b: b.search_neurons(VectorQuery(_vector_of(b)), top_k=8),
    "search neuron, filtered": lambda b: b.search_neurons(
        NeuronQuery("resnet20", "layer1.0.conv1", 2),
        SearchFilter(model_ids=("resnet32",), depth_min=0.3, min_clarity=0.0),
        top_k=12,
    ),
    "search per model": lambda b: b.search_neurons(TextQuery("airplane"), per_model=3, top_k=5),
    "search per model, paged": lambda b: b.search_neurons(
        TextQuery("airplane"), per_model=2, top_k=5, offset=1, limit=1
    ),
    "search past 100 hits": lambda b: b.search_neurons(TextQuery("wheel"), top_k=150),
    "search many (a batch of every kind of search)": lambda b: b.search_many(
        [
            Search(TextQuery("striped texture"), top_k=15),
            Search(VectorQuery(_vector_of(b)), top_k=8),
            Search(
                NeuronQuery("resnet20", "layer1.0.conv1", 2),
                SearchFilter(model_ids=("resnet32",), depth_min=0.3),
                top_k=12,
            ),
            Search(TextQuery("airplane"), per_model=3, top_k=5),
            Search(TextQuery("airplane"), per_model=2, top_k=5, offset=1, limit=1),
            Search(TextQuery("dog"), top_k=30, offset=10, limit=10),
            Search(TextQuery("wheel"), top_k=150),  # past the server's 100-hit page
            Search(TextQuery("striped texture"), top_k=15),  # a text twice
        ]
    ),
    "get neuron": lambda b: b.get_neuron("resnet32", "layer2.0.conv2", 7),
    "get neuron with vector": lambda b: b.get_neuron(
        "resnet32", "layer3.0.conv2", 11, with_vector=True
    ),
    "describe stored": lambda b: b.describe_neuron("resnet20", "layer3.0.conv2", 3, top_n=3),
    "describe custom": lambda b: b.describe_neuron(
        "resnet20", "layer3.0.conv2", 3, labels=["dog", "cat", "stripes", "water"], top_n=4
    ),
    "find by label": lambda b: b.find_by_label(_label_of(b), limit=10),
    "find by label, top-1": lambda b: b.find_by_label(_label_of(b), limit=10, scope="top1"),
    "find by label, top-5, paged": lambda b: b.find_by_label(
        _label_of(b), scope=LabelScope.TOP5, offset=2, limit=5
    ),
    "search with a label filter, each scope": lambda b: [
        b.search_neurons(
            TextQuery("dog"), SearchFilter(label=_label_of(b), label_scope=scope), top_k=20
        )
        for scope in (None, *LabelScope)
    ],
    "find by prefix, filtered, paged": lambda b: b.find_by_label(
        _label_of(b)[:1],
        prefix=True,
        flt=SearchFilter(layers=("layer2.0.conv2", "layer3.0.conv2")),
        offset=3,
        limit=7,
    ),
    "list models": lambda b: b.list_models(),
    "list models, paged": lambda b: b.list_models(offset=1, limit=1),
    "get model": lambda b: b.get_model("resnet32"),
    "stats": lambda b: b.stats(),
    "audit, calibrated": lambda b: b.audit_model("resnet20", ["airplane", "dog"], ["sky", "grass"]),
    "audit, fixed threshold": lambda b: b.audit_model("resnet32", ["ship"], threshold=0.0),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_same_results(name: str, direct: QueryBackend, remote: QueryBackend) -> None:
    call = CALLS[name]
    assert_same(view(call(direct)), view(call(remote)))


# A comparison from the server knows the labels of the neurons in its pairs only (the pairs
# carry them), and its match arrays cover the pairs it was sent; ``cached`` and ``timings``
# say how it was obtained.
_HOW = frozenset({"result.cached", "result.timings", "result.a.labels", "result.b.labels"})
_MATCHES = frozenset(f"result.semantic.match_{x}" for x in ("a", "b", "sim"))


def test_same_comparison_with_every_pair(direct: QueryBackend, remote: QueryBackend) -> None:
    mine = direct.compare_models("resnet20", "resnet32", limit=None)
    theirs = remote.compare_models("resnet20", "resnet32", limit=None)
    assert len(theirs.pairs) == theirs.pairs_total > 0
    assert theirs.activation is not None
    assert_same(mine, theirs, skip=_HOW)
    # the labels the remote side does know agree
    for side in ("a", "b"):
        for row in getattr(theirs.semantic, f"match_{side}"):
            assert getattr(theirs, side).labels[row] == getattr(mine, side).labels[row]


def test_same_comparison_page_and_options(direct: QueryBackend, remote: QueryBackend) -> None:
    for kwargs in (
        {"offset": 20, "limit": 30},
        {"layers": ["layer2.0.conv2", "layer3.0.conv2"], "tau": 0.3, "activation": False},
    ):
        mine = direct.compare_models("resnet20", "resnet32", **kwargs)
        theirs = remote.compare_models("resnet20", "resnet32", **kwargs)
        assert_same(mine, theirs, skip=_HOW | _MATCHES)


# -- the same refusals ---------------------------------------------------------------------------
BAD_CALLS: dict[str, Call] = {
    "top_k 0": lambda b: b.search_neurons(TextQuery("dog"), top_k=0),
    "limit 0": lambda b: b.search_neurons(TextQuery("dog"), limit=0),
    "negative offset": lambda b: b.find_by_label("dog", offset=-1),
    "empty text": lambda b: b.search_neurons(TextQuery("  ")),
    "empty model filter": lambda b: b.search_neurons(TextQuery("dog"), SearchFilter(model_ids=())),
    "depth range": lambda b: b.search_neurons(
        TextQuery("dog"), SearchFilter(depth_min=0.8, depth_max=0.2)
    ),
    "unknown filter model": lambda b: b.search_neurons(
        TextQuery("dog"), SearchFilter(model_ids=("resnet99",))
    ),
    "bad unit": lambda b: b.get_neuron("resnet20", "layer1.0.conv1", -1),
    "search many: none": lambda b: b.search_many([]),
    "search many: too many": lambda b: b.search_many([Search(TextQuery("dog"))] * 65),
    "search many: one bad search": lambda b: b.search_many(
        [Search(TextQuery("dog")), Search(TextQuery("cat"), top_k=0)]
    ),
    "search many: one bad filter": lambda b: b.search_many(
        [Search(TextQuery("dog")), Search(TextQuery("cat"), SearchFilter(model_ids=()))]
    ),
    "search many: an unknown neuron": lambda b: b.search_many(
        [Search(TextQuery("dog")), Search(NeuronQuery("resnet20", "layer1.0.conv1", 999))]
    ),
    "search many: a vector of the wrong size": lambda b: b.search_many(
        [Search(VectorQuery(np.ones(7, np.float32)))]
    ),
    "unknown neuron": lambda b: b.get_neuron("resnet20", "layer1.0.conv1", 999),
    "bad model id": lambda b: b.get_model("bad/id"),
    "empty custom label": lambda b: b.describe_neuron(
        "resnet20", "layer1.0.conv1", 0, labels=["ok", ""]
    ),
    "label lookup with a label filter": lambda b: b.find_by_label(
        "dog", flt=SearchFilter(label="cat")
    ),
    "label lookup with a filter scope": lambda b: b.find_by_label(
        "dog", flt=SearchFilter(label_scope=LabelScope.TOP1)
    ),
    "unknown label scope": lambda b: b.find_by_label("dog", scope="top3"),
    "label scope without a label": lambda b: b.search_neurons(
        TextQuery("dog"), SearchFilter(label_scope=LabelScope.TOP5)
    ),
    "compare tau": lambda b: b.compare_models("resnet20", "resnet32", tau=2.0),
    "compare unknown model": lambda b: b.compare_models("resnet20", "nope"),
    "audit without concepts": lambda b: b.audit_model("resnet20"),
    "audit blank concept": lambda b: b.audit_model("resnet20", ["dog", " "]),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_same_errors(name: str, direct: QueryBackend, remote: QueryBackend) -> None:
    call = BAD_CALLS[name]
    with pytest.raises(E.NeuronAtlasError) as here:
        call(direct)
    with pytest.raises(E.NeuronAtlasError) as there:
        call(remote)
    assert type(there.value) is type(here.value), (here.value, there.value)
    assert getattr(there.value, "field", None) == getattr(here.value, "field", None)
    assert str(here.value) in str(there.value)  # the server's text, with the status code


def test_both_are_query_backends(direct: QueryBackend, remote: QueryBackend) -> None:
    assert isinstance(direct, QueryBackend) and isinstance(remote, QueryBackend)
