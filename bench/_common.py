"""Shared by the bench scripts (run as ``python bench/<script>.py``, so this folder is on the
path): where the shared data lies, the CIFAR ResNet weights, the class-oracle embedding and
writing a results page."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NEURONATLAS_SHARED_DATA", REPO.parent / "shared" / "data"))


def find_weights(depth: int) -> Path | None:
    """The CIFAR-10 ResNet-``depth`` checkpoint in the shared data, or None."""
    found = sorted((DATA / "models").glob(f"cifar10-resnet{depth}-*.th"))
    return found[0] if found else None


def weights(depth: int) -> Path:
    """The CIFAR-10 ResNet-``depth`` checkpoint in the shared data (it must be there)."""
    found = find_weights(depth)
    if found is None:
        raise FileNotFoundError(f"no cifar10-resnet{depth}-*.th under {DATA / 'models'}")
    return found


def oracle_embeddings(classes: np.ndarray, dim: int = 32, noise: float = 0.05) -> np.ndarray:
    """The class-oracle embedding: each image its class's one-hot direction + Gaussian noise
    (seeded), L2-normalised."""
    rng = np.random.default_rng(0)
    e = np.zeros((len(classes), dim), np.float32)
    e[np.arange(len(classes)), classes] = 1.0
    e += noise * rng.standard_normal(e.shape).astype(np.float32)
    out: np.ndarray = e / np.linalg.norm(e, axis=1, keepdims=True)
    return out


def publish(path: Path, text: str) -> None:
    """Print a results page and write it to ``path``."""
    print(text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
