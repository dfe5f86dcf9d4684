"""The indexer's commands through the real ``neuronatlas`` click group."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from helpers import cifar_args

pytestmark = pytest.mark.integration


def _invoke(*args: str):
    from neuronatlas.cli import cli

    return CliRunner().invoke(
        cli, ["--embedder", "open_clip:na-tiny:random:0", *args], catch_exceptions=False
    )


def test_register_probe_index_show(home, cifar_dir, cifar_models, concepts_dir, tmp_path):
    from neuronatlas.core.errors import InvalidArgument, WeightsUnavailable

    r = _invoke(
        "register",
        "r20",
        *cifar_args(20, cifar_models[20]),
        "--tag",
        "cifar",
    )
    assert r.exit_code == 0 and "cifar_resnet20" in r.output
    with pytest.raises(WeightsUnavailable):
        _invoke(
            "register",
            "r56",
            *cifar_args(56, cifar_models[20]),
        )

    r = _invoke("probe", "tiny", str(cifar_dir), "--limit", "30")
    assert r.exit_code == 0 and "30 images" in r.output and "0 unreadable" in r.output

    places = (
        tmp_path / "places40.txt"
    )  # a slice of the real Places365 file keeps text encoding short
    places.write_text(
        "\n".join((concepts_dir / "categories_places365.txt").read_text().splitlines()[:40])
    )
    r = _invoke(
        "index",
        "r20",
        "--probe",
        "tiny",
        "--vocab",
        f"places={places}",
        "--layers",
        "layer3.2.conv1,linear",
        "--k",
        "4",
        "--no-progress",
    )
    assert r.exit_code == 0, r.output
    assert "indexed 74 neurons in 2 layers" in r.output

    with pytest.raises(InvalidArgument, match="available layers"):
        _invoke("index", "r20", "--probe", "tiny", "--layers", "layer7", "--no-progress")

    out = tmp_path / "grid.png"
    r = _invoke("show", "r20/linear/3", "--out", str(out))
    assert r.exit_code == 0 and out.stat().st_size > 10_000
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] >= 400

    from neuronatlas.core.config import load_settings
    from neuronatlas.core.store import open_store

    with open_store(load_settings()) as store:
        rec = store.get_neuron("r20", "linear", 3)
        assert len(rec.top_samples) == 4 and len(rec.labels["places"]) == 5
        assert store.get_model("r20").tags == ["cifar"]


def test_index_with_percentile_samples(home, cifar_dir, cifar_models):
    """``index --samples percentile --percentile P``: stored in the catalogue entry, and each
    neuron gets min(k, ceil((1 - P/100) N)) images."""
    r = _invoke(
        "index",
        "r20p",
        *cifar_args(20, cifar_models[20]),
        "--probe",
        str(cifar_dir),
        "--limit",
        "40",
        "--layers",
        "linear",
        "--k",
        "5",
        "--samples",
        "percentile",
        "--percentile",
        "90",
        "--no-progress",
    )
    assert r.exit_code == 0, r.output
    from neuronatlas.core.config import load_settings
    from neuronatlas.core.store import open_store

    with open_store(load_settings()) as store:
        index = store.get_model("r20p").extra["index"]
        assert index["options"]["samples"] == "percentile"
        assert index["options"]["percentile"] == 90.0
        assert index["samples"]["candidates"] == 4 and index["samples"]["classes"] == 10
        rec = store.get_neuron("r20p", "linear", 3)
        assert len(rec.top_samples) == 4  # fewer above the percentile than k
    from neuronatlas.cli import cli

    args = ["index", "r20p", "--probe", str(cifar_dir), "--samples", "percentile"]
    bad = CliRunner().invoke(cli, [*args, "--percentile", "100"])
    assert bad.exit_code != 0 and "percentile" in bad.output
