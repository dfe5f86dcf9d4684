"""Embedder loading (specs, weights sources, failures), encoding contract, text cache, plug-ins."""

from __future__ import annotations

import hashlib
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from neuronatlas.core.embedder import load_embedder, parse_spec
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.embedder.openclip import OpenClipEmbedder, save_random_checkpoint
from neuronatlas.core.embedder.text_cache import TextCache
from neuronatlas.core.errors import InvalidArgument, WeightsUnavailable

TINY = "open_clip:na-tiny:random:0"


@pytest.fixture(scope="module")
def tiny() -> OpenClipEmbedder:
    return load_embedder(TINY, device="cpu")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    return save_random_checkpoint("na-tiny", tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=3)


def cifar_images(cifar_dir: Path, n: int = 6) -> list[Image.Image]:
    paths = (
        sorted((cifar_dir / "cat").glob("*.jpg"))[: n // 2]
        + sorted((cifar_dir / "ship").glob("*.jpg"))[: n - n // 2]
    )
    return [Image.open(p).convert("RGB") for p in paths]


def assert_unit_rows(x: np.ndarray, n: int, dim: int) -> None:
    assert x.shape == (n, dim) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# -- encoding contract --------------------------------------------------------------------
def test_tiny_info_and_image_encoding(tiny: OpenClipEmbedder, cifar_dir: Path):
    assert (
        tiny.info.name == "open_clip:na-tiny" and tiny.info.weights == "random:0" and tiny.dim == 64
    )
    images = cifar_images(cifar_dir)
    from_pil = tiny.encode_images(images, batch_size=4)
    assert_unit_rows(from_pil, 6, 64)
    tensor = torch.stack([tiny.preprocess(im) for im in images])
    assert tensor.shape == (6, 3, 32, 32)
    np.testing.assert_allclose(tiny.encode_images(tensor, batch_size=256), from_pil, atol=1e-5)
    assert not np.allclose(from_pil[0], from_pil[-1])  # different images, different vectors
    assert tiny.encode_images([]).shape == (0, 64)


def test_image_batching_does_not_change_results(tiny: OpenClipEmbedder):
    x = torch.randn(10, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(
        tiny.encode_images(x, batch_size=3), tiny.encode_images(x, batch_size=64), atol=1e-5
    )


def test_bad_image_input_is_invalid_argument(tiny: OpenClipEmbedder):
    with pytest.raises(InvalidArgument, match=r"\(n, 3, H, W\)"):
        tiny.encode_images(torch.zeros(2, 32, 32))
    with pytest.raises(InvalidArgument):
        tiny.encode_images(torch.zeros(2, 3, 17, 5))
    with pytest.raises(InvalidArgument):
        tiny.encode_images(torch.zeros(1, 3, 32, 32), batch_size=0)


def test_text_encoding_and_cache(tiny: OpenClipEmbedder):
    tiny.text_cache.clear()
    first = tiny.encode_text(["a cat", "a dog", "a cat"])
    assert_unit_rows(first, 3, 64)
    np.testing.assert_array_equal(first[0], first[2])
    assert not np.allclose(first[0], first[1])
    info = tiny.cache_info()
    assert info["misses"] == 3 and info["hits"] == 0 and info["size"] == 2
    again = tiny.encode_text(["a dog", "a cat"])
    np.testing.assert_array_equal(again, first[[1, 0]])
    assert tiny.cache_info()["hits"] == 2
    np.testing.assert_array_equal(tiny.encode_text("a cat"), first[:1])  # a bare string is one text
    assert tiny.encode_text([]).shape == (0, 64)
    with pytest.raises(InvalidArgument):
        tiny.encode_text(["ok", 3])


def test_text_cache_hit_skips_model(tiny: OpenClipEmbedder, monkeypatch: pytest.MonkeyPatch):
    tiny.encode_text(["a red car"])

    def boom(*a, **k):
        raise AssertionError("model called for a cached text")

    monkeypatch.setattr(tiny.model, "encode_text", boom)
    assert tiny.encode_text(["a red car"]).shape == (1, 64)


def test_text_encoding_thread_safe(tiny: OpenClipEmbedder):
    texts = [f"concept {i % 7}" for i in range(28)]
    expected = tiny.encode_text(texts)
    results, errors = {}, []

    def worker(i):
        try:
            results[i] = tiny.encode_text(texts[i:] + texts[:i])
        except Exception as e:  # noqa: BLE001 - any failure in a thread is reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, got in results.items():
        np.testing.assert_allclose(got, np.roll(expected, -i, axis=0), atol=1e-6)


def test_text_cache_lru_eviction():
    cache = TextCache(maxsize=2)
    cache.store(["a", "b"], np.eye(2, dtype=np.float32))
    assert cache.lookup(["a"])[0] is not None  # touch a: b is now the oldest
    cache.store(["c"], np.ones((1, 2), np.float32))
    hits = cache.lookup(["a", "b", "c"])
    assert hits[0] is not None and hits[1] is None and hits[2] is not None
    assert cache.info() == {"hits": 3, "misses": 1, "size": 2, "maxsize": 2}
    with pytest.raises(ValueError):
        hits[0][0] = 5.0  # stored rows are read-only


# -- weights sources ----------------------------------------------------------------------
def test_random_seed_is_deterministic_and_leaves_global_rng(tiny: OpenClipEmbedder):
    torch.manual_seed(1234)
    before = torch.rand(1)
    torch.manual_seed(1234)
    again = load_embedder(TINY, device="cpu")
    assert torch.rand(1) == before  # loading did not consume the caller's RNG
    other = load_embedder("open_clip:na-tiny:random:1", device="cpu")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(tiny.encode_images(x), again.encode_images(x))
    np.testing.assert_array_equal(tiny.encode_text(["hello"]), again.encode_text(["hello"]))
    assert not np.allclose(tiny.encode_images(x), other.encode_images(x))
    assert other.info.weights == "random:1"
    assert load_embedder("open_clip:na-tiny:random", device="cpu").info.weights == "random:0"


def test_checkpoint_round_trip(tiny_ckpt: Path, tmp_path: Path):
    from_file = load_embedder(f"open_clip:na-tiny:{tiny_ckpt}", device="cpu")
    seeded = load_embedder("open_clip:na-tiny:random:3", device="cpu")
    assert from_file.info.weights == "sha256:" + hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()
    assert from_file.info.name == "open_clip:na-tiny" and from_file.dim == 64
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    np.testing.assert_array_equal(from_file.encode_images(x), seeded.encode_images(x))
    np.testing.assert_array_equal(from_file.encode_text(["a ship"]), seeded.encode_text(["a ship"]))
    # a training-style checkpoint: {"state_dict": {"module.<key>": ...}}
    state = torch.load(tiny_ckpt, weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    np.testing.assert_array_equal(
        load_embedder(f"open_clip:na-tiny:{wrapped}", "cpu").encode_images(x),
        seeded.encode_images(x),
    )


def test_torchscript_checkpoint_loads(tmp_path: Path):
    """OpenAI's original .pt files are TorchScript archives; their weights load too."""
    import warnings

    from neuronatlas.core.embedder.openclip import _create

    model, _ = _create("na-tiny", seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model.eval()).save(str(tmp_path / "jit.pt"))
    from_jit = load_embedder(f"open_clip:na-tiny:{tmp_path / 'jit.pt'}", device="cpu")
    seeded = load_embedder("open_clip:na-tiny:random:5", device="cpu")
    np.testing.assert_array_equal(from_jit.encode_text(["a frog"]), seeded.encode_text(["a frog"]))


@pytest.mark.parametrize(
    "case", ["missing", "corrupt", "not_a_state_dict", "other_arch", "wrong_shape"]
)
def test_bad_checkpoints_are_weights_unavailable(case: str, tiny_ckpt: Path, tmp_path: Path):
    path = tmp_path / "bad.pt"
    if case == "corrupt":
        path.write_bytes(b"\x00this is not a torch file" * 10)
    elif case == "not_a_state_dict":
        torch.save([1, 2, 3], path)
    elif case == "other_arch":
        torch.save(
            {"conv1.weight": torch.zeros(16, 3, 3, 3), "linear.weight": torch.zeros(10, 64)}, path
        )
    elif case == "wrong_shape":
        state = torch.load(tiny_ckpt, weights_only=True)
        state["text_projection"] = torch.zeros(64, 32)
        torch.save(state, path)
    with pytest.raises(WeightsUnavailable) as err:
        load_embedder(f"open_clip:na-tiny:{path}", device="cpu")
    msg = str(err.value)
    assert "--embedder open_clip:na-tiny:/path/to/file.pt" in msg and "random" in msg
    assert str(path) in msg
    if case == "wrong_shape":
        assert "text_projection" in msg


def test_pretrained_tag_offline_is_weights_unavailable(monkeypatch: pytest.MonkeyPatch):
    import open_clip.factory
    import open_clip.pretrained

    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", offline)
    with pytest.raises(WeightsUnavailable, match=r"open_clip:RN50:/path/to/file\.pt"):
        load_embedder("open_clip:RN50:openai", device="cpu")


def test_spec_errors_are_invalid_argument():
    with pytest.raises(InvalidArgument, match="ViT-B-32"):
        load_embedder("open_clip:ViT-B-3:random")  # unknown architecture, close names listed
    with pytest.raises(InvalidArgument, match="openai"):
        load_embedder("open_clip:RN50:no-such-tag")  # unknown tag, known tags listed
    with pytest.raises(InvalidArgument):
        load_embedder("open_clip:na-tiny:random:x")
    with pytest.raises(InvalidArgument):
        load_embedder("open_clip:na-tiny")  # no weights
    for spec in ("", "clip:ViT-B-32", "open_clip:", "py:"):
        with pytest.raises(InvalidArgument):
            parse_spec(spec)
    assert parse_spec("open_clip:ViT-B-32:random:7") == ("open_clip", "ViT-B-32", "random:7")
    assert parse_spec("py:pkg.mod:make") == ("py", "pkg.mod:make", "")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA path")
def test_unavailable_device_is_invalid_argument():
    with pytest.raises(InvalidArgument, match="CUDA"):
        load_embedder(TINY, device="cuda")
    with pytest.raises(InvalidArgument):
        load_embedder(TINY, device="quantum")


# -- plug-ins -----------------------------------------------------------------------------
PLUGIN = """
import numpy as np
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.records import EmbedderInfo


def _vec(text, dim=4):
    v = np.zeros(dim, np.float32)
    for i, ch in enumerate(text):
        v[i % dim] += ord(ch)
    return v


class Chars(Embedder):
    def __init__(self, device):
        self.device = device
        self.info = EmbedderInfo(name="chars", weights="v1", dim=4)
        self.preprocess = lambda im: im

    def encode_images(self, images, batch_size=64):
        return np.stack([np.ones(4, np.float32) / 2 for _ in images])

    def encode_text(self, texts):
        v = np.stack([_vec(t) for t in texts])
        return v / np.linalg.norm(v, axis=1, keepdims=True)


class Duck:
    info = EmbedderInfo(name="duck", weights="v1", dim=4)
    preprocess = staticmethod(lambda im: im)

    def encode_images(self, images, batch_size=64):
        return [[3.0, 0.0, 4.0, 0.0] for _ in images]

    def encode_text(self, texts):
        return [_vec(t).tolist() for t in texts]


def make(device="auto"):
    return Chars(device)

def make_duck(device="auto"):
    return Duck()

def make_number(device="auto"):
    return 42

def make_broken(device="auto"):
    raise OSError("model file gone")

def make_bad_info(device="auto"):
    d = Duck()
    d.info = {"name": "x"}
    return d

not_callable = 5
"""


@pytest.fixture()
def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = "na_test_plugin_mod"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_plugin_subclass(plugin_module: str):
    emb = load_embedder(f"py:{plugin_module}:make", device="cpu")
    assert isinstance(emb, Embedder) and emb.device == "cpu" and emb.info.name == "chars"
    assert_unit_rows(emb.encode_text(["ab", "cd"]), 2, 4)


def test_plugin_duck_typed_is_wrapped_and_normalised(plugin_module: str):
    emb = load_embedder(f"py:{plugin_module}:make_duck")
    assert isinstance(emb, Embedder) and emb.dim == 4
    np.testing.assert_allclose(emb.encode_images([object()]), [[0.6, 0.0, 0.8, 0.0]], atol=1e-6)
    assert_unit_rows(emb.encode_text(["hello", "x"]), 2, 4)


@pytest.mark.parametrize(
    "target, pattern",
    [
        ("make_number", "not an Embedder"),
        ("make_broken", "model file gone"),
        ("make_bad_info", "EmbedderInfo"),
        ("not_callable", "not callable"),
        ("missing_fn", "no attribute"),
    ],
)
def test_bad_plugins_fail_clearly(plugin_module: str, target: str, pattern: str):
    with pytest.raises(InvalidArgument, match=pattern):
        load_embedder(f"py:{plugin_module}:{target}")


def test_plugin_missing_module():
    with pytest.raises(InvalidArgument, match="cannot import"):
        load_embedder("py:no_such_pkg_for_neuronatlas.mod:make")
    with pytest.raises(InvalidArgument, match=r"package\.module:factory"):
        load_embedder("py:just_a_module")
