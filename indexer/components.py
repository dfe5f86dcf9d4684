"""Concept components beyond single neurons: directions in a layer's activation space that are
indexed like neurons (top-k probe images, CLIP vector, labels, quality scores, importance).

Kinds (``records.COMPONENT_KINDS``):

- ``nmf``: the layer's non-negative activations over a probe subset (spatial positions as
  rows, channels as columns; negative values are clipped to 0, which loses nothing on a
  post-ReLU layer and is reported as ``clipped`` otherwise) factorised as X ~= W H with r
  concepts; each row of H (channels-dim) is a component's direction. Ordered by their share
  of the reconstruction (sum of W[:, k] x |H_k|), the largest first;
- ``cluster``: spherical k-means of the same activation rows (unit-normalised, all-zero rows
  dropped), k-means++ initialisation; each centroid is a direction. Ordered by cluster size;
- ``cav``: concept activation vectors from user-supplied examples: a folder per concept and a
  negatives folder; per concept and layer an L2-regularised logistic probe (pooled
  activations, standardised; lambda = ``cav_l2``) separates the concept's images from the
  negatives; its weight vector (back in raw activation units) is the direction, stored with
  its accuracy on a held-out 20 % (seeded, stratified).

**Rank rule.** r (nmf) and k (cluster) are ``rank`` when given, else
``min(16, max(2, channels // 8))``: 2 for a 16-channel layer, 4 for 32, 8 for 64, 16 from
128 channels on. One direction per 8 channels keeps the components coarser than the neurons
(the point of a concept basis) and the number bounded on wide layers.

**A component's activation** on an image is the projection of the layer's activation onto the
unit direction, aggregated over positions as the neurons are (``--aggregation``): with
``mean`` (the default) it is exactly the pooled activation . direction; with ``max`` the
spatial maximum of the per-position projection. Its top-k images, statistics, CLIP vector,
labels and quality scores then come from the same streaming top-k (``topk.py``) and scoring
code (``core/scores.py``, ``core/labels.py``) as the neurons' (``pipeline.py``).

**Bounded extraction.** Directions are fitted on a seeded class-balanced subset of at most
``images`` (default 2,000) probe images and at most ``positions`` (64) spatial positions
sampled per image and layer (all of them when the map is smaller), so memory is bounded by
``ROW_BUDGET`` floats for all component layers together (256 MB of float32; the positions per
image shrink when the layers are wide) plus the NMF factors (rows x r). NMF is Lee & Seung's
multiplicative updates in torch (Frobenius loss, seeded non-negative random init, at most
``max_iter`` 200 iterations or a relative change below 1e-4): a few lines, deterministic on
the CPU, batched with torch's BLAS, and no extra dependency (scikit-learn's NMF would add a
~40 MB wheel for one function). Spherical k-means and the logistic probes (torch L-BFGS) are
written the same way.

**Ids.** A component's point id is ``uuid5(model/layer/kind:index@extraction#generation)``;
``extraction`` is a 12-hex fingerprint of the kind's settings (rank rule or rank, subset
size, positions, seed, iterations, aggregation, probe set, CAV examples and lambda), so the
same settings give the same ids and other settings other ids.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from neuronatlas.core.atomic import atomic_save_npz, atomic_write_json
from neuronatlas.core.errors import InvalidArgument, NotFound
from neuronatlas.core.records import COMPONENT_KINDS

from .layers import OUTPUT, ActivationTap, LayerSpec
from .probes import IMAGE_SUFFIXES, ProbeSet, batches
from .topk import class_ids

ROW_BUDGET = 1 << 26  # floats of sampled activation rows kept for fitting (256 MB float32)
MIN_CAV_IMAGES = 5  # per concept and for the negatives
NEGATIVES = "negatives"


@dataclass
class ComponentOptions:
    """What components to extract (``kinds`` empty: none) and how."""

    kinds: list[str] = field(default_factory=list)  # nmf, cluster, cav
    layers: list[str] | None = None  # names / glob patterns among the indexed layers; None: all
    rank: int | None = None  # r of nmf and k of cluster; None: min(16, max(2, channels // 8))
    images: int = 2000  # probe images the directions are fitted on (class-balanced, seeded)
    positions: int = 64  # spatial positions sampled per image and layer
    seed: int = 0
    max_iter: int = 200
    cav_dir: str | None = None  # folder of <concept>/ image folders plus a negatives folder
    cav_negatives: str = NEGATIVES  # name of the negatives folder in cav_dir, or a path
    cav_images: int = 500  # at most this many images per concept (and negatives), seeded
    cav_l2: float = 1e-2  # L2 penalty of the logistic probes (standardised features)
    # class importance (importance.py): None = computed when components are extracted
    importance: bool | None = None

    @property
    def wants_importance(self) -> bool:
        return bool(self.kinds) if self.importance is None else bool(self.importance)


def default_rank(channels: int) -> int:
    """The rank rule: ``min(16, max(2, channels // 8))`` (see the module docstring)."""
    return int(min(16, max(2, channels // 8)))


def check_options(opt: ComponentOptions, specs: list[LayerSpec]) -> list[LayerSpec]:
    """Validate before anything is written; returns the component layers."""
    kinds = list(dict.fromkeys(opt.kinds))
    bad = [k for k in kinds if k not in COMPONENT_KINDS]
    if bad:
        raise InvalidArgument(
            f"unknown component kind {bad[0]!r} (kinds: {', '.join(COMPONENT_KINDS)})",
            field="components",
        )
    opt.kinds = kinds
    if opt.rank is not None and opt.rank < 1:
        raise InvalidArgument(f"rank must be >= 1, not {opt.rank}", field="rank")
    for name in ("images", "positions", "max_iter", "cav_images"):
        if int(getattr(opt, name)) < 1:
            raise InvalidArgument(f"{name} must be >= 1", field=name)
    if not (opt.cav_l2 >= 0 and math.isfinite(opt.cav_l2)):
        raise InvalidArgument("cav_l2 must be a finite number >= 0", field="cav_l2")
    if "cav" in kinds:
        if not opt.cav_dir:
            raise InvalidArgument(
                "cav components need a folder of concept examples (--cav-dir)", field="cav_dir"
            )
        cav_examples(opt)  # folders and counts, before the forward pass
    elif opt.cav_dir:
        raise InvalidArgument("--cav-dir given without the cav kind", field="cav_dir")
    return component_layers(opt, specs) if kinds or opt.wants_importance else []


def component_layers(opt: ComponentOptions, specs: list[LayerSpec]) -> list[LayerSpec]:
    if not opt.layers:
        return list(specs)
    chosen: list[LayerSpec] = []
    for item in opt.layers:
        hits = [s for s in specs if fnmatch.fnmatchcase(s.name, item) or s.name == item]
        if not hits:
            raise InvalidArgument(
                f"component layer {item!r} is not among the indexed layers "
                f"({', '.join(s.name for s in specs[:20])}{', ...' if len(specs) > 20 else ''})",
                field="component_layers",
            )
        chosen += [h for h in hits if h not in chosen]
    return sorted(chosen, key=lambda s: s.index)


# -- the components of one layer ----------------------------------------------------------------
@dataclass
class ComponentGroup:
    """The components of one kind in one layer."""

    layer: str
    kind: str
    directions: np.ndarray  # (K, C) float32, unit rows
    info: list[dict[str, Any]]  # per component: what the payload's ``component`` holds
    extraction: str  # fingerprint of the kind's settings

    @property
    def key(self) -> str:
        return f"{self.layer}#{self.kind}"

    @property
    def units(self) -> int:
        return int(self.directions.shape[0])


def fingerprint(kind: str, opt: ComponentOptions, aggregation: str, probe_sha: str) -> str:
    parts: dict[str, Any] = {
        "kind": kind,
        "aggregation": aggregation,
        "seed": opt.seed,
        "probe": probe_sha,
    }
    if kind in ("nmf", "cluster"):
        parts |= {
            "rank": opt.rank or "min(16,max(2,C//8))",
            "images": opt.images,
            "positions": opt.positions,
            "max_iter": opt.max_iter,
        }
    if kind == "cav":
        concepts, negatives = cav_examples(opt)
        h = hashlib.sha256()
        for name, files in [*sorted(concepts.items()), (NEGATIVES, negatives)]:
            h.update(name.encode() + b"\0")
            for f in files:
                h.update(str(f).encode() + b"\0")
        parts |= {"examples": h.hexdigest(), "l2": opt.cav_l2, "cav_images": opt.cav_images}
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def save_groups(path: Path, groups: list[ComponentGroup], meta: dict[str, Any]) -> None:
    """The fitted directions of a run (``runs/<model>/components.npz`` + ``.json``), so a
    resumed run projects on the same directions without fitting again."""
    arrays = {f"{i}": g.directions for i, g in enumerate(groups)}
    atomic_save_npz(path.with_suffix(".npz"), arrays, durable=False)
    doc = {
        "groups": [
            {"layer": g.layer, "kind": g.kind, "info": g.info, "extraction": g.extraction}
            for g in groups
        ],
        "meta": meta,
    }
    atomic_write_json(path.with_suffix(".json"), doc, durable=False)


def load_groups(path: Path) -> tuple[list[ComponentGroup], dict[str, Any]] | None:
    try:
        doc = json.loads(path.with_suffix(".json").read_text())
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
            groups = [
                ComponentGroup(
                    g["layer"],
                    g["kind"],
                    np.asarray(z[str(i)], np.float32),
                    list(g["info"]),
                    g["extraction"],
                )
                for i, g in enumerate(doc["groups"])
            ]
        return groups, dict(doc.get("meta", {}))
    except (OSError, KeyError, ValueError, TypeError):
        return None


# -- probe subset and activation rows -----------------------------------------------------------
def subset_indices(files: list[str], limit: int, seed: int = 0) -> np.ndarray:
    """At most ``limit`` probe samples, class-balanced over class folders (round-robin over
    each class's samples in a seeded random order), sorted."""
    n = len(files)
    if limit >= n:
        return np.arange(n)
    cls = class_ids(files)
    cls = np.zeros(n, np.int64) if cls is None else cls
    rng = np.random.default_rng(seed)
    queues = [rng.permutation(np.flatnonzero(cls == c)) for c in range(int(cls.max()) + 1)]
    picked: list[int] = []
    pos = 0
    while len(picked) < limit:
        for q in queues:
            if pos < len(q) and len(picked) < limit:
                picked.append(int(q[pos]))
        pos += 1
    return np.sort(np.asarray(picked, np.int64))


def probe_subset(probe: ProbeSet, indices: np.ndarray) -> ProbeSet:
    return replace(probe, files=[probe.files[int(i)] for i in indices])


def positions_first(out: Any, spec: LayerSpec) -> torch.Tensor:
    """A layer output as (B, positions, channels): conv maps' H x W positions, tokens, or one
    position of a (B, C) output."""
    t = out[0] if isinstance(out, (tuple, list)) else out
    if t.ndim == 4:
        return t.flatten(2).transpose(1, 2)
    if t.ndim == 3:
        return t.transpose(0, 1) if spec.tokens_first else t
    if t.ndim == 2:
        return t[:, None, :]
    raise InvalidArgument(f"cannot use a layer output of shape {tuple(t.shape)}", field="layers")


class RawTap:
    """Forward hooks that keep each layer's raw output of the current batch; with ``grad``
    the output is kept with its graph and a clone is passed on, so in-place operations further
    down cannot change the kept tensor."""

    def __init__(self, model: nn.Module, specs: list[LayerSpec], grad: bool = False):
        self.model, self.specs, self.grad = model, specs, grad
        self.out: dict[str, torch.Tensor] = {}
        self.output: torch.Tensor | None = None
        self._handles = []
        modules = (
            dict(model.named_modules()) if not isinstance(model, torch.jit.ScriptModule) else {}
        )
        for spec in specs:
            if spec.name != OUTPUT:
                self._handles.append(modules[spec.name].register_forward_hook(self._hook(spec)))

    def _hook(self, spec: LayerSpec) -> Callable[..., Any]:
        def hook(_m: nn.Module, _i: Any, output: Any) -> Any:
            if spec.name in self.out:  # a module run twice contributes its first call
                return None
            if isinstance(output, (tuple, list)):  # (output, extras): the first, kept as is
                t = output[0]
                self.out[spec.name] = t if self.grad else t.detach()
                return None
            self.out[spec.name] = output if self.grad else output.detach()
            return output.clone() if self.grad else None

        return hook

    def __call__(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.out = {}
        y = self.model(x)
        first = y[0] if isinstance(y, (tuple, list)) else y
        self.output = first if isinstance(first, torch.Tensor) else None
        if any(s.name == OUTPUT for s in self.specs) and self.output is not None:
            self.out[OUTPUT] = self.output
        return self.out

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def collect_rows(
    module: nn.Module,
    specs: list[LayerSpec],
    probe: ProbeSet,
    transform: Callable[[Image.Image], torch.Tensor],
    positions: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    budget: int = ROW_BUDGET,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Sampled activation rows (positions x channels) of every layer of ``specs`` over the
    images of ``probe`` (a subset), and how many positions each image gave.

    ``positions`` per image and layer, fewer when the rows of all layers together would pass
    ``budget`` floats (then ``floor(budget / (images x sum of channels))``, at least 1)."""
    n = len(probe)
    channels = sum(s.units for s in specs)
    per_image = max(1, min(positions, budget // max(1, n * channels)))
    rng = torch.Generator().manual_seed(int(seed))
    rows: dict[str, list[torch.Tensor]] = {s.name: [] for s in specs}
    tap = RawTap(module, specs)
    try:
        with torch.inference_mode():
            for _, x in batches(probe, transform, batch_size):
                out = tap(x.to(device))
                for s in specs:
                    t = positions_first(out[s.name], s).float().cpu()  # (B, P, C)
                    b, p, _ = t.shape
                    if p > per_image:
                        pick = torch.rand((b, p), generator=rng).argsort(dim=1)[:, :per_image]
                        t = torch.gather(t, 1, pick[:, :, None].expand(-1, -1, t.shape[2]))
                    rows[s.name].append(t.reshape(-1, t.shape[2]))
    finally:
        tap.close()
    out_rows = {k: torch.cat(v).numpy() for k, v in rows.items()}
    meta = {
        "images": n,
        "positions_per_image": per_image,
        "rows": {k: int(v.shape[0]) for k, v in out_rows.items()},
        "memory_bytes": int(sum(v.nbytes for v in out_rows.values())),
    }
    return out_rows, meta


# -- NMF ------------------------------------------------------------------------------------------
@dataclass
class NMFResult:
    directions: np.ndarray  # (r, C) unit rows of H, largest share first
    share: np.ndarray  # (r,) share of the reconstruction
    fit: float  # 1 - |X - WH|^2 / |X|^2
    iterations: int


def nmf(
    x: np.ndarray, rank: int, seed: int = 0, max_iter: int = 200, tol: float = 1e-4
) -> NMFResult:
    """Non-negative matrix factorisation X ~= W H (X: (n, C) >= 0; negatives are clipped) by
    Lee & Seung's multiplicative updates (Frobenius loss), seeded random init."""
    X = torch.as_tensor(np.clip(np.asarray(x, np.float32), 0.0, None))
    n, c = X.shape
    r = int(max(1, min(rank, c)))
    g = torch.Generator().manual_seed(int(seed))
    scale = math.sqrt(max(float(X.mean()), 1e-12) / r)
    W = torch.rand((n, r), generator=g) * scale + 1e-6
    H = torch.rand((r, c), generator=g) * scale + 1e-6
    eps = 1e-10
    norm_x = float((X * X).sum())
    prev = math.inf
    it = 0
    for it in range(1, max_iter + 1):
        H *= (W.T @ X) / ((W.T @ W) @ H + eps)
        W *= (X @ H.T) / (W @ (H @ H.T) + eps)
        if it % 10 == 0 or it == max_iter:
            err = float(((X - W @ H) ** 2).sum())
            if prev - err <= tol * max(prev, eps) and math.isfinite(prev):
                break
            prev = err
    err = float(((X - W @ H) ** 2).sum())
    hn = H.norm(dim=1)
    contrib = W.sum(0) * hn
    order = torch.argsort(-contrib, stable=True)
    dirs = (H / hn.clamp_min(1e-12)[:, None])[order]
    share = (contrib / contrib.sum().clamp_min(1e-12))[order]
    return NMFResult(
        dirs.numpy().astype(np.float32),
        share.numpy().astype(np.float32),
        1.0 - err / max(norm_x, 1e-12),
        it,
    )


# -- spherical k-means ----------------------------------------------------------------------------
@dataclass
class KMeansResult:
    directions: np.ndarray  # (k, C) unit centroids, largest cluster first
    share: np.ndarray  # (k,) share of the rows in each cluster
    mean_cos: np.ndarray  # (k,) mean cosine of a cluster's rows to its centroid
    iterations: int


def spherical_kmeans(x: np.ndarray, k: int, seed: int = 0, max_iter: int = 100) -> KMeansResult:
    """Spherical k-means (cosine) of the rows of ``x`` (all-zero rows dropped), k-means++
    initialisation; an emptied cluster restarts at the row farthest from its centroid."""
    X = torch.as_tensor(np.asarray(x, np.float32))
    norms = X.norm(dim=1)
    X = X[norms > 1e-8] / norms[norms > 1e-8, None]
    n, c = X.shape
    if n == 0:
        raise InvalidArgument("no non-zero activation rows to cluster", field="components")
    k = int(max(1, min(k, n)))
    g = torch.Generator().manual_seed(int(seed))
    centres = torch.empty((k, c))
    centres[0] = X[torch.randint(n, (1,), generator=g)]
    dist = 1.0 - X @ centres[0]
    for j in range(1, k):
        p = dist.clamp_min(0.0)
        p = p / p.sum() if float(p.sum()) > 0 else torch.full((n,), 1.0 / n)
        centres[j] = X[torch.multinomial(p, 1, generator=g)]
        dist = torch.minimum(dist, 1.0 - X @ centres[j])
    assign = torch.full((n,), -1, dtype=torch.long)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        sims = X @ centres.T
        new = sims.argmax(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
        sums = torch.zeros((k, c)).index_add_(0, assign, X)
        counts = torch.bincount(assign, minlength=k)
        for j in torch.nonzero(counts == 0).flatten().tolist():  # restart empty clusters
            far = int((X @ centres[j]).argmin())
            sums[j] = X[far]
        centres = sums / sums.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sims = X @ centres.T
    assign = sims.argmax(dim=1)
    counts = torch.bincount(assign, minlength=k).double()
    mean_cos = torch.zeros(k, dtype=torch.float64).index_add_(
        0, assign, sims.gather(1, assign[:, None]).flatten().double()
    ) / counts.clamp_min(1)
    order = torch.argsort(-counts, stable=True)
    return KMeansResult(
        centres[order].numpy().astype(np.float32),
        (counts / n)[order].numpy().astype(np.float32),
        mean_cos[order].numpy().astype(np.float32),
        it,
    )


# -- concept activation vectors -------------------------------------------------------------------
@dataclass
class CAVResult:
    direction: np.ndarray  # (C,) unit, raw activation units
    accuracy: float  # on the held-out split
    train_accuracy: float
    positives: int
    negatives: int


def _image_list(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def _cap(files: list[Path], limit: int, seed: int) -> list[Path]:
    if len(files) <= limit:
        return files
    pick = np.random.default_rng(seed).choice(len(files), size=limit, replace=False)
    return [files[int(i)] for i in sorted(pick)]


def cav_examples(opt: ComponentOptions) -> tuple[dict[str, list[Path]], list[Path]]:
    """``({concept: images}, negatives)`` of ``opt.cav_dir`` (each at most ``cav_images``,
    a seeded subset); InvalidArgument / NotFound when a folder is missing or too small."""
    root = Path(str(opt.cav_dir)).expanduser()
    if not root.is_dir():
        raise NotFound(f"CAV example folder {root} does not exist")
    neg_dir = Path(opt.cav_negatives).expanduser()
    if not neg_dir.is_absolute():
        neg_dir = root / opt.cav_negatives
    if not neg_dir.is_dir():
        raise InvalidArgument(
            f"CAV examples need a negatives folder ({neg_dir.name} in {root.name}, or "
            "--cav-negatives PATH)",
            field="cav_dir",
        )
    concepts = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if d.resolve() == neg_dir.resolve():
            continue
        concepts[d.name] = _cap(_image_list(d), opt.cav_images, opt.seed)
    negatives = _cap(_image_list(neg_dir), opt.cav_images, opt.seed + 1)
    if not concepts:
        raise InvalidArgument(f"no concept folders in {root.name}", field="cav_dir")
    for name, files in [*concepts.items(), (neg_dir.name, negatives)]:
        if len(files) < MIN_CAV_IMAGES:
            raise InvalidArgument(
                f"CAV folder {name!r} holds {len(files)} images; at least {MIN_CAV_IMAGES}",
                field="cav_dir",
            )
    return concepts, negatives


def _split(n: int, rng: np.random.Generator, holdout: float = 0.2) -> tuple[np.ndarray, ...]:
    perm = rng.permutation(n)
    m = max(1, round(holdout * n))
    return np.sort(perm[m:]), np.sort(perm[:m])


def fit_cav(
    pos: np.ndarray, neg: np.ndarray, l2: float = 1e-2, seed: int = 0, holdout: float = 0.2
) -> CAVResult:
    """An L2-regularised logistic probe, concept (``pos``) vs negatives (``neg``), fitted on a
    seeded stratified 80 % (standardised features, torch L-BFGS) and scored on the other 20 %.
    The direction is its weight vector in raw activation units (w / std), normalised."""
    pos, neg = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    rng = np.random.default_rng(seed)
    tp, hp = _split(len(pos), rng, holdout)
    tn, hn = _split(len(neg), rng, holdout)
    xt = np.concatenate([pos[tp], neg[tn]])
    yt = np.concatenate([np.ones(len(tp)), np.zeros(len(tn))])
    xh = np.concatenate([pos[hp], neg[hn]])
    yh = np.concatenate([np.ones(len(hp)), np.zeros(len(hn))])
    mu, sd = xt.mean(0), xt.std(0)
    sd = np.where(sd > 1e-6, sd, 1.0)
    X = torch.as_tensor((xt - mu) / sd)
    Y = torch.as_tensor(yt)
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.binary_cross_entropy_with_logits(X @ w + b, Y)
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    wd, bd = w.detach().numpy(), float(b.detach())

    def acc(x: np.ndarray, y: np.ndarray) -> float:
        return float(((((x - mu) / sd) @ wd + bd > 0) == (y > 0.5)).mean())

    raw = wd / sd
    norm = float(np.linalg.norm(raw))
    direction = raw / norm if norm > 0 else np.zeros_like(raw)
    return CAVResult(direction.astype(np.float32), acc(xh, yh), acc(xt, yt), len(pos), len(neg))


def _pooled(
    module: nn.Module,
    specs: list[LayerSpec],
    files: list[Path],
    transform: Callable[[Image.Image], torch.Tensor],
    conv_agg: str,
    token_agg: str,
    batch_size: int,
    device: torch.device,
) -> dict[str, np.ndarray]:
    """Pooled activations (as the neurons are pooled) of ``files`` for every layer."""
    out: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    tap = ActivationTap(module, specs, conv_agg, token_agg)
    try:
        with torch.inference_mode():
            for i in range(0, len(files), batch_size):
                imgs = []
                for p in files[i : i + batch_size]:
                    with Image.open(p) as im:
                        imgs.append(transform(im.convert("RGB")))
                pooled = tap(torch.stack(imgs).to(device))
                for s in specs:
                    out[s.name].append(pooled[s.name].numpy())
    finally:
        tap.close()
    return {k: np.concatenate(v) for k, v in out.items()}


# -- fitting everything -------------------------------------------------------------------------
def fit_components(
    module: nn.Module,
    specs: list[LayerSpec],
    probe: ProbeSet,
    transform: Callable[[Image.Image], torch.Tensor],
    opt: ComponentOptions,
    conv_agg: str,
    token_agg: str,
    batch_size: int,
    device: torch.device,
) -> tuple[list[ComponentGroup], dict[str, Any]]:
    """Directions of every requested kind in every layer of ``specs`` (component layers), and
    what was done (subset, rows, memory, per-layer fit)."""
    groups: list[ComponentGroup] = []
    meta: dict[str, Any] = {"kinds": list(opt.kinds), "layers": [s.name for s in specs]}
    fps = {k: fingerprint(k, opt, conv_agg, probe.sha256) for k in opt.kinds}
    meta["extraction"] = fps
    meta["options"] = asdict(opt)
    factorised = [k for k in opt.kinds if k in ("nmf", "cluster")]
    rows: dict[str, np.ndarray] = {}
    if factorised:
        idx = subset_indices(probe.files, opt.images, opt.seed)
        rows, rows_meta = collect_rows(
            module,
            specs,
            probe_subset(probe, idx),
            transform,
            opt.positions,
            opt.seed,
            batch_size,
            device,
        )
        meta["rows"] = rows_meta
    per_layer: dict[str, dict[str, Any]] = {}
    for s in specs:
        info_l: dict[str, Any] = {}
        r = opt.rank or default_rank(s.units)
        if "nmf" in opt.kinds:
            x = rows[s.name]
            res = nmf(x, r, opt.seed, opt.max_iter)
            clipped = float((x < 0).mean()) if x.size else 0.0
            info_l["nmf"] = {"rank": len(res.share), "fit": res.fit, "clipped": clipped}
            groups.append(
                ComponentGroup(
                    s.name,
                    "nmf",
                    res.directions,
                    [
                        {
                            "method": "nmf",
                            "rank": len(res.share),
                            "share": float(sh),
                            "fit": round(res.fit, 6),
                        }
                        for sh in res.share
                    ],
                    fps["nmf"],
                )
            )
        if "cluster" in opt.kinds:
            res_k = spherical_kmeans(rows[s.name], r, opt.seed, opt.max_iter)
            info_l["cluster"] = {"k": len(res_k.share), "iterations": res_k.iterations}
            groups.append(
                ComponentGroup(
                    s.name,
                    "cluster",
                    res_k.directions,
                    [
                        {
                            "method": "spherical-kmeans",
                            "k": len(res_k.share),
                            "share": float(sh),
                            "mean_cos": float(mc),
                        }
                        for sh, mc in zip(res_k.share, res_k.mean_cos, strict=True)
                    ],
                    fps["cluster"],
                )
            )
        per_layer[s.name] = info_l
    rows.clear()
    if "cav" in opt.kinds:
        concepts, negatives = cav_examples(opt)
        neg = _pooled(module, specs, negatives, transform, conv_agg, token_agg, batch_size, device)
        pos = {
            c: _pooled(module, specs, f, transform, conv_agg, token_agg, batch_size, device)
            for c, f in concepts.items()
        }
        for s in specs:
            dirs: list[np.ndarray] = []
            infos: list[dict[str, Any]] = []
            for c in sorted(concepts):
                res_c = fit_cav(pos[c][s.name], neg[s.name], opt.cav_l2, opt.seed)
                dirs.append(res_c.direction)
                infos.append(
                    {
                        "method": "cav",
                        "concept": c,
                        "accuracy": res_c.accuracy,
                        "train_accuracy": res_c.train_accuracy,
                        "positives": res_c.positives,
                        "negatives": res_c.negatives,
                        "l2": opt.cav_l2,
                    }
                )
            groups.append(ComponentGroup(s.name, "cav", np.stack(dirs), infos, fps["cav"]))
            per_layer.setdefault(s.name, {})["cav"] = {
                str(c["concept"]): round(float(c["accuracy"]), 4) for c in infos
            }
        meta["cav"] = {"concepts": sorted(concepts), "negatives": len(negatives)}
    meta["per_layer"] = per_layer
    return groups, meta


# -- projections in the forward pass --------------------------------------------------------------
def projections(
    groups: list[ComponentGroup],
    pooled: dict[str, torch.Tensor],
    raw: dict[str, torch.Tensor],
    specs: dict[str, LayerSpec],
    conv_agg: str,
) -> Iterator[tuple[ComponentGroup, torch.Tensor]]:
    """(group, (B, K) activations) of every group for the current batch: pooled . direction,
    or with ``max`` aggregation of a conv map the spatial max of the per-position projection
    (``raw`` holds those layers' outputs)."""
    for g in groups:
        d = torch.as_tensor(g.directions)
        s = specs[g.layer]
        if conv_agg == "max" and g.layer in raw and raw[g.layer].ndim == 4:
            t = positions_first(raw[g.layer], s).float().cpu()  # (B, P, C)
            yield g, (t @ d.T).amax(dim=1)
        else:
            yield g, pooled[g.layer].float() @ d.T


def raw_layers(groups: list[ComponentGroup], conv_agg: str) -> set[str]:
    """Layers whose raw outputs the forward pass must keep (max aggregation only)."""
    return {g.layer for g in groups} if conv_agg == "max" else set()
