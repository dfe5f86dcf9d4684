"""Checkpoints that make an indexing run resumable after Ctrl-C or kill -9.

``Home.run_dir(model_id)`` (``<home>/runs/<model_id>/``) holds ``run.json`` (the run's
fingerprint, target generation, written layers, time spent so far) and ``state.npz`` (the
streaming top-k and statistics of every layer, the activation sketch collected so far, and how
many samples are done, and the model's top-1 prediction per sample for the probe-set accuracy).
Both are replaced atomically, so a killed run leaves either the
previous checkpoint or the new one. A later run with the same fingerprint continues from the
checkpoint; batches come in a fixed order, so the result equals that of an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from neuronatlas.core.atomic import atomic_save_npz, atomic_write_json
from neuronatlas.core.config import Home

from .topk import RunningStats, StreamingTopK


def fingerprint(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class ForwardState:
    """Everything the forward phase accumulates, per layer."""

    topk: dict[str, StreamingTopK]
    stats: dict[str, RunningStats]
    sketch: dict[str, np.ndarray]  # layer -> (sketch_samples, units), filled in sample order
    samples_done: int = 0
    # the model output's argmax per sample (-1: not recorded) and the output width (0: not
    # seen yet, -1: the output is not a (batch, classes) tensor)
    predictions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    outputs: int = 0

    @classmethod
    def fresh(
        cls, units: dict[str, int], k: int, sketch_samples: int, samples: int = 0
    ) -> ForwardState:
        return cls(
            {n: StreamingTopK(u, k) for n, u in units.items()},
            {n: RunningStats(u) for n, u in units.items()},
            {n: np.zeros((sketch_samples, u), np.float32) for n, u in units.items()},
            predictions=np.full(samples, -1, np.int32),
        )

    def record_predictions(
        self, start: int, output: Any, candidates: list[int] | None = None
    ) -> None:
        """Keep the top-1 prediction of samples ``start..`` from the model's output: the best
        of all outputs, or of the ``candidates`` (output indices a class map names)."""
        if self.outputs < 0 or output is None or getattr(output, "ndim", 0) != 2:
            self.outputs = -1
            return
        self.outputs = int(output.shape[1])
        if candidates and max(candidates) < self.outputs:
            cand = torch.as_tensor(candidates, device=output.device)
            pred = cand[output[:, cand].argmax(1)].cpu().numpy()
        else:
            pred = output.argmax(1).cpu().numpy()
        self.predictions[start : start + len(pred)] = pred


@dataclass
class RunRecord:
    fingerprint: str
    target_generation: int
    written_layers: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0  # wall time of earlier (interrupted) attempts
    forward_done: bool = False


class RunDir:
    def __init__(self, home: Home, model_id: str):
        self.path = home.run_dir(model_id)
        self.record_path = self.path / "run.json"
        self.state_path = self.path / "state.npz"

    def load_record(self) -> RunRecord | None:
        if not self.record_path.is_file():
            return None
        try:
            return RunRecord(**json.loads(self.record_path.read_text()))
        except (ValueError, TypeError):
            return None

    def save_record(self, rec: RunRecord) -> None:
        # durable=False: the rename is enough for kill -9
        atomic_write_json(self.record_path, rec.__dict__, durable=False)

    def save_state(self, state: ForwardState) -> None:
        arrays: dict[str, np.ndarray] = {"samples_done": np.array(state.samples_done)}
        names = list(state.topk)
        arrays["layers"] = np.array(names)
        arrays["predictions"] = state.predictions
        arrays["outputs"] = np.array(state.outputs)
        for i, n in enumerate(names):
            for key, val in state.topk[n].state().items():
                arrays[f"{i}.topk.{key}"] = val
            for key, val in state.stats[n].state().items():
                arrays[f"{i}.stats.{key}"] = val
            arrays[f"{i}.sketch"] = state.sketch[n]
        atomic_save_npz(self.state_path, arrays, durable=False)

    def load_state(self, layer_names: list[str]) -> ForwardState | None:
        """The checkpointed state, or None if absent or for other layers."""
        if not self.state_path.is_file():
            return None
        try:
            with np.load(self.state_path, allow_pickle=False) as z:
                names = [str(n) for n in z["layers"]]
                if names != layer_names:
                    return None
                topk, stats, sketch = {}, {}, {}
                for i, n in enumerate(names):
                    topk[n] = StreamingTopK.from_state(
                        {k: z[f"{i}.topk.{k}"] for k in ("values", "indices", "seen")}
                    )
                    stats[n] = RunningStats.from_state(
                        {
                            k: z[f"{i}.stats.{k}"]
                            for k in ("n", "mean", "m2", "min", "max", "positive")
                        }
                    )
                    sketch[n] = np.array(z[f"{i}.sketch"])
                return ForwardState(
                    topk,
                    stats,
                    sketch,
                    int(z["samples_done"]),
                    np.array(z["predictions"], np.int32),
                    int(z["outputs"]),
                )
        except (OSError, KeyError, ValueError):
            return None  # a damaged checkpoint only costs a restart

    def clear(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
