"""Model sources: the built-in CIFAR ResNets on their real checkpoints, and the other kinds."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from neuronatlas.core.errors import InvalidArgument, WeightsUnavailable
from neuronatlas.indexer.cifar_resnet import CifarResNet
from neuronatlas.indexer.sources import build_model, file_sha256


@pytest.mark.integration
def test_all_cifar_checkpoints_load_strictly(cifar_models):
    assert sorted(cifar_models) == [20, 32, 44, 56]
    for depth, path in cifar_models.items():
        built = build_model({"kind": "cifar_resnet", "depth": depth, "weights": str(path)})
        ckpt = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        state = built.module.state_dict()
        for key, val in ckpt.items():
            assert torch.equal(state[key.removeprefix("module.")], val)
        n_blocks = sum(
            1
            for n, _ in built.module.named_modules()
            if n.count(".") == 1 and n.startswith("layer")
        )
        assert n_blocks == 3 * (depth - 2) // 6
        assert built.weights_sha256 == file_sha256(path)
        assert built.input.input_hw == (32, 32) and built.input.crop is None


@pytest.mark.integration
def test_resnet20_classifies_cifar_test_jpegs(cifar_dir, cifar_models):
    built = build_model({"kind": "cifar_resnet", "depth": 20, "weights": str(cifar_models[20])})
    tf = built.input.transform()
    classes = sorted(p.name for p in cifar_dir.iterdir() if p.is_dir())
    xs, ys = [], []
    for ci, c in enumerate(classes):
        for f in sorted((cifar_dir / c).glob("*.jpg"))[:50]:
            xs.append(tf(Image.open(f).convert("RGB")))
            ys.append(ci)
    with torch.inference_mode():
        pred = built.module(torch.stack(xs)).argmax(1)
    acc = (pred == torch.tensor(ys)).float().mean().item()
    assert len(ys) == 500 and 0.70 < acc < 0.95


@pytest.mark.integration
def test_wrong_or_missing_checkpoint(cifar_models, tmp_path):
    with pytest.raises(WeightsUnavailable, match="does not fit a CIFAR ResNet-32"):
        build_model({"kind": "cifar_resnet", "depth": 32, "weights": str(cifar_models[20])})
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        build_model({"kind": "cifar_resnet", "depth": 20, "weights": str(tmp_path / "nope.th")})
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"garbage")
    with pytest.raises(WeightsUnavailable, match="cannot be read"):
        build_model({"kind": "cifar_resnet", "depth": 20, "weights": str(bad)})


def test_cifar_resnet_shapes_and_bad_depth():
    m = CifarResNet(20).eval()
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert m.layer2[0].shortcut(torch.ones(1, 16, 32, 32)).shape == (1, 32, 16, 16)
    with pytest.raises(InvalidArgument, match="6n\\+2"):
        CifarResNet(21)


def test_torchvision_local_weights_and_mismatch(tmp_path):
    import torchvision

    model = torchvision.models.squeezenet1_1(num_classes=7)
    path = tmp_path / "sq.pth"
    torch.save(model.state_dict(), path)
    built = build_model(
        {
            "kind": "torchvision",
            "name": "squeezenet1_1",
            "weights": str(path),
            "kwargs": {"num_classes": 7},
            "input_size": 64,
            "resize": 72,
        }
    )
    assert torch.equal(
        built.module.state_dict()["features.0.weight"], model.state_dict()["features.0.weight"]
    )
    assert (
        built.weights_sha256 == file_sha256(path)
        and built.architecture == "torchvision:squeezenet1_1"
    )
    assert (built.input.crop, built.input.resize) == (64, 72)
    with pytest.raises(WeightsUnavailable, match="do not fit"):
        build_model(
            {"kind": "torchvision", "name": "squeezenet1_1", "weights": str(path)}
        )  # 1000 classes
    with pytest.raises(InvalidArgument, match="unknown torchvision model"):
        build_model({"kind": "torchvision", "name": "resnet9000"})


def test_torchscript_python_timm_and_unknown_kind(tmp_path):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 2),
    )
    path = tmp_path / "m.pt"
    torch.jit.script(net).save(str(path))
    built = build_model(
        {"kind": "torchscript", "path": str(path), "input_size": 16, "resize": None}
    )
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(built.module(x), net(x))

    py = build_model(
        {
            "kind": "python",
            "factory": "neuronatlas.indexer.cifar_resnet:CifarResNet",
            "kwargs": {"depth": 20},
        }
    )
    again = build_model(
        {
            "kind": "python",
            "factory": "neuronatlas.indexer.cifar_resnet:CifarResNet",
            "kwargs": {"depth": 20},
        }
    )
    assert py.weights_sha256 == again.weights_sha256  # seeded random init: stable identity
    with pytest.raises(InvalidArgument, match=r"not an nn\.Module"):
        build_model({"kind": "python", "factory": "builtins:dict", "kwargs": {}})
    with pytest.raises(InvalidArgument, match="failed: TypeError"):
        build_model(
            {
                "kind": "python",
                "factory": "neuronatlas.indexer.cifar_resnet:CifarResNet",
                "kwargs": {"width": 3},
            }
        )
    with pytest.raises(InvalidArgument, match="cannot import"):
        build_model({"kind": "python", "factory": "no_such_pkg.mod:fn"})

    pytest.importorskip("timm")
    vit = build_model(
        {
            "kind": "timm",
            "name": "vit_tiny_patch16_224",
            "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2},
            "random_init": True,
        }
    )
    assert vit.input.input_hw == (32, 32) and vit.architecture == "timm:vit_tiny_patch16_224"
    with pytest.raises(InvalidArgument, match="unknown model source kind"):
        build_model({"kind": "onnx"})
