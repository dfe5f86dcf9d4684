"""Model sources: how to build the PyTorch module behind a catalogue entry.

A source is a plain dict stored in the catalogue (``ModelEntry.source``); ``kind`` picks the
builder:

- ``{"kind": "cifar_resnet", "depth": 20, "weights": "/path/resnet20.th"}`` (built in)
- ``{"kind": "torchvision", "name": "resnet18", "weights": "/path.pth" | "IMAGENET1K_V1"}``
- ``{"kind": "timm", "name": "resnet18", "weights": "/path.pth"}`` (needs ``timm``)
- ``{"kind": "torchscript", "path": "/path/model.pt"}``
- ``{"kind": "python", "factory": "package.module:fn", "kwargs": {...}}`` (returns an nn.Module;
  also ``"path/to/file.py:fn"``, and modules in the current directory: ``core/imports.py``)

Built-in architectures without weights (``cifar_resnet``, ``torchvision``, ``timm``) would be
randomly initialised: they need ``weights``, or ``"random_init": true`` to ask for that on
purpose (seeded by ``seed``, default 0, so the weights hash is stable).

The input transform (:mod:`.transforms`): each kind has a default, which a source overrides
with ``input_size``, ``resize``, ``crop``, ``mean``, ``std``, ``interpolation``:

- ``cifar_resnet``: resize to 32 x 32, no crop, mean/std (0.485, 0.456, 0.406) /
  (0.229, 0.224, 0.225) (those of the shared checkpoints), bilinear;
- ``torchvision``: a weights enum's own transform (e.g. resize 256 -> crop 224, bilinear);
  otherwise resize 256 -> crop 224, ImageNet mean/std, bilinear;
- ``timm``: the model's pretrained config (input size, crop_pct, interpolation, mean/std);
- ``torchscript``, ``python``: resize 256 -> crop 224, ImageNet mean/std, bilinear — state the
  input of any model that differs (``input_size`` ...).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuronatlas.core.artifacts import ArtifactStore
from neuronatlas.core.config import Home, HomeLike
from neuronatlas.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NeuronAtlasError,
    PermissionDenied,
    WeightsUnavailable,
)
from neuronatlas.core.hashing import file_sha256
from neuronatlas.core.imports import load_object
from neuronatlas.core.validate import shown

from .cifar_resnet import CIFAR_MEAN, CIFAR_STD, load_cifar_resnet
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TRANSFORM_KEYS,
    TransformSpec,
    resolve_transform,
)

IMAGENET_DEFAULT = TransformSpec(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
CIFAR_DEFAULT = TransformSpec((32, 32), None, CIFAR_MEAN, CIFAR_STD, "bilinear")


@dataclass
class BuiltModel:
    module: nn.Module
    input: TransformSpec  # the effective input transform (kind default + the source's keys)
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


def _random_init(source: dict[str, Any], what: str, weights_help: str) -> bool:
    """True when the source asks for random weights on purpose; raises when it gives neither
    weights nor ``random_init`` (a silently random model indexes as noise), or both."""
    random_init = source.get("random_init", False)
    if not isinstance(random_init, bool):
        raise InvalidArgument(
            f"random_init must be true or false, not {random_init!r}", field="random_init"
        )
    if random_init and source.get("weights"):
        raise InvalidArgument(f"{what}: give weights or random_init, not both", field="random_init")
    if not random_init and not source.get("weights"):
        raise InvalidArgument(
            f"{what} needs weights ({weights_help}); to index a randomly initialised model on "
            'purpose, pass --random-init (source key "random_init": true)',
            field="weights",
        )
    return random_init


def _random_training(source: dict[str, Any]) -> str:
    return f"none (random initialisation, seed {int(source.get('seed', 0))})"


def _cifar_resnet(source: dict[str, Any]) -> BuiltModel:
    try:
        depth = int(source.get("depth", 20))
    except (TypeError, ValueError):
        raise InvalidArgument(
            f"cifar_resnet depth {source.get('depth')!r} is not an integer", field="depth"
        ) from None
    random_init = _random_init(source, f"cifar_resnet{depth}", "--weights FILE.th")
    transform = resolve_transform(source, CIFAR_DEFAULT)
    weights = None if random_init else source["weights"]
    module = _seeded(source, lambda: load_cifar_resnet(depth, weights))
    sha = file_sha256(Path(weights).expanduser()) if weights else state_sha256(module)
    return BuiltModel(
        module,
        transform,
        f"cifar_resnet{depth}",
        sha,
        _random_training(source) if random_init else "CIFAR-10 (image classification, 10 classes)",
    )


def _enum_transform(enum: Any) -> TransformSpec | None:
    """The transform a torchvision weights enum documents (``enum.transforms()``), if it is
    the usual resize -> crop -> normalise."""
    try:
        tf = enum.transforms()
        resize = [int(v) for v in tf.resize_size]
        crop = [int(v) for v in tf.crop_size]
        return TransformSpec(
            resize[0] if len(resize) == 1 else (resize[0], resize[1]),
            crop[0],
            tuple(float(v) for v in tf.mean),  # type: ignore[arg-type]  # checked: 3 values
            tuple(float(v) for v in tf.std),  # type: ignore[arg-type]
            str(tf.interpolation.value),
        )
    except (AttributeError, TypeError, ValueError, IndexError, NeuronAtlasError):
        return None


def _torchvision(source: dict[str, Any]) -> BuiltModel:
    import torchvision

    name = str(source.get("name", ""))
    if name not in torchvision.models.list_models():
        raise InvalidArgument(f"unknown torchvision model {name!r}", field="name")
    random_init = _random_init(
        source, f"torchvision {name}", "--weights FILE or a weights name such as IMAGENET1K_V1"
    )
    weights = source.get("weights")
    kwargs = dict(source.get("kwargs", {}))
    default = IMAGENET_DEFAULT
    if weights and not Path(str(weights)).expanduser().exists() and "/" not in str(weights):
        # a weights enum name such as IMAGENET1K_V1: needs the download cache or network
        try:
            enum = torchvision.models.get_model_weights(name)[str(weights)]
        except KeyError:
            raise InvalidArgument(
                f"torchvision {name} has no weights {weights!r}", field="weights"
            ) from None
        transform = resolve_transform(source, _enum_transform(enum) or IMAGENET_DEFAULT)
        try:
            module = torchvision.models.get_model(name, weights=enum, **kwargs)
        except Exception as e:  # noqa: BLE001 - download, cache and load errors of any type
            raise WeightsUnavailable(
                f"torchvision weights {name}/{weights} cannot be loaded: {e}"
            ) from None
        sha = state_sha256(module)
        training = f"ImageNet-1k ({weights})"
    else:
        transform = resolve_transform(source, default)
        module = _seeded(source, lambda: torchvision.models.get_model(name, weights=None, **kwargs))
        if not random_init:
            path = _weights_file(weights, f"torchvision {name}")
            _load_state_file(module, path, f"torchvision {name}")
            sha = file_sha256(path)
            training = ""
        else:
            sha = state_sha256(module)
            training = _random_training(source)
    return BuiltModel(module.eval(), transform, f"torchvision:{name}", sha, training)


def _timm(source: dict[str, Any]) -> BuiltModel:
    try:
        import timm
    except ImportError:
        raise FailedPrecondition(
            "timm sources need the 'timm' package: pip install 'neuronatlas[timm]'"
        ) from None
    name = str(source.get("name", ""))
    random_init = _random_init(source, f"timm {name}", "--weights FILE")
    weights = source.get("weights")
    kwargs = dict(source.get("kwargs", {}))
    try:
        module = _seeded(source, lambda: timm.create_model(name, pretrained=False, **kwargs))
    except RuntimeError as e:
        raise InvalidArgument(f"unknown timm model {name!r}: {e}", field="name") from None
    if not random_init:
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
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    interpolation = str(cfg.get("interpolation") or "bicubic")
    if interpolation == "random":
        interpolation = "bicubic"
    default = TransformSpec(
        max(size, math.floor(size / crop_pct)),
        size,
        tuple(cfg["mean"]),
        tuple(cfg["std"]),
        interpolation,
    )
    return BuiltModel(
        module.eval(),
        resolve_transform(source, default),
        f"timm:{name}",
        sha,
        _random_training(source) if random_init else "",
    )


def _torchscript(source: dict[str, Any]) -> BuiltModel:
    transform = resolve_transform(source, IMAGENET_DEFAULT)
    path = _weights_file(source.get("path", ""), "TorchScript")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad archive
        raise WeightsUnavailable(f"TorchScript file {path} cannot be loaded: {e}") from None
    return BuiltModel(
        module.eval(),
        transform,
        f"torchscript:{path.name}",
        file_sha256(path),
        "",
    )


def _python(source: dict[str, Any]) -> BuiltModel:
    ref = str(source.get("factory", ""))
    transform = resolve_transform(source, IMAGENET_DEFAULT)
    fn = load_object(ref, field="factory")
    if not callable(fn):
        raise InvalidArgument(f"model factory {ref!r} is not callable", field="factory")
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
        transform,
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


#: source keys that name a file, and may name an uploaded artifact ("artifact:<sha256>")
FILE_KEYS = ("weights", "path")
ARTIFACT_PREFIX = "artifact:"


def artifact_refs(source: dict[str, Any]) -> dict[str, str]:
    """The file keys of a source that name an uploaded artifact (key -> "artifact:<sha256>")."""
    return {
        key: val
        for key in FILE_KEYS
        if isinstance(val := source.get(key), str) and val.startswith(ARTIFACT_PREFIX)
    }


#: every key a source may have (builders ignore the ones their kind does not use)
SOURCE_KEYS = (
    "kind",
    "depth",
    "name",
    "weights",
    "path",
    "factory",
    "kwargs",
    "random_init",
    "seed",
    "architecture",
    "training_data",
    *TRANSFORM_KEYS,
)
# Bounds for sources that come over the network (``check_untrusted_source``): building a model
# allocates its weights and runs it once on an input of its size.
MAX_REMOTE_DEPTH = 1202  # the deepest CIFAR ResNet of the paper
MAX_REMOTE_SIDE = 1024  # input_size, resize, crop
MAX_REMOTE_KWARG = 100_000


def check_untrusted_source(
    source: dict[str, Any], *, allow_python: bool = False, field: str = "source"
) -> None:
    """Refuse a source from a network caller that the server should not build: unknown keys
    (a typo such as "weigths" would otherwise be ignored), an unknown kind, a ``python``
    factory (code the server would run) unless ``allow_python``, and sizes that would make
    building it exhaust the server (depth, input sides, ``kwargs`` other than small scalars).
    Raises InvalidArgument (field ``source.<key>``) or PermissionDenied."""
    for key in source:
        if key not in SOURCE_KEYS:
            raise InvalidArgument(
                f"unknown source key {shown(key)}; known: {', '.join(SOURCE_KEYS)}",
                field=f"{field}.{key}" if len(key) <= 64 else field,
            )
    kind = source.get("kind")
    if not isinstance(kind, str) or kind not in BUILDERS:
        raise InvalidArgument(
            f"unknown model source kind {shown(kind)}; one of {', '.join(sorted(BUILDERS))}",
            field=f"{field}.kind",
        )
    if kind == "python" and not allow_python:
        raise PermissionDenied(
            "python sources run a factory function on the server, which this server does not "
            "allow (setting allow_python_sources); upload a TorchScript file instead"
        )
    for key, value in source.items():
        if key in ("name", "weights", "path", "factory", "architecture", "training_data"):
            if not isinstance(value, str) or len(value) > 4096:
                raise InvalidArgument(
                    f"source {key} must be text of at most 4096 characters",
                    field=f"{field}.{key}",
                )
    depth = source.get("depth")
    if depth is not None and (
        not isinstance(depth, int | float)
        or isinstance(depth, bool)
        or not 1 <= depth <= MAX_REMOTE_DEPTH
    ):
        raise InvalidArgument(
            f"depth must be a number in 1..{MAX_REMOTE_DEPTH}, not {shown(depth)}",
            field=f"{field}.depth",
        )
    for key in ("input_size", "resize", "crop"):
        value = source.get(key)
        sides = value if isinstance(value, list) else [value]
        for side in sides:
            if (
                isinstance(side, int | float)
                and not isinstance(side, bool)
                and (side > MAX_REMOTE_SIDE)
            ):
                raise InvalidArgument(
                    f"{key} {shown(side)} is above this server's limit of {MAX_REMOTE_SIDE} pixels",
                    field=f"{field}.{key}",
                )
    kwargs = source.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise InvalidArgument("kwargs must be an object", field=f"{field}.kwargs")
    for name, value in kwargs.items():
        ok = isinstance(value, bool | str) and len(str(value)) <= 256
        ok = ok or (isinstance(value, int | float) and abs(value) <= MAX_REMOTE_KWARG)
        if not ok:
            raise InvalidArgument(
                f"kwargs {shown(name)} must be a boolean, text or a number of at most "
                f"{MAX_REMOTE_KWARG} in size",
                field=f"{field}.kwargs.{name}" if len(name) <= 64 else f"{field}.kwargs",
            )


def artifact_resolver(home: HomeLike) -> Callable[[str], str]:
    """``artifact:<sha256>`` -> the file uploaded into ``home`` (NOT_FOUND when it is not)."""
    return ArtifactStore(Home.of(home).artifacts).resolve


def resolve_files(
    source: dict[str, Any], resolve: Callable[[str], str] | None = None
) -> dict[str, Any]:
    """A copy of ``source`` whose ``artifact:<sha256>`` file values are the stored files'
    paths (``resolve``: e.g. ``ArtifactStore.resolve``). The catalogue keeps the reference
    (portable between homes); only the copy a builder sees carries the path."""
    refs = artifact_refs(source) if isinstance(source, dict) else {}
    if not refs:
        return source
    if resolve is None:
        key, ref = next(iter(refs.items()))
        raise FailedPrecondition(
            f"source key {key!r} names the uploaded artifact {ref[:20]}...: it can only be "
            "built where the artifacts are kept (the server that received the upload)"
        )
    return {**source, **{key: resolve(ref) for key, ref in refs.items()}}


def build_model(source: dict[str, Any], resolve: Callable[[str], str] | None = None) -> BuiltModel:
    """Build the module a source dict describes (eval mode, CPU). ``resolve`` maps the
    ``artifact:<sha256>`` file values of uploaded files to local paths (``resolve_files``)."""
    if not isinstance(source, dict) or "kind" not in source:
        raise InvalidArgument(
            f"model source must be a dict with a 'kind', got {shown(source)}", field="source"
        )
    builder = BUILDERS.get(str(source["kind"]))
    if builder is None:
        raise InvalidArgument(
            f"unknown model source kind {shown(source['kind'])}; one of "
            f"{', '.join(sorted(BUILDERS))}",
            field="source",
        )
    return builder(resolve_files(source, resolve))
