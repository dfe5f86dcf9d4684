"""Model sources: how to build the PyTorch module behind a catalogue entry.

A source is a plain dict stored in the catalogue (``ModelEntry.source``); ``kind`` picks the
builder:

- ``{"kind": "cifar_resnet", "depth": 20, "weights": "/path/resnet20.th"}`` (built in)
- ``{"kind": "torchvision", "name": "resnet18", "weights": "/path.pth" | "IMAGENET1K_V1"}``
- ``{"kind": "timm", "name": "resnet18", "weights": "/path.pth"}`` (needs ``timm``)
- ``{"kind": "torchscript", "path": "/path/model.pt"}``
- ``{"kind": "python", "factory": "package.module:fn", "kwargs": {...}}`` (returns an nn.Module)

Every source may override the input transform with ``input_size``, ``resize``, ``mean``,
``std``; defaults depend on the kind (CIFAR: 32 px; ImageNet-style: resize 256, crop 224).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuronatlas.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NeuronAtlasError,
    WeightsUnavailable,
)
from neuronatlas.core.hashing import file_sha256

from .cifar_resnet import CIFAR_MEAN, CIFAR_STD, load_cifar_resnet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class InputSpec:
    """How probe images are turned into model input: resize, centre crop, normalise."""

    size: int = 224
    resize: int | None = 256
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def transform(self) -> Callable[[Any], torch.Tensor]:
        from torchvision import transforms as T

        steps: list[Any] = []
        if self.resize:
            steps.append(T.Resize(self.resize, interpolation=T.InterpolationMode.BICUBIC))
        steps += [T.CenterCrop(self.size), T.ToTensor(), T.Normalize(self.mean, self.std)]
        return T.Compose(steps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuiltModel:
    module: nn.Module
    input: InputSpec
    architecture: str
    weights_sha256: str
    training_data: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def state_sha256(module: nn.Module) -> str:
    """Identity of in-memory weights (for sources without a weights file)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _seeded(source: dict[str, Any], make: Callable[[], Any]) -> Any:
    """Run a builder under a fixed seed (``source["seed"]``, default 0) so random initial
    weights, and hence the weights hash, are the same every time the source is built."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(source.get("seed", 0)))
        return make()


def _weights_file(value: Any, what: str) -> Path:
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"{what} weights file {path} does not exist")
    return path


def _load_state_file(module: nn.Module, path: Path, what: str) -> None:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise WeightsUnavailable(f"{what} weights {path} cannot be read: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightsUnavailable(f"{what} weights {path} hold no state dict")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        module.load_state_dict(obj, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0:3]
        raise WeightsUnavailable(
            f"{what} weights {path.name} do not fit the architecture: {' '.join(first)}"
        ) from None


def _input_spec(source: dict[str, Any], default: InputSpec) -> InputSpec:
    spec = default
    try:
        if "input_size" in source:
            spec = InputSpec(int(source["input_size"]), spec.resize, spec.mean, spec.std)
        if "resize" in source:
            r = source["resize"]
            spec = InputSpec(spec.size, int(r) if r else None, spec.mean, spec.std)
        if "mean" in source:
            spec = InputSpec(
                spec.size, spec.resize, tuple(float(v) for v in source["mean"]), spec.std
            )
        if "std" in source:
            spec = InputSpec(
                spec.size, spec.resize, spec.mean, tuple(float(v) for v in source["std"])
            )
    except (TypeError, ValueError):
        raise InvalidArgument(f"bad input transform in source {source}", field="source") from None
    if len(spec.mean) != len(spec.std):
        raise InvalidArgument("source mean and std must have the same length", field="source")
    return spec


def _cifar_resnet(source: dict[str, Any]) -> BuiltModel:
    try:
        depth = int(source.get("depth", 20))
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"cifar_resnet depth {source.get('depth')!r} is not an integer", field="depth"
        ) from None
    weights = source.get("weights")
    module = _seeded(source, lambda: load_cifar_resnet(depth, weights))
    sha = file_sha256(Path(weights).expanduser()) if weights else state_sha256(module)
    return BuiltModel(
        module,
        _input_spec(source, InputSpec(32, None, CIFAR_MEAN, CIFAR_STD)),
        f"cifar_resnet{depth}",
        sha,
        "CIFAR-10 (image classification, 10 classes)",
    )


def _torchvision(source: dict[str, Any]) -> BuiltModel:
    import torchvision

    name = str(source.get("name", ""))
    if name not in torchvision.models.list_models():
        raise InvalidArgument(f"unknown torchvision model {name!r}", field="name")
    weights = source.get("weights")
    kwargs = dict(source.get("kwargs", {}))
    if weights and not Path(str(weights)).expanduser().exists() and "/" not in str(weights):
        # a weights enum name such as IMAGENET1K_V1: needs the download cache or network
        try:
            enum = torchvision.models.get_model_weights(name)[str(weights)]
            module = torchvision.models.get_model(name, weights=enum, **kwargs)
        except KeyError:
            raise InvalidArgument(
                f"torchvision {name} has no weights {weights!r}", field="weights"
            ) from None
        except Exception as e:  # noqa: BLE001 - download, cache and load errors of any type
            raise WeightsUnavailable(
                f"torchvision weights {name}/{weights} cannot be loaded: {e}"
            ) from None
        sha = state_sha256(module)
        training = f"ImageNet-1k ({weights})"
    else:
        module = _seeded(source, lambda: torchvision.models.get_model(name, weights=None, **kwargs))
        if weights:
            path = _weights_file(weights, f"torchvision {name}")
            _load_state_file(module, path, f"torchvision {name}")
            sha = file_sha256(path)
        else:
            sha = state_sha256(module)
        training = ""
    return BuiltModel(
        module.eval(), _input_spec(source, InputSpec()), f"torchvision:{name}", sha, training
    )


def _timm(source: dict[str, Any]) -> BuiltModel:
    try:
        import timm
    except ImportError:
        raise FailedPrecondition(
            "timm sources need the 'timm' package: pip install 'neuronatlas[timm]'"
        ) from None
    name = str(source.get("name", ""))
    weights = source.get("weights")
    kwargs = dict(source.get("kwargs", {}))
    try:
        module = _seeded(source, lambda: timm.create_model(name, pretrained=False, **kwargs))
    except RuntimeError as e:
        raise InvalidArgument(f"unknown timm model {name!r}: {e}", field="name") from None
    if weights:
        path = _weights_file(weights, f"timm {name}")
        _load_state_file(module, path, f"timm {name}")
        sha = file_sha256(path)
    else:
        sha = state_sha256(module)
    cfg = timm.data.resolve_data_config({}, model=module)
    size = int(cfg["input_size"][-1])
    img_size = getattr(
        getattr(module, "patch_embed", None), "img_size", None
    )  # ViTs built for another size
    if img_size:
        size = int(img_size[-1] if isinstance(img_size, (tuple, list)) else img_size)
    resize = round(size / float(cfg.get("crop_pct", 0.875)))
    default = InputSpec(size, resize, tuple(cfg["mean"]), tuple(cfg["std"]))
    return BuiltModel(module.eval(), _input_spec(source, default), f"timm:{name}", sha, "")


def _torchscript(source: dict[str, Any]) -> BuiltModel:
    path = _weights_file(source.get("path", ""), "TorchScript")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad archive
        raise WeightsUnavailable(f"TorchScript file {path} cannot be loaded: {e}") from None
    return BuiltModel(
        module.eval(),
        _input_spec(source, InputSpec()),
        f"torchscript:{path.name}",
        file_sha256(path),
        "",
    )


def _python(source: dict[str, Any]) -> BuiltModel:
    ref = str(source.get("factory", ""))
    mod_name, _, fn_name = ref.partition(":")
    if not mod_name or not fn_name:
        raise InvalidArgument(
            f"python factory {ref!r} must look like package.module:function", field="factory"
        )
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise InvalidArgument(
            f"cannot import model factory {ref!r}: {e}", field="factory"
        ) from None
    try:
        module = _seeded(source, lambda: fn(**dict(source.get("kwargs", {}))))
    except NeuronAtlasError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the user's factory raises
        raise InvalidArgument(
            f"model factory {ref!r} failed: {type(e).__name__}: {e}", field="factory"
        ) from None
    if not isinstance(module, nn.Module):
        raise InvalidArgument(
            f"model factory {ref!r} returned {type(module).__name__}, not an nn.Module",
            field="factory",
        )
    arch = str(source.get("architecture", type(module).__name__))
    return BuiltModel(
        module.eval(),
        _input_spec(source, InputSpec()),
        arch,
        state_sha256(module),
        str(source.get("training_data", "")),
    )


BUILDERS: dict[str, Callable[[dict[str, Any]], BuiltModel]] = {
    "cifar_resnet": _cifar_resnet,
    "torchvision": _torchvision,
    "timm": _timm,
    "torchscript": _torchscript,
    "python": _python,
}


def build_model(source: dict[str, Any]) -> BuiltModel:
    """Build the module a source dict describes (eval mode, CPU)."""
    if not isinstance(source, dict) or "kind" not in source:
        raise InvalidArgument(
            f"model source must be a dict with a 'kind', got {source!r}", field="source"
        )
    builder = BUILDERS.get(str(source["kind"]))
    if builder is None:
        raise InvalidArgument(
            f"unknown model source kind {source['kind']!r}; one of {', '.join(sorted(BUILDERS))}",
            field="source",
        )
    return builder(source)
