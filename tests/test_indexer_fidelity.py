"""Indexing fidelity: input transforms users state and see, the probe-set accuracy check,
``--factory`` / ``py:`` references from the current directory or a file, and no silently
random models. The last tests index a real CIFAR ResNet through a factory file."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from neuronatlas.core.errors import InvalidArgument, NotFound
from neuronatlas.indexer.accuracy import (
    CHANCE_FACTOR,
    class_labels,
    load_class_map,
    parse_class_map,
    probe_accuracy,
)
from neuronatlas.indexer.cli import source_from_options
from neuronatlas.indexer.sources import IMAGENET_DEFAULT, build_model
from neuronatlas.indexer.transforms import TransformSpec, resolve_transform, user_keys

TINY = "open_clip:na-tiny:random:0"
MEAN = ("0.485", "0.456", "0.406")
STD = ("0.229", "0.224", "0.225")

LENET = """
import torch
from torch import nn


class LeNet(nn.Module):
    # the classic 32-px LeNet: its flatten only fits 32 x 32 inputs
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc = nn.Linear(400, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.view(-1, 400))


def make():
    return LeNet()
"""


def _invoke(*args: str, env: dict[str, str] | None = None):
    from neuronatlas.cli import cli

    return CliRunner().invoke(cli, ["--embedder", TINY, *args], env=env)


# -- transforms: defaults per kind, options, validation -------------------------------------------
def test_default_transform_per_kind(tmp_path):
    cifar = build_model({"kind": "cifar_resnet", "depth": 20, "random_init": True}).input
    assert (cifar.resize, cifar.crop, cifar.input_hw) == ((32, 32), None, (32, 32))
    assert cifar.mean == (0.485, 0.456, 0.406) and cifar.interpolation == "bilinear"
    py = build_model(
        {"kind": "python", "factory": "neuronatlas.indexer.cifar_resnet:CifarResNet"}
    ).input
    assert py == IMAGENET_DEFAULT and (py.resize, py.crop) == (256, 224)
    tv = build_model({"kind": "torchvision", "name": "squeezenet1_1", "random_init": True}).input
    assert tv == IMAGENET_DEFAULT
    import torchvision

    from neuronatlas.indexer.sources import _enum_transform

    swag = _enum_transform(torchvision.models.ViT_B_16_Weights.IMAGENET1K_SWAG_E2E_V1)
    assert swag is not None and (swag.resize, swag.crop, swag.interpolation) == (
        384,
        384,
        "bicubic",
    )  # a weights enum brings its own transform (no download needed to read it)
    net = torch.jit.script(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3)))
    net.save(str(tmp_path / "m.pt"))
    assert build_model({"kind": "torchscript", "path": str(tmp_path / "m.pt")}).input == py


@pytest.mark.parametrize(
    "keys, resize, crop",
    [
        ({"input_size": 32}, (32, 32), None),  # alone: resize to N x N, no crop
        ({"input_size": 224, "resize": 256}, 256, 224),  # with resize: the crop
        ({"input_size": 32, "resize": None}, None, 32),  # resize removed: crop only
        ({"input_size": 64, "crop": 64}, None, 64),  # with crop: must agree, no resize
        ({"resize": 288}, 288, 224),  # resize alone replaces the default's resize step
        ({"crop": 200}, 256, 200),
        ({"resize": [40, 30], "crop": None}, (40, 30), None),
        ({"resize": "48x48", "crop": 40}, (48, 48), 40),
    ],
)
def test_transform_options_resolve(keys, resize, crop):
    spec = resolve_transform(keys, IMAGENET_DEFAULT)
    assert (spec.resize, spec.crop) == (resize, crop)
    assert spec.mean == IMAGENET_DEFAULT.mean and user_keys(keys) == list(keys)


@pytest.mark.parametrize(
    "keys, field, pattern",
    [
        ({"input_size": 0}, "input_size", "positive integer"),
        ({"input_size": 3.5}, "input_size", "positive integer"),
        ({"crop": -1}, "crop", "positive integer"),
        ({"resize": "12x"}, "resize", "HxW or none"),
        ({"resize": [1, 2, 3]}, "resize", "H x W"),
        ({"mean": [0.5, 0.5]}, "mean", "three"),
        ({"std": [0.2, 0.0, 0.2]}, "std", "> 0"),
        ({"std": ["a", 1, 1]}, "std", "three numbers"),
        ({"interpolation": "cubic"}, "interpolation", "bicubic"),
        ({"resize": 300, "crop": None}, "crop", "different sizes"),
        ({"input_size": 32, "crop": 30}, "input_size", "contradicts"),
        ({"crop": 300}, "crop", "larger"),
        ({"resize": "48x48"}, "crop", "larger"),  # the default's crop 224 stays
    ],
)
def test_transform_validation(keys, field, pattern):
    with pytest.raises(InvalidArgument, match=pattern) as e:
        resolve_transform(keys, IMAGENET_DEFAULT)
    assert e.value.field == field


def test_transform_output_and_dict_round_trip():
    spec = resolve_transform({"input_size": 32, "interpolation": "bicubic"}, IMAGENET_DEFAULT)
    wide = Image.new("RGB", (64, 40), (255, 0, 0))
    assert spec.transform()(wide).shape == (3, 32, 32)  # squashed to 32 x 32, not cropped
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8))
    expect = (
        torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255.0
        - torch.tensor(spec.mean)[:, None, None]
    ) / torch.tensor(spec.std)[:, None, None]
    assert torch.allclose(spec.transform()(img), expect, atol=1e-6)  # 32 px: resize is a no-op
    d = spec.to_dict()
    assert d["input_size"] == [32, 32] and d["resize"] == [32, 32] and d["crop"] is None
    assert "Resize(32x32, bicubic)" in d["description"] and "CenterCrop" not in d["description"]
    assert TransformSpec.from_dict(json.loads(json.dumps(d))) == spec


def test_cli_options_make_source_keys():
    src = source_from_options(
        kind="python",
        factory="m.py:make",
        input_size=32,
        resize="none",
        crop="32",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        interpolation="bicubic",
    )
    assert src == {
        "kind": "python",
        "factory": "m.py:make",
        "input_size": 32,
        "resize": None,
        "crop": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bicubic",
    }
    src = source_from_options(
        source_json='{"kind": "timm", "name": "x", "resize": 300}', resize="40x30", crop="none"
    )
    assert src == {"kind": "timm", "name": "x", "resize": [40, 30], "crop": None}
    assert "random_init" not in (source_from_options(kind="cifar_resnet", random_init=False) or {})
    with pytest.raises(InvalidArgument, match="--crop"):
        source_from_options(kind="python", crop="big")
    assert source_from_options() is None  # index a registered model as it is
    with pytest.raises(click.UsageError, match="--input-size, --mean describe a model source"):
        source_from_options(input_size=32, mean=(0.5, 0.5, 0.5))  # would be silently ignored


# -- the first forward pass: a wrong input size says what to change --------------------------------
def test_shape_failure_names_input_size_and_options(tmp_path, edge_store):
    from neuronatlas.indexer.api import register_model

    (tmp_path / "lenet.py").write_text(LENET)
    source = {"kind": "python", "factory": str(tmp_path / "lenet.py") + ":make"}
    with pytest.raises(InvalidArgument) as e:
        register_model(edge_store, "lenet", source)
    msg = str(e.value)
    assert "3x224x224" in msg and "[-1, 400]" in msg and "--input-size" in msg
    assert "CenterCrop(224)" in msg and e.value.field == "input_size"
    entry = register_model(edge_store, "lenet", {**source, "input_size": 32})
    assert entry.transform["input_size"] == [32, 32] and entry.transform["resize"] == [32, 32]
    assert edge_store.get_model("lenet").transform == entry.transform


# -- factory and plug-in references ------------------------------------------------------------
FACTORY = """
import torch
from helper_mod import WIDTH  # a neighbour of this file


def make(width=WIDTH):
    return torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten())
"""


def test_factory_from_current_directory_and_from_file(tmp_path, monkeypatch):
    pkg = tmp_path / "proj"
    (pkg / "models").mkdir(parents=True)
    (pkg / "helper_mod.py").write_text("WIDTH = 5\n")
    (pkg / "na_cwd_factory.py").write_text(textwrap.dedent(FACTORY))
    (pkg / "models" / "net.py").write_text(
        textwrap.dedent(FACTORY).replace("from helper_mod import WIDTH", "WIDTH = 7")
    )
    before = list(sys.path)
    monkeypatch.chdir(pkg)
    monkeypatch.delitem(sys.modules, "na_cwd_factory", raising=False)
    monkeypatch.delitem(sys.modules, "helper_mod", raising=False)
    # package.module:fn is found in the current directory (like python -m) ...
    m = build_model({"kind": "python", "factory": "na_cwd_factory:make", "input_size": 8})
    assert m.module[0].out_channels == 5
    # ... and path/to/file.py:fn, relative or absolute, loads the file
    rel = build_model({"kind": "python", "factory": "models/net.py:make", "input_size": 8})
    assert rel.module[0].out_channels == 7
    absolute = build_model(
        {"kind": "python", "factory": f"{pkg}/na_cwd_factory.py:make", "kwargs": {"width": 3}}
    )
    assert absolute.module[0].out_channels == 3
    assert sys.path == before  # the loader leaves sys.path as it found it
    from neuronatlas.indexer.api import normalise_source

    assert normalise_source({"kind": "python", "factory": "models/net.py:make"})["factory"] == (
        f"{pkg.resolve()}/models/net.py:make"
    )
    assert normalise_source({"kind": "python", "factory": "a.b:make"})["factory"] == "a.b:make"
    with pytest.raises(InvalidArgument, match="does not exist"):
        build_model({"kind": "python", "factory": "models/none.py:make"})
    with pytest.raises(InvalidArgument, match="no attribute 'nope'"):
        build_model({"kind": "python", "factory": "models/net.py:nope"})
    with pytest.raises(InvalidArgument, match="current directory"):
        build_model({"kind": "python", "factory": "na_no_such_module:make"})


def test_embedder_plugin_shares_the_loader(tmp_path, monkeypatch):
    from neuronatlas.core.embedder import load_embedder

    plugin = tmp_path / "plug" / "my_embedder.py"
    plugin.parent.mkdir()
    plugin.write_text(
        textwrap.dedent(
            """
            import numpy as np
            from neuronatlas.core.records import EmbedderInfo

            class Duck:
                info = EmbedderInfo(name="duck", weights="v1", dim=2)
                preprocess = staticmethod(lambda im: im)
                def encode_images(self, images, batch_size=64):
                    return [[3.0, 4.0] for _ in images]
                def encode_text(self, texts):
                    return [[1.0, 0.0] for _ in texts]

            def make(device="auto"):
                return Duck()
            """
        )
    )
    emb = load_embedder(f"py:{plugin}:make")
    np.testing.assert_allclose(emb.encode_images([0]), [[0.6, 0.8]], atol=1e-6)
    monkeypatch.chdir(plugin.parent)
    monkeypatch.delitem(sys.modules, "my_embedder", raising=False)
    assert load_embedder("py:my_embedder:make").info.name == "duck"


# -- no silently random models -------------------------------------------------------------------
def test_builtin_kinds_need_weights_or_random_init(home):
    with pytest.raises(InvalidArgument, match="--random-init") as e:
        build_model({"kind": "cifar_resnet", "depth": 20})
    assert e.value.field == "weights"
    with pytest.raises(InvalidArgument, match="--random-init"):
        build_model({"kind": "torchvision", "name": "squeezenet1_1"})
    with pytest.raises(InvalidArgument, match="not both"):
        build_model({"kind": "cifar_resnet", "depth": 20, "weights": "x.th", "random_init": True})
    built = build_model({"kind": "cifar_resnet", "depth": 20, "random_init": True})
    assert built.training_data.startswith("none (random initialisation")

    r = _invoke("register", "rnd", "--kind", "cifar_resnet", "--depth", "20")
    assert r.exit_code != 0 and "--random-init" in str(r.exception)
    r = _invoke("register", "rnd", "--kind", "cifar_resnet", "--depth", "20", "--random-init")
    assert r.exit_code == 0, r.output
    assert "transform: Resize(32x32, bilinear)" in r.output and "cifar_resnet default" in r.output


# -- the probe-set accuracy ----------------------------------------------------------------------
FILES = [f"{c}/{i}.jpg" for c in ("cat", "dog", "frog") for i in range(4)]  # 3 balanced classes


def test_accuracy_with_sorted_class_folders():
    assert class_labels(FILES)[0] == ["cat", "dog", "frog"]
    assert class_labels(["a.jpg", "cat/b.jpg"]) is None and class_labels(["cat/1.jpg"]) is None
    y = class_labels(FILES)[1]
    pred = y.copy()
    pred[[0, 5]] = (pred[[0, 5]] + 1) % 3  # two mistakes
    rec, why = probe_accuracy(pred.astype(np.int32), 3, FILES)
    assert why == "" and rec["images"] == 12 and rec["correct"] == 10
    assert rec["accuracy"] == pytest.approx(10 / 12) and rec["chance"] == pytest.approx(1 / 3)
    assert rec["warning"] == "" and rec["mapping"] == "sorted class folders"
    # near chance: all "cat" -> 1/3, flagged
    rec, _ = probe_accuracy(np.zeros(12, np.int32), 3, FILES)
    assert rec["accuracy"] == pytest.approx(1 / 3)
    assert rec["accuracy"] < CHANCE_FACTOR * rec["chance"]
    assert "within 1.5x of chance" in rec["warning"] and "--input-size" in rec["warning"]
    # unrecorded predictions (-1) are not counted
    pred = y.astype(np.int32)
    pred[:4] = -1
    assert probe_accuracy(pred, 3, FILES)[0]["images"] == 8


def test_accuracy_not_measured_reasons():
    y = class_labels(FILES)[1].astype(np.int32)
    assert "no class folders" in probe_accuracy(y, 3, [f"{i}.jpg" for i in range(12)])[1]
    assert "--class-map" in probe_accuracy(y, 1000, FILES)[1]
    assert "not a (batch, classes)" in probe_accuracy(y, -1, FILES)[1]
    assert probe_accuracy(y, 3, FILES, {7: "cat"})[1].startswith("the class map names output 7")


def test_accuracy_with_a_class_map(tmp_path):
    y = class_labels(FILES)[1]
    # a 1000-output model: "cat" at 281 and 282, "dog" at 207; frog images are not counted
    cmap = {281: "cat", 282: "cat", 207: "dog", 5: "goldfish"}
    pred = np.where(y == 0, 282, np.where(y == 1, 207, 5)).astype(np.int32)
    pred[4] = 5  # a dog called goldfish: wrong
    rec, why = probe_accuracy(pred, 1000, FILES, cmap)
    assert why == "" and rec["images"] == 8 and rec["correct"] == 7 and rec["classes"] == 2
    assert rec["chance"] == pytest.approx(0.5) and rec["mapping"] == "class map (4 outputs)"
    # list and object files
    (tmp_path / "list.json").write_text(json.dumps(["cat", "dog", "frog"]))
    (tmp_path / "obj.json").write_text(json.dumps({"0": "cat", "2": "frog"}))
    assert load_class_map(tmp_path / "list.json") == {0: "cat", 1: "dog", 2: "frog"}
    assert load_class_map(tmp_path / "obj.json") == {0: "cat", 2: "frog"}
    for bad in ({"x": "cat"}, {"-1": "cat"}, ["cat", ""], "cat", []):
        with pytest.raises(InvalidArgument):
            parse_class_map(bad)
    with pytest.raises(NotFound):
        load_class_map(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        load_class_map(tmp_path / "bad.json")


def test_predictions_survive_a_checkpoint(tmp_path):
    from neuronatlas.core.config import Home
    from neuronatlas.indexer.runstate import ForwardState, RunDir

    state = ForwardState.fresh({"fc": 3}, 2, 4, samples=6)
    state.record_predictions(0, torch.tensor([[0.0, 1.0, 0.0], [2.0, 1.0, 0.0]]))
    state.samples_done = 2
    run = RunDir(Home(tmp_path), "m")
    run.save_state(state)
    back = run.load_state(["fc"])
    assert back is not None and back.outputs == 3
    assert back.predictions.tolist() == [1, 0, -1, -1, -1, -1]
    # with a class map's outputs as candidates: the best of those
    back.record_predictions(2, torch.tensor([[0.0, 9.0, 1.0], [5.0, 9.0, 1.0]]), [0, 2])
    assert back.predictions.tolist()[2:4] == [2, 0]
    back.record_predictions(4, torch.zeros(2, 3, 4))  # not (batch, classes): no accuracy
    assert back.outputs == -1


def test_model_conversion_round_trips_transform_and_accuracy():
    from neuronatlas.core.records import ModelEntry
    from neuronatlas.service.convert import model_from_pb, model_to_pb

    spec = resolve_transform({"resize": 256, "crop": 224}, IMAGENET_DEFAULT)
    acc = {
        "accuracy": 0.8,
        "chance": 0.1,
        "images": 300,
        "correct": 240,
        "classes": 10,
        "mapping": "sorted class folders",
        "warning": "",
    }
    entry = ModelEntry("m", transform=spec.to_dict(), probe_accuracy=acc)
    msg = model_to_pb(entry)
    assert list(msg.transform.resize) == [256] and msg.transform.crop == 224
    assert (msg.transform.input_height, msg.transform.input_width) == (224, 224)
    back = model_from_pb(msg)
    assert back.transform == spec.to_dict() and back.probe_accuracy == acc
    sq = resolve_transform({"input_size": 32}, IMAGENET_DEFAULT).to_dict()
    assert model_from_pb(model_to_pb(ModelEntry("m", transform=sq))).transform == sq
    empty = model_from_pb(model_to_pb(ModelEntry("m")))
    assert empty.transform == {} and empty.probe_accuracy == {}


# -- real data: a CIFAR ResNet through a factory file ------------------------------------------
REAL_FACTORY = """
from neuronatlas.indexer.cifar_resnet import load_cifar_resnet


def resnet20(weights):
    return load_cifar_resnet(20, weights)
"""
N_REAL = 300


def _independent_accuracy(cifar_dir: Path, files: list[str], weights: Path) -> float:
    from torchvision import transforms as T

    from neuronatlas.indexer.cifar_resnet import load_cifar_resnet

    tf = T.Compose(
        [
            T.Resize((32, 32)),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ]
    )
    classes = sorted({f.split("/")[0] for f in files})
    x = torch.stack([tf(Image.open(cifar_dir / f).convert("RGB")) for f in files])
    y = torch.tensor([classes.index(f.split("/")[0]) for f in files])
    with torch.inference_mode():
        pred = load_cifar_resnet(20, weights)(x).argmax(1)
    return float((pred == y).float().mean())


@pytest.mark.integration
def test_real_resnet_through_a_factory_file(home, tmp_path, cifar_dir, cifar_models):
    from neuronatlas.core.config import load_settings
    from neuronatlas.core.store import open_store
    from neuronatlas.indexer.probes import balanced_subset

    factory = tmp_path / "my_resnet.py"
    factory.write_text(REAL_FACTORY)
    weights = cifar_models[20]
    common = ["--kind", "python", "--factory", f"{factory}:resnet20"]
    common += ["--source", json.dumps({"kind": "python", "kwargs": {"weights": str(weights)}})]
    run = ["--probe", str(cifar_dir), "--limit", str(N_REAL), "--layers", "linear"]
    run += ["--k", "5", "--batch-size", "100", "--no-progress"]

    # the default python transform (resize 256 -> crop 224) would silently misfeed it; the
    # correct one is stated with --input-size and --mean / --std
    opts = ["--input-size", "32", "--mean", *MEAN, "--std", *STD]
    r = _invoke("index", "r20py", *common, *opts, *run)
    assert r.exit_code == 0, r.output + repr(r.exception)
    good_output = r.output
    assert "transform: Resize(32x32, bilinear) -> ToTensor -> Normalize(" in r.output
    assert "from input_size, mean, std; python defaults for the rest" in r.output
    assert "probe accuracy: " in r.output and "WARNING" not in r.output

    # a wrong transform (an 8x upscale, then a 32-px crop): near chance, loudly flagged
    r = _invoke("index", "r20bad", *common, "--resize", "256", "--crop", "32", *run)
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "WARNING: probe accuracy" in r.output and "within 1.5x of chance" in r.output

    with open_store(load_settings()) as store:
        good, bad = store.get_model("r20py"), store.get_model("r20bad")
    every = sorted(p.relative_to(cifar_dir).as_posix() for p in cifar_dir.glob("*/*.jpg"))
    files = balanced_subset(every, N_REAL)
    expected = _independent_accuracy(cifar_dir, files, weights)
    acc = good.probe_accuracy
    assert acc["images"] == N_REAL and acc["classes"] == 10
    assert abs(acc["accuracy"] - expected) <= 0.01, (acc, expected)
    assert acc["accuracy"] > 0.6 and acc["chance"] == pytest.approx(0.1) and not acc["warning"]
    assert f"probe accuracy: {acc['accuracy']:.1%} top-1 on {N_REAL} images" in good_output
    assert good.transform["input_size"] == [32, 32] and good.transform["crop"] is None
    assert bad.probe_accuracy["accuracy"] < CHANCE_FACTOR * bad.probe_accuracy["chance"]
    assert bad.probe_accuracy["warning"] and bad.transform["resize"] == 256

    models = _invoke("models")
    assert "WARNING r20bad" in models.output and "32x32" in models.output

    # a class map: outputs 0 and 1 are airplane and automobile; only those images count
    cmap = tmp_path / "two.json"
    cmap.write_text(json.dumps({"0": "airplane", "1": "automobile"}))
    r = _invoke("index", "r20py", *run, "--class-map", str(cmap))
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert f"top-1 on {2 * N_REAL // 10} images, 2 classes (chance 50.0%; class map" in r.output
    with open_store(load_settings()) as store:
        two = store.get_model("r20py").probe_accuracy
    # the prediction is the better of the two named outputs: "which of the two?"
    assert two["mapping"] == "class map (2 outputs)" and two["accuracy"] > 0.85
    assert two["chance"] == 0.5 and not two["warning"]
    cmap.write_text(json.dumps(["tabby", "siamese"]))
    r = _invoke("index", "r20py", *run, "--class-map", str(cmap))
    assert r.exit_code != 0 and "names none of the probe set's classes" in str(r.exception)


@pytest.mark.integration
def test_get_model_returns_transform_and_accuracy(client, indexed_home):
    """GetModel carries the transform and the probe accuracy of the session's indexed store."""
    remote = client.get_model("resnet20")
    assert remote.transform["description"].startswith("Resize(32x32, bilinear)")
    assert remote.probe_accuracy["images"] == 200 and remote.probe_accuracy["accuracy"] > 0.5
    assert not remote.probe_accuracy["warning"]
    assert remote.probe_accuracy["chance"] == pytest.approx(0.1)
    assert remote.transform["input_size"] == [32, 32]
