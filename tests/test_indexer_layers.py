"""Layer discovery, selection, forward order / depth and aggregation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neuronatlas.core.errors import InvalidArgument
from neuronatlas.indexer.cifar_resnet import CifarResNet
from neuronatlas.indexer.layers import ActivationTap, candidate_layers, pool, resolve_layers


class Reordered(nn.Module):
    """Registers ``late`` before ``early`` but runs ``early`` first."""

    def __init__(self):
        super().__init__()
        self.late = nn.Linear(8, 3)
        self.early = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.late(self.early(x).mean(dim=(2, 3)))


def test_cifar_resnet_discovery_and_depth():
    specs = resolve_layers(CifarResNet(20).eval(), None, (3, 32, 32))
    names = [s.name for s in specs]
    assert names[0] == "conv1" and names[-1] == "linear" and len(names) == 20
    assert "layer2.0.conv1" in names and not any("bn" in n or "shortcut" in n for n in names)
    assert [s.units for s in specs][:2] == [16, 16] and specs[-1].units == 10
    assert specs[0].depth == 0.0 and specs[-1].depth == 1.0
    assert specs[1].depth == pytest.approx(1 / 19)
    assert {s.kind for s in specs} == {"conv", "linear"}


def test_selection_by_name_and_glob_and_unknown():
    model = CifarResNet(20).eval()
    specs = resolve_layers(model, ["layer3.*.conv2", "layer1.0"], (3, 32, 32))
    assert [s.name for s in specs] == [
        "layer1.0",
        "layer3.0.conv2",
        "layer3.1.conv2",
        "layer3.2.conv2",
    ]
    assert [s.depth for s in specs] == [0.0, 1 / 3, 2 / 3, 1.0]
    assert specs[0].kind == "other" and specs[0].units == 16
    with pytest.raises(InvalidArgument, match=r"unknown layer 'layer4'.*available layers: conv1"):
        resolve_layers(model, ["layer4"], (3, 32, 32))
    with pytest.raises(InvalidArgument, match="unknown layer"):
        resolve_layers(model, ["layer9.*"], (3, 32, 32))


def test_forward_order_not_registration_order():
    specs = resolve_layers(Reordered().eval(), None, (3, 8, 8))
    assert [(s.name, s.index) for s in specs] == [("early", 0), ("late", 1)]


def test_transformer_blocks_replace_their_inner_layers():
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, batch_first=False)

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(12, 16)
            self.blocks = nn.ModuleList([layer, nn.TransformerEncoderLayer(16, 2, 32)])

        def forward(self, x):  # x: (B, 3, 2, 2) -> 2 tokens of 12 features... sequence-first
            t = self.embed(x.flatten(2).transpose(1, 2).reshape(x.shape[0], 2, 6).repeat(1, 1, 2))
            t = t.transpose(0, 1)  # (T, B, C)
            for b in self.blocks:
                t = b(t)
            return t

    model = Tiny().eval()
    assert candidate_layers(model) == ["embed", "blocks.0", "blocks.1"]
    specs = resolve_layers(model, None, (3, 2, 2))
    assert [s.kind for s in specs] == ["linear", "block", "block"]
    assert specs[1].tokens_first and specs[1].units == 16
    x = torch.randn(5, 3, 2, 2)
    tap = ActivationTap(model, specs, token_agg="mean")
    out = tap(x)
    with torch.no_grad():
        seq = model.blocks[0](
            model.embed(x.flatten(2).transpose(1, 2).reshape(5, 2, 6).repeat(1, 1, 2)).transpose(
                0, 1
            )
        )
    assert torch.allclose(out["blocks.0"], seq.mean(0), atol=1e-5)
    tap.close()


def test_pool_aggregations():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(pool(x, "mean"), x.mean(dim=(2, 3)))
    assert torch.equal(pool(x, "max"), x.amax(dim=(2, 3)))
    tokens = torch.randn(2, 4, 5)
    assert torch.equal(pool(tokens, token_agg="cls"), tokens[:, 0])
    assert torch.allclose(pool(tokens, token_agg="mean"), tokens.mean(1))
    with pytest.raises(InvalidArgument):
        pool(torch.zeros(2, 2, 2, 2, 2))
    with pytest.raises(InvalidArgument, match="aggregation"):
        ActivationTap(CifarResNet(20), [], conv_agg="median")


def test_torchscript_exposes_its_output_only():
    net = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)))
    specs = resolve_layers(net, None, (3, 8, 8))
    assert [(s.name, s.units, s.kind) for s in specs] == [("output", 5, "output")]
    tap = ActivationTap(net, specs)
    x = torch.randn(3, 3, 8, 8)
    assert torch.allclose(tap(x)["output"], net(x))
