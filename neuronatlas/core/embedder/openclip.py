"""open_clip models as NeuronAtlas embedders.

Weights come from one of three places (the third part of the spec ``open_clip:ARCH:WEIGHTS``):

- a pretrained tag (``openai``, ``laion2b_s34b_b79k``...): downloaded by open_clip, needs network
  the first time; identity = the tag;
- a local checkpoint file: a state dict, a dict with ``"state_dict"``, a TorchScript archive
  (OpenAI's ``.pt`` files) or ``.safetensors``; a ``module.`` prefix is stripped;
  identity = ``sha256:<hex of the file>``;
- ``random`` / ``random:SEED``: deterministic random init (tests, offline smoke runs);
  identity = ``random:SEED``.

``na-tiny`` is a tiny ViT registered from the package file ``na-tiny.json`` (32 px, embed dim 64)
so tests run in milliseconds on a CPU.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import os
import threading
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neuronatlas.core.atomic import atomic_write_bytes
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.embedder.text_cache import TextCache
from neuronatlas.core.errors import InvalidArgument, WeightsUnavailable
from neuronatlas.core.hashing import file_sha256
from neuronatlas.core.records import EmbedderInfo

TINY_ARCH = "na-tiny"
_TINY_CONFIG = Path(__file__).with_name("na-tiny.json")
_PACKAGE_CONFIGS = {TINY_ARCH: _TINY_CONFIG}
_register_lock = threading.Lock()
_CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".th", ".ckpt", ".safetensors"}
TEXT_BATCH = 256


def _open_clip() -> Any:
    import open_clip  # heavy import, only when an open_clip embedder is actually used

    return open_clip


def _howto(arch: str) -> str:
    return (
        f"point at a local checkpoint with --embedder open_clip:{arch}:/path/to/file.pt "
        f"(or NEURONATLAS_EMBEDDER), or use open_clip:{arch}:random for an offline smoke test"
    )


def register_tiny_config() -> str:
    """Make the ``na-tiny`` architecture known to open_clip (idempotent). Returns its name."""
    open_clip = _open_clip()
    with _register_lock:
        if TINY_ARCH not in open_clip.list_models():
            open_clip.add_model_config(_TINY_CONFIG)
    return TINY_ARCH


def _check_arch(arch: str) -> None:
    open_clip = _open_clip()
    if arch in _PACKAGE_CONFIGS:
        register_tiny_config()
    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        examples = close or [
            m for m in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50", TINY_ARCH) if m in known
        ]
        raise InvalidArgument(
            f"unknown open_clip architecture {arch!r}; e.g. {', '.join(examples)} "
            f"({len(known)} known, see open_clip.list_models())",
            field="embedder",
        )


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` = CUDA when available, else CPU. Unavailable or malformed devices are rejected."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InvalidArgument(
            f"device {device!r} is not a torch device (auto, cpu, cuda, cuda:1...)", field="device"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidArgument(
            f"device {device!r} asked for but CUDA is not available here", field="device"
        )
    return dev


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    """open_clip warns on the root logger when it builds random weights; here that is intended."""
    flt = _DropRandomInitWarning()
    logging.getLogger().addFilter(flt)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(flt)


def _create(arch: str, seed: int | None = None) -> tuple[torch.nn.Module, Any]:
    """Architecture with random weights (no download of any tower), seeded when asked."""
    open_clip = _open_clip()
    kwargs = {
        "pretrained": None,
        "pretrained_image": False,
        "pretrained_text": False,
        "device": "cpu",
    }
    try:
        with _quiet_random_init():
            return _create_inner(open_clip, arch, seed, kwargs)
    except ImportError as e:
        raise InvalidArgument(
            f"open_clip architecture {arch!r} needs an extra package: {e}", field="embedder"
        ) from e


def _create_inner(
    open_clip: Any, arch: str, seed: int | None, kwargs: dict[str, Any]
) -> tuple[torch.nn.Module, Any]:
    if seed is None:
        model, _, preprocess = open_clip.create_model_and_transforms(arch, **kwargs)
        return model, preprocess
    with torch.random.fork_rng(devices=[]):  # seed locally, leave the global RNG alone
        torch.manual_seed(seed)
        model, _, preprocess = open_clip.create_model_and_transforms(arch, **kwargs)
    return model, preprocess


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _read_state_dict(path: Path, arch: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsUnavailable(f"checkpoint {path} does not exist; {_howto(arch)}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        elif _is_torchscript(path):  # OpenAI's original checkpoints are TorchScript archives
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                obj = torch.jit.load(  # type: ignore[no-untyped-call]  # untyped in torch
                    str(path), map_location="cpu"
                ).state_dict()
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailable(
            f"cannot read checkpoint {path} ({type(e).__name__}: {str(e)[:200]}); {_howto(arch)}"
        ) from e
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(v, torch.Tensor) for v in obj.values())
    ):
        raise WeightsUnavailable(
            f"checkpoint {path} is not a state dict of tensors; {_howto(arch)}"
        )
    state = {str(k).removeprefix("module."): v for k, v in obj.items()}
    for key in ("input_resolution", "context_length", "vocab_size"):  # TorchScript extras
        state.pop(key, None)
    return state


def _load_into(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str
) -> None:
    target = model.state_dict()
    transient = {name for name, _ in model.named_buffers()} - set(target)  # e.g. attn_mask
    state = {k: v for k, v in state.items() if k not in transient}
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    wrong = sorted(
        k for k in set(target) & set(state) if tuple(target[k].shape) != tuple(state[k].shape)
    )
    if "logit_scale" in wrong and state["logit_scale"].numel() == target["logit_scale"].numel():
        state["logit_scale"] = state["logit_scale"].reshape(target["logit_scale"].shape)
        wrong.remove("logit_scale")
    if missing or unexpected or wrong:
        parts = []
        for what, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        ):
            if keys:
                parts.append(f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})")
        raise WeightsUnavailable(
            f"checkpoint {path} does not fit open_clip architecture {arch!r}: "
            f"{'; '.join(parts)}; {_howto(arch)}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise WeightsUnavailable(
            f"checkpoint {path} does not load into {arch!r}: {str(e)[:200]}; {_howto(arch)}"
        ) from e


def _is_path(weights: str) -> bool:
    return (
        "/" in weights
        or os.sep in weights
        or weights.startswith(("~", "."))
        or Path(weights).suffix.lower() in _CHECKPOINT_SUFFIXES
        or Path(weights).is_file()
    )


def parse_random(weights: str) -> int | None:
    """``random`` -> 0, ``random:7`` -> 7, anything else -> None."""
    if weights == "random":
        return 0
    if weights.startswith("random:"):
        seed_s = weights.split(":", 1)[1]
        try:
            return int(seed_s)
        except ValueError:
            raise InvalidArgument(
                f"random seed {seed_s!r} is not an integer (use random:SEED)", field="embedder"
            ) from None
    return None


def load_open_clip(arch: str, weights: str, device: str = "auto") -> OpenClipEmbedder:
    """Build an :class:`OpenClipEmbedder` for ``open_clip:ARCH:WEIGHTS`` (see module docstring)."""
    if not weights:
        raise InvalidArgument(
            f"open_clip spec needs weights: open_clip:{arch}:TAG, "
            f"open_clip:{arch}:/path/file.pt or open_clip:{arch}:random[:SEED]",
            field="embedder",
        )
    dev = resolve_device(device)
    _check_arch(arch)
    open_clip = _open_clip()
    seed = parse_random(weights)
    if seed is not None:
        model, preprocess = _create(arch, seed)
        identity = f"random:{seed}"
    elif _is_path(weights):
        path = Path(weights).expanduser()
        state = _read_state_dict(path, arch)
        model, preprocess = _create(arch)
        _load_into(model, state, path, arch)
        identity = f"sha256:{file_sha256(path)}"
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if weights not in tags:
            known = (
                f"known tags for {arch}: {', '.join(tags)}"
                if tags
                else f"{arch} has no pretrained tags"
            )
            raise InvalidArgument(
                f"unknown pretrained tag {weights!r} ({known}); or {_howto(arch)}", field="embedder"
            )
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=weights, device="cpu"
            )
        except Exception as e:
            raise WeightsUnavailable(
                f"could not get pretrained weights {arch}:{weights} ({str(e)[:200]}); "
                f"{_howto(arch)}"
            ) from e
        identity = weights
    try:
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as e:
        raise WeightsUnavailable(f"could not load the tokenizer of {arch} ({str(e)[:200]})") from e
    model = model.to(dev).eval()
    proj = getattr(model, "text_projection", None)
    dim = (
        int(proj.shape[1])
        if isinstance(proj, torch.Tensor) and proj.ndim == 2
        else _probe_dim(model, tokenizer, dev)
    )
    info = EmbedderInfo(name=f"open_clip:{arch}", weights=identity, dim=dim)
    return OpenClipEmbedder(model, preprocess, tokenizer, info, dev)


def _encoder(model: torch.nn.Module, method: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model.encode_image`` / ``model.encode_text`` of an open_clip model (no stubs)."""
    fn: Callable[[torch.Tensor], torch.Tensor] = getattr(model, method)
    return fn


def _probe_dim(model: torch.nn.Module, tokenizer: Any, dev: torch.device) -> int:
    with torch.inference_mode():
        return int(_encoder(model, "encode_text")(tokenizer([""]).to(dev)).shape[-1])


def save_random_checkpoint(arch: str, path: str | Path, seed: int = 0) -> Path:
    """Write the ``random:SEED`` weights of ``arch`` as a state dict that loads through
    ``open_clip:ARCH:/path``. Written atomically (temp file + rename)."""
    _check_arch(arch)
    model, _ = _create(arch, seed)
    path = Path(path)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    atomic_write_bytes(path, buf.getvalue(), durable=False)
    return path


class OpenClipEmbedder(Embedder):
    """An open_clip model: batched, inference-mode encoding, L2-normalised float32 output."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Any,
        tokenizer: Any,
        info: EmbedderInfo,
        device: torch.device,
        text_cache_size: int = 4096,
    ):
        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.info = info
        self.device = device
        self.text_cache = TextCache(text_cache_size)

    def __repr__(self) -> str:
        return (
            f"OpenClipEmbedder({self.info.name}, weights={self.info.weights}, "
            f"dim={self.info.dim}, device={self.device})"
        )

    # -- images ---------------------------------------------------------------------------
    def encode_images(self, images: Sequence[Any] | Any, batch_size: int = 64) -> np.ndarray:
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, not {batch_size}", field="batch_size")
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise InvalidArgument(
                    f"image tensor has shape {tuple(images.shape)}, expected (n, 3, H, W) "
                    "from embedder.preprocess",
                    field="images",
                )
            batches = (images[i : i + batch_size] for i in range(0, images.shape[0], batch_size))
            n = images.shape[0]
        else:
            items = list(images)
            n = len(items)
            batches = (
                torch.stack([self.preprocess(im) for im in items[i : i + batch_size]])
                for i in range(0, n, batch_size)
            )
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        out = []
        with torch.inference_mode():
            for batch in batches:
                try:
                    feats = _encoder(self.model, "encode_image")(
                        batch.to(self.device, torch.float32)
                    )
                except RuntimeError as e:
                    raise InvalidArgument(
                        f"{self.info.name} cannot encode images of shape "
                        f"{tuple(batch.shape[1:])}: {str(e)[:160]}",
                        field="images",
                    ) from e
                out.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    # -- texts ----------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise InvalidArgument(
                    f"texts must be strings, got {type(t).__name__}", field="texts"
                )
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        rows = self.text_cache.lookup(texts)
        todo = list(dict.fromkeys(t for t, r in zip(texts, rows, strict=False) if r is None))
        fresh: dict[str, np.ndarray] = {}
        if todo:
            with torch.inference_mode():
                for i in range(0, len(todo), TEXT_BATCH):
                    chunk = todo[i : i + TEXT_BATCH]
                    tokens = self.tokenizer(chunk).to(self.device)
                    feats = _encoder(self.model, "encode_text")(tokens)
                    emb = F.normalize(feats.float(), dim=-1).cpu().numpy()
                    fresh.update(zip(chunk, emb, strict=False))
            self.text_cache.store(todo, np.stack([fresh[t] for t in todo]))
        return np.stack(
            [r if r is not None else fresh[t] for t, r in zip(texts, rows, strict=False)]
        ).astype(np.float32, copy=False)

    def cache_info(self) -> dict[str, int]:
        """Text-cache counters: hits, misses, size, maxsize."""
        return self.text_cache.info()
