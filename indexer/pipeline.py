"""One indexing run of a registered model: forward passes, then records into the store.

Stages: validate everything that can be validated (layers, k, vocabularies, embedder against
the store) -> probe embeddings (cached) -> [components: directions fitted on a probe subset,
``components.py``] -> forward pass over the probe set streaming per-neuron (and per-component)
top-k, statistics, the activation sketch and the model's top-1 predictions (checkpointed,
resumable; the predictions give the probe-set accuracy, ``accuracy.py``) -> [class importance,
``importance.py``] -> neuron and component vectors, labels and scores (one code path) ->
records written to the *other* generation slot -> catalogue entry flipped in one
``put_model`` -> old slot deleted.

Catalogue status: a model never indexed goes registered -> indexing -> indexed (or failed,
with the reason). A model that is already indexed stays ``indexed`` (and queryable, on its
old generation) while it is re-indexed; progress and failures of the re-index are recorded in
``extra["reindex"]`` and ``status_reason``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from neuronatlas.core import labels as labels_mod
from neuronatlas.core import scores
from neuronatlas.core.config import Home, HomeLike
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import FailedPrecondition, InvalidArgument, NotFound
from neuronatlas.core.jobs import JobCancelled, JobInterrupted, LeaseLost
from neuronatlas.core.labels import LabelScorer
from neuronatlas.core.records import (
    NEURON_KIND,
    ClassImportance,
    EmbedderInfo,
    LayerInfo,
    ModelEntry,
    ModelStatus,
    NeuronRecord,
    TopSample,
)
from neuronatlas.core.sketches import SKETCH_SAMPLES, delete_sketches, save_sketch
from neuronatlas.core.store import KnowledgeStore

from .accuracy import check_class_map, parse_class_map, probe_accuracy
from .components import (
    ComponentGroup,
    ComponentOptions,
    check_options,
    fit_components,
    load_groups,
    probe_subset,
    projections,
    raw_layers,
    save_groups,
    subset_indices,
)
from .importance import (
    Importance,
    class_importance,
    class_mapping,
    load_importance,
    save_importance,
)
from .importance import summary as importance_summary
from .layers import ActivationTap, LayerSpec, check_aggregation, resolve_layers
from .probes import ProbeSet, batches, embedder_key, probe_embeddings
from .runstate import ForwardState, RunDir, RunRecord, fingerprint
from .sources import BuiltModel, artifact_resolver, build_model
from .topk import class_ids, representative_samples, reservoir_size

log = logging.getLogger(__name__)

SAMPLE_MODES = ("topk", "percentile")


@dataclass
class IndexProgress:
    """Where a run is, for ``IndexOptions.on_progress``. Stages in order: ``probe
    embeddings`` and ``forward`` (``done``/``total`` probe images), ``scores`` and ``writing``
    (neurons; writing includes the labels), ``finishing`` (index build and the flip). With
    components or class importance, ``components`` (fitting the directions) comes before
    ``forward`` and ``importance`` after it."""

    stage: str
    done: int = 0
    total: int = 0
    layers: list[str] = field(default_factory=list)


@dataclass
class IndexOptions:
    layers: list[str] | None = None  # names or glob patterns; None = auto-discover
    k: int = 20
    batch_size: int = 256
    conv_aggregation: str = "mean"  # mean | max
    token_aggregation: str = "cls"  # cls | mean
    weighted: bool = False  # activation-weighted neuron vectors
    top_labels: int = 5
    beta: float = 0.95
    # which probe images describe a neuron: "topk" (its k highest activations) or "percentile"
    # (MAMMI-style: up to k images sampled from those at or above its `percentile`-th
    # percentile, class-balanced when the probe set has class folders; topk.py)
    samples: str = "topk"
    percentile: float = 93.0
    checkpoint_every: int = 10  # batches between checkpoints
    workers: int = 0  # DataLoader workers for the model's forward pass
    device: str = "cpu"  # where the model runs: cpu, cuda, cuda:1, or auto
    progress: bool = True
    # model output index -> probe class folder, for the probe-set accuracy (accuracy.py); None:
    # output i is the i-th class folder when the counts agree
    class_map: dict[int, str] | None = None
    # concept components (nmf, cluster, cav: components.py) and class importance
    # (importance.py); no kinds and importance unset: neither (neurons only, as before)
    components: ComponentOptions = field(default_factory=ComponentOptions)
    # called at every stage change and after every batch / layer (``IndexProgress``); it may
    # raise to stop the run (the indexing worker raises JobCancelled / JobInterrupted / LeaseLost
    # there): the run stops between batches, checkpointed, and stays resumable. Not part of the
    # run's fingerprint nor of the catalogue entry.
    on_progress: Callable[[IndexProgress], None] | None = None


@dataclass
class _Stream:
    """What the write phase turns into records: the neurons of a layer, or the components of
    one kind in a layer. ``name`` keys its top-k and statistics in the forward state."""

    name: str
    spec: LayerSpec
    units: int
    kind: str = NEURON_KIND
    extraction: str = ""
    info: list[dict[str, Any]] = field(default_factory=list)

    @property
    def layer(self) -> str:
        return self.spec.name


def embedder_id(info: EmbedderInfo) -> str:
    return f"{info.name}@{info.weights}"


def _vocab_scorers(
    embedder: Embedder, vocabularies: dict[str, Path] | None, cache_dir: Path
) -> list[tuple[str, LabelScorer]]:
    """(vocabulary name, LabelScorer) pairs; missing or empty files raise before any write."""
    out = []
    for name, path in (vocabularies or {}).items():
        if not Path(path).is_file():
            raise NotFound(f"vocabulary file {path} does not exist")
        words = labels_mod.load_vocabulary(path)
        if not words:
            raise InvalidArgument(f"vocabulary {path} holds no labels", field="vocab")
        out.append((name, LabelScorer(embedder, words, name=name, cache_dir=cache_dir)))
    return out


class IndexRun:
    """Indexes one registered model; ``run()`` returns the final catalogue entry."""

    def __init__(
        self,
        store: KnowledgeStore,
        embedder: Embedder,
        model_id: str,
        probe: ProbeSet,
        home: HomeLike,
        vocabularies: dict[str, Path] | None = None,
        options: IndexOptions | None = None,
    ):
        self.store, self.embedder, self.model_id, self.probe = store, embedder, model_id, probe
        self.home = Home.of(home)
        self.vocabularies = {k: Path(v) for k, v in (vocabularies or {}).items()}
        self.opt = options or IndexOptions()
        self.timings: dict[str, float] = {}
        self.resumed_from = 0  # first sample of this attempt's forward pass (> 0: resumed)
        self.accuracy: dict[str, Any] = {}  # probe-set accuracy record (accuracy.py)
        self.accuracy_reason = ""  # why it was not measured
        self.layer_names: list[str] = []
        self._specs: list[LayerSpec] = []  # the indexed layers
        self.component_specs: list[LayerSpec] = []  # layers that get components
        self.groups: list[ComponentGroup] = []  # fitted component directions (components.py)
        self.component_meta: dict[str, Any] = {}
        self.importance: Importance | None = None  # class importance (importance.py)
        self.importance_reason = ""  # why it was not computed

    def _report(self, stage: str, done: int = 0, total: int = 0) -> None:
        if self.opt.on_progress is not None:
            self.opt.on_progress(IndexProgress(stage, int(done), int(total), self.layer_names))

    # -- validation ------------------------------------------------------------------------
    def _prepare(
        self,
    ) -> tuple[ModelEntry, BuiltModel, list[LayerSpec], list[tuple[str, LabelScorer]]]:
        opt = self.opt
        entry = self.store.get_model(self.model_id)
        if opt.k < 1 or opt.k > len(self.probe):
            raise InvalidArgument(
                f"k={opt.k} but probe set {self.probe.name!r} has {len(self.probe)} images; "
                f"use 1 <= k <= {len(self.probe)}",
                field="k",
            )
        if opt.batch_size < 1:
            raise InvalidArgument("batch size must be >= 1", field="batch_size")
        if opt.samples not in SAMPLE_MODES:
            raise InvalidArgument(
                f"samples must be one of {', '.join(SAMPLE_MODES)}, not {opt.samples!r}",
                field="samples",
            )
        self._reservoir()  # checks the percentile
        built = build_model(entry.source, artifact_resolver(self.home))
        if entry.weights_sha256 and built.weights_sha256 != entry.weights_sha256:
            raise FailedPrecondition(
                f"the weights of {self.model_id!r} changed since registration "
                f"({entry.weights_sha256[:12]} -> {built.weights_sha256[:12]}); register it again"
            )
        specs = resolve_layers(built.module, opt.layers, built.input.shape, built.input.describe())
        if opt.class_map is not None:
            opt.class_map = parse_class_map(opt.class_map)  # also a list (output order)
            check_class_map(opt.class_map, self.probe.files)
        check_aggregation(opt.conv_aggregation, opt.token_aggregation)
        self.component_specs = check_options(opt.components, specs)
        scorers = _vocab_scorers(self.embedder, self.vocabularies, self.home.labels_cache)
        self.store.bind_embedder(self.embedder.info)
        return entry, built, specs, scorers

    def _fingerprint(self, built: BuiltModel, specs: list[LayerSpec]) -> str:
        o = self.opt
        return fingerprint(
            {
                "weights": built.weights_sha256,
                "input": built.input.to_dict(),
                "probe": self.probe.sha256,
                "embedder": embedder_key(self.embedder.info),
                "layers": [s.name for s in specs],
                "k": o.k,
                "batch_size": o.batch_size,
                "aggregation": [o.conv_aggregation, o.token_aggregation],
                "weighted": o.weighted,
                "top_labels": o.top_labels,
                "beta": o.beta,
                # percentile selection only, so top-k runs checkpointed earlier still resume
                **({"samples": [o.samples, o.percentile]} if o.samples == "percentile" else {}),
                "vocab": {n: str(p.resolve()) for n, p in sorted(self.vocabularies.items())},
                "class_map": sorted((o.class_map or {}).items()),
                # only with components / importance, so earlier checkpoints still resume
                **(
                    {"components": asdict(o.components)}
                    if o.components.kinds or o.components.wants_importance
                    else {}
                ),
            }
        )

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> ModelEntry:
        t0 = time.perf_counter()
        entry, built, specs, scorers = self._prepare()
        live = entry.generation if entry.status == ModelStatus.INDEXED else None
        rundir = RunDir(self.home, self.model_id)
        fp = self._fingerprint(built, specs)
        rec = rundir.load_record()
        if rec is None or rec.fingerprint != fp or rec.target_generation == live:
            rundir.clear()
            target = (live ^ 1) if live is not None else entry.generation
            rec = RunRecord(fp, target)
            if live is None:
                self.store.delete_neurons(self.model_id)  # leftovers of failed attempts
            else:
                self.store.delete_neurons(self.model_id, target)
            rundir.save_record(rec)
        self._mark_started(entry, live, rec.target_generation)
        self.layer_names = [s.name for s in specs]
        self._specs = specs
        try:
            te = time.perf_counter()
            n_probe = len(self.probe)
            self._report("probe embeddings", 0, n_probe)
            emb = probe_embeddings(
                self.home,
                self.probe,
                self.embedder,
                self.opt.batch_size,
                self.opt.progress,
                on_batch=lambda done: self._report("probe embeddings", done, n_probe),
            )
            self.timings["embed_s"] = time.perf_counter() - te
            self._fit_components(built, rundir)
            state = self._forward(built, specs, rundir, rec)
            self.accuracy, self.accuracy_reason = probe_accuracy(
                state.predictions, state.outputs, self.probe.files, self.opt.class_map
            )
            self._class_importance(built, specs, state, rundir)
            t1 = time.perf_counter()
            layer_infos = self._write(specs, state, emb, scorers, rundir, rec)
            self.timings["write_s"] = time.perf_counter() - t1
            n_sketch = min(SKETCH_SAMPLES, len(self.probe))
            if n_sketch >= 2:
                save_sketch(
                    self.home,
                    self.model_id,
                    rec.target_generation,
                    np.arange(n_sketch),
                    {s.name: state.sketch[s.name] for s in specs},
                    probe_set=self.probe.id,
                )
            final = self._finish(
                entry, built, live, rec, layer_infos, rec.elapsed_s + time.perf_counter() - t0
            )
        except BaseException as e:
            if isinstance(e, LeaseLost):  # another runner has the job (and the run state) now
                raise
            rec.elapsed_s += time.perf_counter() - t0
            rundir.save_record(rec)
            self._mark_failed(live, e)
            raise
        rundir.clear()
        return final

    def _mark_started(self, entry: ModelEntry, live: int | None, target: int) -> None:
        # re-read: metadata changed (UpdateModel) while the model was being built is kept
        entry = self.store.get_model(self.model_id)
        entry.embedder = entry.embedder if live is not None else embedder_id(self.embedder.info)
        entry.probe_set = entry.probe_set if live is not None else self.probe.id
        if live is None:
            entry.status, entry.status_reason = ModelStatus.INDEXING, ""
            entry.generation = target
        entry.extra = (
            {
                **entry.extra,
                "reindex": {"status": "indexing", "generation": target, "started_at": time.time()},
            }
            if live is not None
            else entry.extra
        )
        entry.updated_at = time.time()
        self.store.put_model(entry)

    def _mark_failed(self, live: int | None, err: BaseException) -> None:
        """Record why the run stopped. A cancelled run (``JobCancelled``) is no failure: a
        model never indexed goes back to ``registered`` (reason "cancelled"), a re-indexed one
        keeps serving its previous generation (``extra.reindex.status`` "cancelled"). Its run
        state is kept either way, so indexing it again resumes."""
        cancelled = isinstance(err, JobCancelled)
        if cancelled:
            reason = "cancelled"
        elif isinstance(err, (KeyboardInterrupt, JobInterrupted)):
            reason = "interrupted"
        else:
            reason = f"{type(err).__name__}: {err}"
        # Best effort: the store itself may be what failed, and the original error (re-raised
        # by run()) matters more than this bookkeeping.
        try:
            entry = self.store.get_model(self.model_id)
        except Exception as e:  # noqa: BLE001 - any store failure; logged, not swallowed
            log.warning(
                "could not record the failure of %s (%s): reading its entry failed: %s",
                self.model_id,
                reason,
                e,
            )
            return
        if live is None:
            entry.status = ModelStatus.REGISTERED if cancelled else ModelStatus.FAILED
            entry.status_reason = reason
        else:
            what = "cancelled" if cancelled else "failed"
            entry.status_reason = (
                "re-index cancelled" if cancelled else f"re-index failed: {reason}"
            )
            entry.extra = {**entry.extra, "reindex": {"status": what, "reason": reason}}
        entry.updated_at = time.time()
        try:
            self.store.put_model(entry)
        except Exception as e:  # noqa: BLE001 - any store failure; logged, not swallowed
            log.warning(
                "could not record the failure of %s (%s): writing its entry failed: %s",
                self.model_id,
                reason,
                e,
            )

    # -- forward phase ---------------------------------------------------------------------
    def _forward(
        self, built: BuiltModel, specs: list[LayerSpec], rundir: RunDir, rec: RunRecord
    ) -> ForwardState:
        t0 = time.perf_counter()
        n = len(self.probe)
        n_sketch = min(SKETCH_SAMPLES, n)
        names = [s.name for s in specs]
        streams = {**{s.name: s.units for s in specs}, **{g.key: g.units for g in self.groups}}
        state = rundir.load_state(list(streams))
        if state is None:
            state = ForwardState.fresh(streams, self._reservoir(), n_sketch, samples=n)
        self.resumed_from = state.samples_done
        if state.samples_done >= n:
            return state
        dev = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu")
            if self.opt.device == "auto"
            else self.opt.device
        )
        built.module.to(dev)
        tap = ActivationTap(
            built.module,
            specs,
            self.opt.conv_aggregation,
            self.opt.token_aggregation,
            keep_raw=raw_layers(self.groups, self.opt.conv_aggregation),
        )
        by_name = {s.name: s for s in specs}
        candidates = sorted(self.opt.class_map) if self.opt.class_map else None
        bar = tqdm(
            total=n,
            initial=state.samples_done,
            desc=f"forward {self.model_id}",
            unit="img",
            disable=not self.opt.progress,
        )
        self._report("forward", state.samples_done, n)
        try:
            with torch.inference_mode():
                for i, (start, x) in enumerate(
                    batches(
                        self.probe,
                        built.input.transform(),
                        self.opt.batch_size,
                        state.samples_done,
                        self.opt.workers,
                    )
                ):
                    pooled = tap(x.to(dev, non_blocking=True))
                    state.record_predictions(start, tap.output, candidates)  # accuracy
                    b = x.shape[0]
                    for name in names:
                        acts = pooled[name]
                        state.topk[name].update(acts, start)
                        state.stats[name].update(acts)
                        if start < n_sketch:
                            m = min(b, n_sketch - start)
                            state.sketch[name][start : start + m] = acts[:m].numpy()
                    for g, acts in projections(
                        self.groups, pooled, tap.raw, by_name, self.opt.conv_aggregation
                    ):  # components: the same streaming top-k and statistics as neurons
                        state.topk[g.key].update(acts, start)
                        state.stats[g.key].update(acts)
                    state.samples_done = start + b
                    bar.update(b)
                    if (i + 1) % self.opt.checkpoint_every == 0 and state.samples_done < n:
                        rundir.save_state(state)
                    try:
                        self._report("forward", state.samples_done, n)
                    except (JobCancelled, JobInterrupted):
                        rundir.save_state(state)  # stopped between batches: nothing is lost
                        raise
        finally:
            tap.close()
            bar.close()
        rundir.save_state(state)
        rec.forward_done = True
        rundir.save_record(rec)
        self.timings["forward_s"] = time.perf_counter() - t0
        return state

    # -- components and class importance ----------------------------------------------------
    def _device(self) -> torch.device:
        if self.opt.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.opt.device)

    def _fit_components(self, built: BuiltModel, rundir: RunDir) -> None:
        """Fit the component directions on the probe subset (components.py), or reload those
        of the interrupted attempt this run resumes."""
        o = self.opt.components
        if not o.kinds:
            return
        path = rundir.path / "components"
        loaded = load_groups(path)
        if loaded is not None:
            self.groups, self.component_meta = loaded
            return
        t0 = time.perf_counter()
        self._report("components", 0, len(self.component_specs))
        dev = self._device()
        built.module.to(dev)
        self.groups, self.component_meta = fit_components(
            built.module,
            self.component_specs,
            self.probe,
            built.input.transform(),
            o,
            self.opt.conv_aggregation,
            self.opt.token_aggregation,
            self.opt.batch_size,
            dev,
        )
        save_groups(path, self.groups, self.component_meta)
        self.timings["components_s"] = time.perf_counter() - t0

    def _class_importance(
        self, built: BuiltModel, specs: list[LayerSpec], state: ForwardState, rundir: RunDir
    ) -> None:
        """Gradient x activation per class of every neuron and component (importance.py) on
        the probe subset, or the reason it cannot be computed."""
        o = self.opt.components
        if not o.wants_importance:
            return
        path = rundir.path / "importance.npz"
        self.importance = load_importance(path)
        if self.importance is not None:
            return
        mapping = class_mapping(self.probe.files, state.outputs, self.opt.class_map)
        if isinstance(mapping, str):
            self.importance_reason = mapping
            return
        t0 = time.perf_counter()
        self._report("importance")
        idx = subset_indices(self.probe.files, o.images, o.seed)
        dev = self._device()
        built.module.to(dev)
        try:
            self.importance = class_importance(
                built.module,
                specs,
                self.groups,
                probe_subset(self.probe, idx),
                mapping.y[idx],
                mapping,
                built.input.transform(),
                self.opt.batch_size,
                dev,
            )
        except (RuntimeError, ValueError) as e:  # e.g. a model autograd cannot differentiate
            self.importance_reason = f"{type(e).__name__}: {e}"[:300]
            log.warning("class importance of %s not computed: %s", self.model_id, e)
            return
        save_importance(path, self.importance)
        self.timings["importance_s"] = time.perf_counter() - t0

    def _streams(self, specs: list[LayerSpec]) -> list[_Stream]:
        """Every layer's neurons, then every component group, in layer order."""
        by_name = {s.name: s for s in specs}
        out = [_Stream(s.name, s, s.units) for s in specs]
        out += [
            _Stream(g.key, by_name[g.layer], g.units, g.kind, g.extraction, g.info)
            for g in sorted(self.groups, key=lambda g: (by_name[g.layer].index, g.kind))
        ]
        return out

    @staticmethod
    def _redundancy(streams: list[_Stream], vecs: dict[str, np.ndarray]) -> np.ndarray:
        """Max cosine to another record of the same kind of the model, in stream order (the
        neurons' redundancy is what it was before components existed)."""
        out = np.zeros(sum(s.units for s in streams), np.float32)
        offsets = np.cumsum([0] + [s.units for s in streams])
        for kind in dict.fromkeys(s.kind for s in streams):
            pos = [i for i, s in enumerate(streams) if s.kind == kind]
            allv = np.concatenate([vecs[streams[i].name] for i in pos])
            red = scores.redundancy(allv) if len(allv) > 1 else np.zeros(len(allv), np.float32)
            at = 0
            for i in pos:
                n = streams[i].units
                out[offsets[i] : offsets[i] + n] = red[at : at + n]
                at += n
        return out

    def _top_classes(self, name: str, unit: int) -> list[ClassImportance]:
        return self.importance.top_classes(name, unit) if self.importance is not None else []

    def _component_extra(self) -> dict[str, Any]:
        """``extra.components`` and ``extra.importance`` of the catalogue entry."""
        out: dict[str, Any] = {}
        if self.groups:
            layers: dict[str, dict[str, int]] = {}
            for g in self.groups:
                layers.setdefault(g.layer, {})[g.kind] = g.units
            out["components"] = {
                **{k: v for k, v in self.component_meta.items() if k != "options"},
                "count": sum(g.units for g in self.groups),
                "per_layer_counts": layers,
            }
        if self.opt.components.wants_importance:
            if self.importance is None:
                out["importance"] = {"not_computed": self.importance_reason}
            else:
                streams = [(s.name, s.kind, s.layer, s.units) for s in self._streams(self._specs)]
                out["importance"] = importance_summary(self.importance, streams)
        return out

    # -- sample selection ------------------------------------------------------------------
    def _reservoir(self) -> int:
        """Candidates streamed per neuron: k for top-k; for percentile selection, every
        sample at or above the percentile (bounded, see topk.reservoir_size)."""
        if self.opt.samples == "percentile":
            return reservoir_size(len(self.probe), self.opt.percentile)
        return self.opt.k

    def _samples_info(self) -> dict[str, Any]:
        """How the describing images were chosen (catalogue entry, ``extra.index.samples``)."""
        if self.opt.samples != "percentile":
            return {"mode": "topk", "k": self.opt.k}
        classes = class_ids(self.probe.files)
        return {
            "mode": "percentile",
            "percentile": self.opt.percentile,
            "max": self.opt.k,
            "candidates": self._reservoir(),  # per neuron: at or above the percentile
            "classes": int(classes.max()) + 1 if classes is not None else 0,  # 0: not balanced
        }

    def _select(self, vals: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The images that describe each neuron, from its streamed candidates."""
        if self.opt.samples != "percentile":
            return vals, idx
        return representative_samples(vals, idx, self.opt.k, class_ids(self.probe.files))

    # -- write phase -----------------------------------------------------------------------
    def _vectors(self, vals: np.ndarray, topk_emb: np.ndarray) -> np.ndarray:
        if not self.opt.weighted:
            return scores.neuron_vectors(topk_emb)
        w = np.clip(vals, 0.0, None)
        w[w.sum(1) == 0] = 1.0  # a neuron never active above 0 falls back to the plain mean
        return scores.neuron_vectors(topk_emb, w)

    def _write(
        self,
        specs: list[LayerSpec],
        state: ForwardState,
        emb: np.ndarray,
        scorers: list[tuple[str, LabelScorer]],
        rundir: RunDir,
        rec: RunRecord,
    ) -> list[LayerInfo]:
        streams = self._streams(specs)
        per_layer = {}
        units = sum(s.units for s in streams)
        scored = 0
        self._report("scores", 0, units)
        for s in streams:
            vals, idx = self._select(*state.topk[s.name].result())
            topk_emb = emb[idx]  # (units, k, d)
            poly, poly_sl = scores.polysemanticity_both(topk_emb)
            per_layer[s.name] = (
                vals,
                idx,
                self._vectors(vals, topk_emb),
                np.asarray(scores.clarity(topk_emb)),
                np.asarray(poly),
                np.asarray(poly_sl),
            )
            scored += s.units
            self._report("scores", scored, units)
        redundancy = self._redundancy(streams, {k: v[2] for k, v in per_layer.items()})
        offsets = np.cumsum([0] + [s.units for s in streams])
        infos = []
        bar = tqdm(
            total=int(offsets[-1]),
            desc=f"write {self.model_id}",
            unit="neuron",
            disable=not self.opt.progress,
        )
        for li, s in enumerate(streams):
            self._report("writing", int(offsets[li]), units)
            if s.kind == NEURON_KIND:
                infos.append(LayerInfo(s.layer, s.spec.index, s.spec.depth, s.units, s.spec.kind))
            if s.name in rec.written_layers:
                bar.update(s.units)
                continue
            vals, idx, vecs, clar, poly, poly_sl = per_layer[s.name]
            stats = state.stats[s.name].result()
            tops = {name: sc.top(vecs, n=self.opt.top_labels) for name, sc in scorers}
            sets = (
                labels_mod.combined_label_sets([sc for _, sc in scorers], vecs, beta=self.opt.beta)
                if scorers
                else [[] for _ in range(s.units)]
            )
            records = []
            for u in range(s.units):
                records.append(
                    NeuronRecord(
                        model_id=self.model_id,
                        layer=s.layer,
                        layer_index=s.spec.index,
                        depth=s.spec.depth,
                        unit=u,
                        vector=vecs[u].astype(np.float32),
                        top_samples=[
                            TopSample(self.probe.files[int(j)], int(j), float(v))
                            for v, j in zip(vals[u], idx[u], strict=False)
                        ],
                        labels={name: t[u] for name, t in tops.items()},
                        label_set=sets[u],
                        clarity=float(clar[u]),
                        polysemanticity=float(poly[u]),
                        polysemanticity_sl=float(poly_sl[u]),
                        redundancy=float(redundancy[offsets[li] + u]),
                        stats={k: float(v[u]) for k, v in stats.items()},
                        generation=rec.target_generation,
                        kind=s.kind,
                        extraction=s.extraction,
                        component=dict(s.info[u]) if s.info else {},
                        top_classes=self._top_classes(s.name, u),
                    )
                )
            self.store.upsert_neurons(records)
            rec.written_layers.append(s.name)
            rundir.save_record(rec)
            bar.update(s.units)
        bar.close()
        self._report("writing", units, units)
        return infos

    # -- the flip --------------------------------------------------------------------------
    def _finish(
        self,
        entry: ModelEntry,
        built: BuiltModel,
        live: int | None,
        rec: RunRecord,
        infos: list[LayerInfo],
        wall_s: float,
    ) -> ModelEntry:
        self._report("finishing")  # the last point a run can be stopped: before the flip
        expected = sum(i.neurons for i in infos) + sum(g.units for g in self.groups)
        got = self.store.count(self.model_id, rec.target_generation)
        if got != expected:
            raise FailedPrecondition(
                f"generation {rec.target_generation} of {self.model_id!r} holds {got} "
                f"neurons, expected {expected}"
            )
        # Every neuron of the new generation is written: build the vector (HNSW) and payload
        # indexes now, before the flip, so the first queries on the new generation use them.
        t_opt = time.perf_counter()
        self.store.optimize()
        self.timings["optimize_s"] = time.perf_counter() - t_opt
        entry = self.store.get_model(self.model_id)
        now = time.time()
        entry.status, entry.status_reason = ModelStatus.INDEXED, ""
        entry.generation = rec.target_generation
        entry.layers = infos
        entry.embedder = embedder_id(self.embedder.info)
        entry.probe_set = self.probe.id
        entry.indexed_at = entry.updated_at = now
        entry.index_wall_s = wall_s
        extra = {k: v for k, v in entry.extra.items() if k != "reindex"}
        opts = asdict(replace(self.opt, on_progress=None))
        opts.pop("progress")
        opts.pop("on_progress")
        opts["class_map"] = len(self.opt.class_map) if self.opt.class_map else None
        extra["index"] = {
            "options": opts,
            "probe_images": len(self.probe),
            "probe_skipped": len(self.probe.skipped),
            "resumed_from_sample": self.resumed_from,
            "vocabularies": sorted(self.vocabularies),
            "samples": self._samples_info(),
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }
        if self.accuracy_reason:
            extra["index"]["accuracy_not_measured"] = self.accuracy_reason
        extra.pop("components", None)  # a re-index without components drops the old ones
        extra.pop("importance", None)
        extra.update(self._component_extra())
        entry.extra = extra
        entry.transform = built.input.to_dict()
        entry.probe_accuracy = self.accuracy
        self.store.put_model(entry)  # the flip: one write makes the new generation live
        if live is not None and live != rec.target_generation:
            self.store.delete_neurons(self.model_id, live)
            delete_sketches(self.home, self.model_id, keep_generation=rec.target_generation)
        return entry


def index_model(
    store: KnowledgeStore,
    embedder: Embedder,
    model_id: str,
    probe: ProbeSet,
    home: HomeLike,
    vocabularies: dict[str, Path] | None = None,
    options: IndexOptions | None = None,
) -> ModelEntry:
    """Index (or re-index, or resume indexing) a registered model. See module docstring."""
    return IndexRun(store, embedder, model_id, probe, home, vocabularies, options).run()
