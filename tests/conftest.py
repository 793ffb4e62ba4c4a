"""Shared fixtures: where the real data lives, and skips with a reason where it does not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # shared_data, image_factory (importlib mode)
from shared_data import REPO_ROOT, data_dir, require_data  # noqa: F401  (re-exported for fixtures)


@pytest.fixture(scope="session")
def mnist_npz() -> Path:
    return require_data("pneumoniamnist.npz")


@pytest.fixture(scope="session")
def xray_224_dir() -> Path:
    return require_data("chest_xray_224")


@pytest.fixture(scope="session")
def fullres_dir() -> Path:
    return require_data("fullres_samples")


@pytest.fixture(scope="session")
def gate_dir() -> Path:
    """Images that are not frontal chest radiographs (``not_cxr/<kind>/``) and adult chest films."""
    return require_data("gate")


def _latest_shipped() -> Path:
    """The latest version in the store: what the service serves by default."""
    folder = REPO_ROOT / "model_store" / "pneumonia"
    versions = sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit() and (p / "model.h5").is_file())
    return folder / str(versions[-1] if versions else 1) / "model.h5"


SHIPPED_MODEL = _latest_shipped()


@pytest.fixture(scope="session")
def shipped_model() -> Path:
    """The shipped default model, which the service serves with default settings."""
    if not SHIPPED_MODEL.is_file():
        pytest.skip(f"shipped model not found at {SHIPPED_MODEL} (train it: make train-default)")
    return SHIPPED_MODEL


@pytest.fixture(scope="session")
def fullres_images(fullres_dir: Path) -> list[Path]:
    """The real full-resolution uploads, NORMAL then PNEUMONIA, sorted."""
    return sorted(p for p in fullres_dir.glob("*/*") if p.is_file())
