"""Records as the store keeps them: a payload read back is the record that was written, and
query vectors are checked before any search."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from neuronatlas.core.errors import InvalidArgument
from neuronatlas.core.records import (
    NO_VECTOR,
    ClassImportance,
    Label,
    NeuronRecord,
    TopSample,
    check_vectors,
)


def every_field_set() -> NeuronRecord:
    """A component record whose every field differs from its default."""
    return NeuronRecord(
        model_id="m",
        layer="layer2",
        layer_index=2,
        depth=0.75,
        unit=3,
        vector=np.linspace(-1, 1, 8, dtype=np.float32),
        top_samples=[TopSample("cls/1.jpg", 1, 2.5), TopSample("cls/2.jpg", 2, 1.5)],
        labels={"a": [Label("dog", 0.3), Label("cat", 0.1)], "b": [Label("striped", 0.2)]},
        label_set=["dog", "striped"],
        clarity=0.4,
        polysemanticity=0.2,
        redundancy=0.1,
        stats={"mean": 0.5, "max": 2.0},
        generation=4,
        polysemanticity_sl=0.3,
        kind="nmf",
        extraction="abc123",
        component={"method": "nmf", "rank": 8},
        top_classes=[ClassImportance("dog", 0.7), ClassImportance("cat", -0.1)],
    )


def test_payload_round_trip_keeps_every_field():
    rec = every_field_set()
    for f in dataclasses.fields(NeuronRecord):  # a new field must be set here, and read back
        default = f.default_factory() if callable(f.default_factory) else f.default
        if f.name != "vector" and default is not dataclasses.MISSING:
            assert getattr(rec, f.name) != default, f"every_field_set() leaves {f.name} default"
    back = NeuronRecord.from_payload(rec.to_payload(), rec.vector.tolist())
    for f in dataclasses.fields(NeuronRecord):
        if f.name == "vector":
            np.testing.assert_array_equal(back.vector, rec.vector)
            assert back.vector.dtype == np.float32
        else:
            assert getattr(back, f.name) == getattr(rec, f.name), f.name


def test_a_neuron_payload_without_optional_keys_reads_with_defaults():
    payload = {"model_id": "m", "layer": "conv1", "layer_index": 0, "depth": 0.5, "unit": 7}
    rec = NeuronRecord.from_payload(payload)
    assert rec.key == "m/conv1/7" and rec.kind == "neuron" and rec.generation == 0
    assert rec.labels == {} and rec.top_samples == [] and rec.component == {}
    # a record read without its vector shares one empty, read-only array
    assert rec.vector is NO_VECTOR and rec.vector.size == 0
    with pytest.raises(ValueError, match="read-only"):
        rec.vector[...] = 1.0
    # the lists and dicts a record holds are its own, not shared between records
    other = NeuronRecord.from_payload(payload)
    rec.labels["x"] = [Label("y", 1.0)]
    assert other.labels == {}


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full(8, np.nan), "NaN or infinite"),
        (np.r_[np.ones(7), -np.inf], "NaN or infinite"),
        (np.zeros(8), "zero norm"),
        (np.full(8, 1e-30), "zero norm"),  # its squares underflow float32
        (np.full(8, 1e30), "too large to normalise"),
        (np.ones(7), r"shape \(7,\)"),
        (np.ones((0, 8)), "empty"),
    ],
)
def test_check_vectors_names_what_is_wrong(bad, message):
    with pytest.raises(InvalidArgument, match=message):
        check_vectors(np.asarray(bad, dtype=np.float32), 8)


def test_check_vectors_passes_good_rows_through_as_float32():
    rows = np.random.default_rng(0).standard_normal((3, 8))
    out = check_vectors(rows, 8)
    assert out.dtype == np.float32 and out.shape == (3, 8)
    np.testing.assert_array_equal(out, rows.astype(np.float32))
    assert check_vectors(rows[0], 8).shape == (1, 8)
    with pytest.raises(InvalidArgument, match="NaN"):  # one bad row refuses the batch
        check_vectors(np.vstack([rows, np.full((1, 8), np.nan)]), 8)
