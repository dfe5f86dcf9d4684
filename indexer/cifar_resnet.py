"""The CIFAR-10 ResNet family (He et al. 2016, CIFAR variant): depth 20, 32, 44, 56, ...

Layout matches the widely shared checkpoints ``cifar10-resnetNN-*.th``: ``conv1``/``bn1``, three
stages ``layer1..3`` of ``n = (depth - 2) / 6`` basic blocks (16/32/64 channels, stride 2 at the
first block of stages 2 and 3), parameter-free "option A" shortcuts, global average pool and
``linear`` 64 -> 10.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from neuronatlas.core.errors import InvalidArgument, WeightsUnavailable

CIFAR_MEAN = (0.485, 0.456, 0.406)
CIFAR_STD = (0.229, 0.224, 0.225)


class PadShortcut(nn.Module):
    """Option-A shortcut: every second pixel, channels zero-padded by ``pad`` on each side."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = PadShortcut(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10):
        super().__init__()
        if depth < 8 or (depth - 2) % 6 != 0:
            raise InvalidArgument(
                f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, ...), not {depth}", field="depth"
            )
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(in_planes, planes, stride)]
        blocks += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def load_cifar_resnet(depth: int, weights: str | Path | None) -> CifarResNet:
    """Build a CIFAR ResNet and strictly load a ``{"state_dict": {"module.…": …}}`` checkpoint.

    ``weights=None`` leaves the random initialisation (for tests). A missing, unreadable or
    mismatching file raises WeightsUnavailable naming the problem.
    """
    model = CifarResNet(int(depth))
    if weights is None:
        return model.eval()
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise WeightsUnavailable(f"checkpoint {path} cannot be read: {e}") from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise WeightsUnavailable(f"checkpoint {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    # checkpoints from older PyTorch lack BatchNorm's num_batches_tracked; load_state_dict fills it
    missing = sorted(k for k in set(expected) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = sorted(
        k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if bad_shape:
            parts.append(f"{len(bad_shape)} shape mismatches (e.g. {bad_shape[0]})")
        raise WeightsUnavailable(
            f"checkpoint {path.name} does not fit a CIFAR ResNet-{depth}: " + ", ".join(parts)
        )
    model.load_state_dict(state, strict=True)
    return model.eval()
