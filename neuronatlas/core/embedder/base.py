"""The foundation-model interface. Bring your own model by implementing ``Embedder`` and
naming a factory ``package.module:factory`` (called with keyword ``device``) in config or on
the CLI (``--embedder py:package.module:factory``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from neuronatlas.core.records import EmbedderInfo


class Embedder(ABC):
    """Maps images and texts into one space. All outputs: L2-normalised float32 (n, dim)."""

    info: EmbedderInfo
    #: PIL.Image -> torch.Tensor (C, H, W), the model's own preprocessing
    preprocess: Callable[[Any], Any]

    @property
    def dim(self) -> int:
        return self.info.dim

    @abstractmethod
    def encode_images(self, images: Sequence[Any] | Any, batch_size: int = 64) -> np.ndarray:
        """PIL images or an already preprocessed (n, C, H, W) tensor -> (n, dim)."""

    @abstractmethod
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Raw strings (no templates) -> (n, dim). Cached."""
