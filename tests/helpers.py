"""Test data and small helpers shared by the test modules (``from helpers import ...``; the
tests folder is on ``sys.path`` through its rootdir conftest). Fixtures live in conftest.py.

- vectors: ``unit``, ``unit_rows``
- records and catalogue entries: ``make_records``, ``entry``, ``add_model`` (with the label
  rules ``cycled`` and ``per_row`` and the depth rule ``spread``)
- a text-only embedder: ``FakeEmbedder``
- the report commands in-process: ``run_report_cli``
- the gRPC service tests' constants and ``call_fails``
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import FailedPrecondition
from neuronatlas.core.jobs import Operation
from neuronatlas.core.records import (
    EmbedderInfo,
    Label,
    LayerInfo,
    ModelEntry,
    ModelStatus,
    NeuronRecord,
    TopSample,
)
from neuronatlas.service.errors import MAX_MESSAGE_BYTES

DIM = 16
INFO = EmbedderInfo("test:emb", "random:0", DIM)
LABELS = ("dog", "dogsled", "cat", "car", "tree")
ALPHA = {"conv1": 6, "layer1.0.conv2": 6}  # layer -> units of the store tests' models
BETA = {"conv1": 5}
TINY_EMBEDDER = "open_clip:na-tiny:random:0"  # the tiny random open_clip model, no download


# -- vectors -----------------------------------------------------------------------------------
def unit(x) -> np.ndarray:
    """``x`` (float64) L2-normalised along its last axis."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """``n`` random float32 unit vectors, one a row."""
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# -- records and catalogue entries ---------------------------------------------------------------
#: (row in the model, layer index, unit) -> the neuron's labels, best first
LabelRule = Callable[[int, int, int], Sequence[str]]


def cycled(words: Sequence[str] = LABELS, per_neuron: int = 2) -> LabelRule:
    """Unit ``u`` of layer ``li`` gets ``words[(u + li) % len(words)]`` and the words after it."""
    return lambda row, li, u: [words[(u + li + i) % len(words)] for i in range(per_neuron)]


_CYCLED = cycled()  # the default: two labels a neuron from LABELS


def per_row(labels: Sequence[str]) -> LabelRule:
    """Neuron ``row`` (in layer order) gets ``labels[row]``; an empty string means no label."""
    return lambda row, li, u: [labels[row]] if labels[row] else []


def spread(n_layers: int) -> list[float]:
    """Depths 0 .. 1 from the first layer to the last (the default is 1/n .. 1)."""
    return [i / max(n_layers - 1, 1) for i in range(n_layers)]


def _depths(layers: Mapping[str, int], depths: Sequence[float] | None) -> list[float]:
    if depths is None:
        return [(i + 1) / len(layers) for i in range(len(layers))]
    assert len(depths) == len(layers), "one depth a layer"
    return [float(d) for d in depths]


def make_records(
    model_id: str,
    layers: Mapping[str, int],
    seed: int = 0,
    generation: int = 0,
    *,
    dim: int = DIM,
    vectors: np.ndarray | None = None,
    labels: LabelRule | None = _CYCLED,
    vocab: str = "vocab",
    depths: Sequence[float] | None = None,
    sample: str = "cls/{unit}.jpg",
    top_k: int = 1,
) -> list[NeuronRecord]:
    """Neurons of ``layers`` (name -> units) with varied clarity; deterministic from ``seed``.

    Vectors: ``vectors`` (one row a neuron, in layer order) or random unit vectors drawn layer
    by layer. Labels: ``labels(row, layer_index, unit)`` in vocabulary ``vocab``, the first
    scored ``0.05 + 0.01 * unit`` and in the label set, the others ``0.01``; ``None``: no
    labels. Depths: ``depths`` a layer, or ``(i + 1) / len(layers)``. Top samples: ``top_k`` of
    them, named by the ``sample`` pattern (fields ``row``, ``layer_index``, ``unit``, ``rank``).
    """
    rng = np.random.default_rng(seed)
    out: list[NeuronRecord] = []
    row = 0
    for li, ((layer, n), depth) in enumerate(
        zip(layers.items(), _depths(layers, depths), strict=True)
    ):
        vecs = vectors[row : row + n] if vectors is not None else unit_rows(rng, n, dim)
        for u in range(n):
            names = list(labels(row, li, u)) if labels is not None else []
            out.append(
                NeuronRecord(
                    model_id=model_id,
                    layer=layer,
                    layer_index=li,
                    depth=depth,
                    unit=u,
                    vector=np.asarray(vecs[u], np.float32),
                    top_samples=[
                        TopSample(
                            sample.format(row=row, layer_index=li, unit=u, rank=j), row, 1.0 + u - j
                        )
                        for j in range(top_k)
                    ],
                    labels={
                        vocab: [Label(names[0], 0.05 + 0.01 * u)]
                        + [Label(name, 0.01) for name in names[1:]]
                    }
                    if names
                    else {},
                    label_set=names[:1],
                    clarity=u / max(n - 1, 1),
                    polysemanticity=0.1,
                    redundancy=0.2,
                    stats={"mean": 0.5},
                    generation=generation,
                )
            )
            row += 1
    if vectors is not None:
        assert row == len(vectors), "one vector a neuron"
    return out


def entry(
    model_id: str,
    status: ModelStatus = ModelStatus.INDEXED,
    generation: int = 0,
    layers: Mapping[str, int] | None = None,
    *,
    depths: Sequence[float] | None = None,
    architecture: str = "resnet",
    source: dict[str, Any] | None = None,
    **fields: Any,
) -> ModelEntry:
    """A catalogue entry for ``layers`` (name -> units); ``fields`` are more ModelEntry fields."""
    layers = layers or {}
    return ModelEntry(
        model_id=model_id,
        architecture=architecture,
        status=status,
        generation=generation,
        layers=[
            LayerInfo(name, i, depth, n)
            for i, ((name, n), depth) in enumerate(
                zip(layers.items(), _depths(layers, depths), strict=True)
            )
        ],
        source={"kind": "cifar_resnet", "depth": 20} if source is None else source,
        **fields,
    )


def add_model(
    store,
    model_id: str,
    layers: Mapping[str, int],
    status: ModelStatus = ModelStatus.INDEXED,
    seed: int = 0,
    *,
    entry_fields: Mapping[str, Any] | None = None,
    **record_options: Any,
) -> ModelEntry:
    """Write a model the way the indexer does: its entry as INDEXING, its neurons
    (``make_records(..., **record_options)``), then its entry with ``status``. The store's
    embedder must be bound. Returns the final entry."""
    depths, generation = record_options.get("depths"), record_options.get("generation", 0)
    fields = dict(entry_fields or {})
    store.put_model(
        entry(model_id, ModelStatus.INDEXING, generation, layers, depths=depths, **fields)
    )
    store.upsert_neurons(make_records(model_id, layers, seed, **record_options))
    final = entry(model_id, status, generation, layers, depths=depths, **fields)
    store.put_model(final)
    return final


# -- a text-only embedder ------------------------------------------------------------------------
def trigram_vector(text: str, dim: int) -> np.ndarray:
    """A bag of hashed character trigrams (deterministic within a process)."""
    v = np.zeros(dim, np.float32)
    for j in range(max(1, len(text) - 2)):
        v[hash(text[j : j + 3]) % dim] += 1.0
    return v


class FakeEmbedder(Embedder):
    """A deterministic text embedder for tests without CLIP: ``text_vector(text)`` (hashed
    character trigrams by default), L2-normalised. Counts ``encode_text`` calls in ``calls``;
    has no image tower."""

    def __init__(
        self,
        info: EmbedderInfo = INFO,
        text_vector: Callable[[str], Any] | None = None,
    ):
        self.info = info
        self.text_vector = text_vector or (lambda text: trigram_vector(text, self.info.dim))
        self.preprocess = lambda img: img
        self.calls = 0

    def encode_text(self, texts) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.info.dim), np.float64)
        for i, text in enumerate(texts):
            out[i] = self.text_vector(text)
        return unit(out).astype(np.float32)

    def encode_images(self, images, batch_size=64):
        raise FailedPrecondition("no image tower")


# -- the report commands (compare, audit) in-process ------------------------------------------
def run_report_cli(home: Path, store_path: Path, *args: str):
    """``neuronatlas --home HOME --store STORE_PATH ARGS...`` through click's test runner, with
    the compare / audit report commands added; the click ``Result``."""
    from click.testing import CliRunner

    from neuronatlas.cli import cli
    from neuronatlas.service.compare_cli import COMMANDS

    for cmd in COMMANDS:
        cli.add_command(cmd)
    return CliRunner().invoke(cli, ["--home", str(home), "--store", str(store_path), *args])


# -- the gRPC service tests ----------------------------------------------------------------------
SERVICE_LAYERS = ["layer1.0.conv1", "layer2.0.conv2", "layer3.0.conv2"]
READ_TOKEN, ADMIN_TOKEN = "read-token-0123", "admin-token-4567"
WRITE_TOKEN, WORKER_TOKEN = "write-token-89ab", "worker-token-cdef"
AUTH = (("authorization", f"Bearer {READ_TOKEN}"),)


def rpc_failure(err: grpc.RpcError) -> tuple[grpc.StatusCode, list[str], str]:
    """(code, BadRequest field names, ErrorInfo reason) of a failed call."""
    status = rpc_status.from_call(err)
    fields, reason = [], ""
    for d in status.details if status else []:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            fields += [v.field for v in br.field_violations]
        elif d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            reason = info.reason
    return err.code(), fields, reason


def check_refusal(err: grpc.RpcError, leaks: Sequence[str]) -> tuple[grpc.StatusCode, list[str]]:
    """Assert a refusal passed the service's checks: never INTERNAL / UNKNOWN, an ErrorInfo
    always, the detail its code promises, a short message without any of ``leaks`` (besides
    object reprs and tracebacks). Its code and BadRequest fields."""
    code = err.code()
    message = err.details() or ""
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
        f"{code.name}: {message}"
    )
    status = rpc_status.from_call(err)
    assert status is not None and len(status.details) >= 1, f"{code.name} without details"
    types = {d.TypeName() for d in status.details}
    assert "google.rpc.ErrorInfo" in types, types
    promised = {
        grpc.StatusCode.INVALID_ARGUMENT: "google.rpc.BadRequest",
        grpc.StatusCode.NOT_FOUND: "google.rpc.ResourceInfo",
        grpc.StatusCode.FAILED_PRECONDITION: "google.rpc.PreconditionFailure",
    }
    if code in promised:
        assert promised[code] in types, types
    assert len(message.encode()) <= MAX_MESSAGE_BYTES, len(message)
    for leak in ("object at 0x", "Traceback", *leaks):
        assert leak not in message, message
    _, fields, _ = rpc_failure(err)
    return code, fields


def call_fails(fn, request, metadata=AUTH) -> tuple[grpc.StatusCode, list[str], str]:
    """Call a stub method that must fail; its ``rpc_failure``."""
    with pytest.raises(grpc.RpcError) as e:
        fn(request, metadata=metadata, timeout=20)
    return rpc_failure(e.value)


def cifar_args(depth: int, weights: Path | str) -> list[str]:
    """The indexer CLI's source options for a CIFAR ResNet: --kind, --depth, --weights."""
    return ["--kind", "cifar_resnet", "--depth", str(depth), "--weights", str(weights)]


def copy_store(src: Path, dst: Path) -> None:
    """Copy a store folder. Edge preallocates sparse files (hundreds of MB apparent, a few MB
    used): keep holes."""
    try:
        subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dst)], check=True)
    except (OSError, subprocess.CalledProcessError):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)


# -- raw wire bytes -------------------------------------------------------------------------------
def unknown_field(size: int) -> bytes:
    """Wire bytes of an unknown length-delimited field (number 1023) of ``size`` zero bytes:
    well-formed, so only a size limit refuses it."""
    out = bytearray(b"\xfa\x3f")
    n = size
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out) + b"\0" * size


# -- the zoo's integration tests: slow sources, vocabularies, operations -------------------------
def slow_source(weights: Path) -> dict:
    """resnet20 through the test factory that sleeps $SLOW_RESNET_DELAY s per batch."""
    return {
        "kind": "python",
        "factory": "test_indexer_integration:slow_resnet",
        "kwargs": {"weights": str(weights)},
        "input_size": 32,
        "resize": None,
    }


def write_vocab(path: Path, concepts_dir: Path, n: int = 80) -> Path:
    """The first ``n`` labels of the clean Broden vocabulary, written to ``path``."""
    lines = (concepts_dir / "broden_labels_clean.txt").read_text().splitlines()[:n]
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_operation(client, op: Operation, limit: float) -> Operation:
    """Poll ``op`` through ``client`` until it is done; fail after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not op.done:
        assert time.monotonic() < deadline, f"operation still {op.state}: {op}"
        op = client.wait_operation(op.name, timeout=10)
    return op


# -- comparing stores after a resumed / taken-over indexing run -----------------------------------
#: catalogue fields that differ between two runs of the same indexing (times, where it resumed)
RUN_DEPENDENT = ("created_at", "updated_at", "indexed_at", "index_wall_s")
RUN_DEPENDENT_INDEX = ("timings", "resumed_from_sample")


def model_snapshot(store, model_id: str) -> tuple[dict[str, tuple[np.ndarray, dict]], dict]:
    """A model's live generation as ``{point id: (vector, payload)}`` and its catalogue entry
    payload without ``RUN_DEPENDENT`` fields: what an interrupted-and-resumed run must
    reproduce exactly."""
    points = {
        r.point_id: (np.asarray(r.vector, np.float32), r.to_payload())
        for r in store.scroll_neurons(model_id)
    }
    entry = store.get_model(model_id).to_payload()
    for key in RUN_DEPENDENT:
        entry.pop(key, None)
    index = dict(entry.get("extra", {}).get("index", {}))
    for key in RUN_DEPENDENT_INDEX:
        index.pop(key, None)
    entry["extra"] = {**entry.get("extra", {}), "index": index}
    return points, entry


def assert_same_model(a: tuple[dict, dict], b: tuple[dict, dict]) -> None:
    """Two ``model_snapshot``s are equal: ids, vectors (bitwise), payloads, catalogue."""
    points_a, entry_a = a
    points_b, entry_b = b
    assert points_a.keys() == points_b.keys()
    for pid, (vec, payload) in points_a.items():
        np.testing.assert_array_equal(vec, points_b[pid][0])
        other = points_b[pid][1]
        diff = {
            k: (payload.get(k), other.get(k))
            for k in payload.keys() | other.keys()
            if payload.get(k) != other.get(k)
        }
        assert not diff, f"point {pid}: {diff}"
    assert entry_a == entry_b
