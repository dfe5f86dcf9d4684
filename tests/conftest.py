"""Shared fixtures. Real data lives in ../shared/data (next to the repository); tests that
need it skip with the reason when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NEURONATLAS_SHARED_DATA", REPO.parent / "shared" / "data"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(
            f"real data not found at {path} (expects ../shared/data next to the repository)"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def cifar_dir(shared_data: Path) -> Path:
    return _need(shared_data / "cifar10-test")


@pytest.fixture(scope="session")
def cifar_models(shared_data: Path) -> dict[int, Path]:
    models = _need(shared_data / "models")
    out = {}
    for depth in (20, 32, 44, 56):
        hits = sorted(models.glob(f"cifar10-resnet{depth}-*.th"))
        if hits:
            out[depth] = hits[0]
    if not out:
        pytest.skip(f"no CIFAR ResNet checkpoints in {models}")
    return out


@pytest.fixture(scope="session")
def concepts_dir(shared_data: Path) -> Path:
    return _need(shared_data / "concepts")


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated NEURONATLAS_HOME for one test."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("NEURONATLAS_HOME", str(h))
    for var in (
        "NEURONATLAS_BACKEND",
        "NEURONATLAS_URL",
        "NEURONATLAS_CONFIG",
        "NEURONATLAS_STORE_PATH",
    ):
        monkeypatch.delenv(var, raising=False)
    return h
