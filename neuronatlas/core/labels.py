"""Concept labels for neuron vectors: vocabularies, prompt embeddings, null-baseline scores.

A label's score for a vector ``x`` is ``cos(x, prompt(label)) - cos(x, prompt(""))``: how much
closer the vector is to the label's prompt than to the empty prompt of the same templates.
The baseline removes what all prompts share ("a photo of"), so scores of different labels and
vocabularies are comparable and a score <= 0 means "no better than no label". A prompt
embedding is the mean over templates of the normalised text embeddings, re-normalised.

A score is a difference of two cosines, not a cosine or a probability. With unit ``x``,
``l = prompt(label)`` and ``n = prompt("")`` it is ``x . (l - n) <= |l - n| =
sqrt(2 - 2 cos(l, n))`` (equality for ``x`` along ``l - n``), so it can exceed 1 exactly for
labels whose prompt is more than 60 degrees from the empty prompt (``cos(l, n) < 1/2``) and a
vector pointing towards the label and away from the empty prompt. A good CLIP puts
"a photo of a cat." close to "a photo of a.", which keeps scores small; a weak or random
text tower allows more (the tests' random ``na-tiny``: ``cos(l, n)`` down to 0.26 on Broden,
so 5 of its 1,153 labels can score above 1, at most 1.22). Compare scores with each other,
not with 1.

The adaptive label set of a vector keeps every label scoring >= beta * best (best > 0), as in
MAMMI: one label for a clear neuron, several for a neuron whose best labels are close. Label
filters and lookups match this set by default (``LabelScope`` in ``core/store/base.py``:
``top1`` = the best label, ``set``, ``top5`` = any vocabulary's top labels).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from neuronatlas.core.atomic import atomic_save_npy
from neuronatlas.core.embedder.base import Embedder
from neuronatlas.core.errors import InvalidArgument, NotFound
from neuronatlas.core.records import Label

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "a low resolution photo of a {}.",
    "an image of {}.",
)

_PLACES = re.compile(r"^/[a-z]/(\S+?)(?:\s+\d+)?$")  # /a/airfield 0, /a/arena/hockey 17
_WNID = re.compile(r"^n\d{8}\s+")  # n01440764 tench, Tinca tinca
_TEXT_CHUNK = 2048  # texts per encode_text call


def parse_label_line(line: str) -> str:
    """One vocabulary line -> label ('' for blanks and # comments)."""
    s = line.strip()
    if not s or s.startswith("#"):
        return ""
    m = _PLACES.match(s)
    if m:
        return " ".join(m.group(1).replace("_", " ").replace("/", " ").split())
    s = _WNID.sub("", s)
    if "," in s:
        s = s.split(",", 1)[0]
    return " ".join(s.split())


def load_vocabulary(path: str | Path) -> list[str]:
    """Read a vocabulary file: one label per line, ImageNet-style synonyms (first name kept),
    Places365 paths (``/a/airfield 0`` -> ``airfield``); blanks skipped, duplicates dropped
    (case-insensitively, first spelling kept)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise NotFound(f"vocabulary file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InvalidArgument(
            f"vocabulary {path} is not UTF-8 text: {e}", field="vocabulary"
        ) from None
    seen: set[str] = set()
    labels: list[str] = []
    for line in text.splitlines():
        label = parse_label_line(line)
        if label and label.lower() not in seen:
            seen.add(label.lower())
            labels.append(label)
    if not labels:
        raise InvalidArgument(f"vocabulary {path} has no labels", field="vocabulary")
    return labels


def prompt(template: str, label: str) -> str:
    """Fill a template; the empty label gives the null prompt (``"a photo of a."``)."""
    text = " ".join(template.format(label).split())
    return text.replace(" .", ".").replace(" ,", ",")


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    unit: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return unit


def prompt_embeddings(
    embedder: Embedder, labels: Sequence[str], templates: Sequence[str]
) -> np.ndarray:
    """``(len(labels), dim)``: per label, the mean over templates of the normalised embeddings,
    re-normalised."""
    acc = np.zeros((len(labels), embedder.dim), np.float32)
    for template in templates:
        texts = [prompt(template, label) for label in labels]
        for i in range(0, len(texts), _TEXT_CHUNK):
            acc[i : i + _TEXT_CHUNK] += _normalise(embedder.encode_text(texts[i : i + _TEXT_CHUNK]))
    return _normalise(acc)


class LabelScorer:
    """Scores vectors against one vocabulary (see module docstring).

    ``cache_dir``: when given, the prompt embeddings are kept there as ``.npy`` keyed by the
    embedder identity, labels and templates, so a large vocabulary is encoded once.
    """

    def __init__(
        self,
        embedder: Embedder,
        labels: Sequence[str],
        name: str = "vocab",
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        cache_dir: str | Path | None = None,
    ):
        labels = [str(l) for l in labels]
        if not labels:
            raise InvalidArgument(f"vocabulary {name!r} is empty", field="vocabulary")
        if not templates or any("{}" not in t for t in templates):
            raise InvalidArgument(
                "every label template needs one '{}' placeholder", field="templates"
            )
        self.embedder = embedder
        self.labels = labels
        self.name = name
        self.templates = tuple(templates)
        matrix = self._load_or_encode(Path(cache_dir) if cache_dir is not None else None)
        self.label_matrix = matrix[:-1]  # (L, d)
        self.null_vector = matrix[-1]  # (d,)

    def _cache_key(self) -> str:
        info = self.embedder.info
        blob = json.dumps([info.name, info.weights, info.dim, self.templates, self.labels])
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def _load_or_encode(self, cache_dir: Path | None) -> np.ndarray:
        path = cache_dir / f"labels-{self._cache_key()}.npy" if cache_dir is not None else None
        if path is not None and path.is_file():
            try:
                cached: np.ndarray = np.load(path)
                if cached.shape == (len(self.labels) + 1, self.embedder.dim):
                    return cached.astype(np.float32, copy=False)
            except (OSError, ValueError):
                pass  # unreadable cache file: encode again and overwrite it
        matrix = prompt_embeddings(self.embedder, [*self.labels, ""], self.templates)
        if path is not None:
            atomic_save_npy(path, matrix)
        return matrix

    def __len__(self) -> int:
        return len(self.labels)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """``(n, d)`` vectors -> ``(n, L)`` null-baseline scores, float32."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.label_matrix.shape[1]:
            raise InvalidArgument(
                f"vectors of shape {x.shape} do not match the embedder dimension "
                f"{self.label_matrix.shape[1]}",
                field="vectors",
            )
        x = _normalise(x)
        scores: np.ndarray = x @ self.label_matrix.T - (x @ self.null_vector)[:, None]
        return scores.astype(np.float32, copy=False)

    def top(self, x: np.ndarray, n: int = 5) -> list[list[Label]]:
        """The ``n`` best labels per vector, best first."""
        s = self.scores(x)
        n = max(0, min(int(n), s.shape[1]))
        if n == 0:
            return [[] for _ in range(s.shape[0])]
        idx = np.argpartition(-s, n - 1, axis=1)[:, :n]
        out = []
        for row, cand in zip(s, idx, strict=False):
            order = cand[np.argsort(-row[cand], kind="stable")]
            out.append([Label(self.labels[j], float(row[j])) for j in order])
        return out

    def label_sets(
        self, x: np.ndarray, beta: float = 0.95, limit: int | None = None
    ) -> list[list[str]]:
        """Per vector, the labels scoring >= beta * best (empty when best <= 0), best first.
        ``limit`` caps the set size (None: no cap)."""
        return _beta_sets(self.scores(x), self.labels, beta, limit)


def combined_label_sets(
    scorers: Sequence[LabelScorer], x: np.ndarray, beta: float = 0.95, limit: int | None = None
) -> list[list[str]]:
    """Adaptive label sets over several vocabularies at once (scores are comparable thanks to
    the shared null baseline); a label in two vocabularies appears once."""
    if not scorers:
        raise InvalidArgument("no vocabularies to label with", field="vocabulary")
    scores = np.concatenate([s.scores(x) for s in scorers], axis=1)
    labels = [label for s in scorers for label in s.labels]
    sets = _beta_sets(scores, labels, beta, None)
    out: list[list[str]] = []
    for labs in sets:
        unique = list(dict.fromkeys(labs))
        out.append(unique[:limit] if limit is not None else unique)
    return out


def _beta_sets(
    scores: np.ndarray, labels: Sequence[str], beta: float, limit: int | None
) -> list[list[str]]:
    if not 0.0 < beta <= 1.0:
        raise InvalidArgument(f"beta must be in (0, 1], not {beta}", field="beta")
    out: list[list[str]] = []
    for row in scores:
        best = float(row.max())
        if best <= 0:
            out.append([])
            continue
        keep = np.flatnonzero(row >= beta * best)
        keep = keep[np.argsort(-row[keep], kind="stable")]
        if limit is not None:
            keep = keep[:limit]
        out.append([labels[int(j)] for j in keep])
    return out
