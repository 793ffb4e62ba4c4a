"""Where the real data lives, and skips with a reason where it does not. A module of its own (not conftest) so
that test files import it by a name no other test folder uses (importlib mode, several conftest.py files)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """``$CXR_DATA_DIR`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("CXR_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))


def require_data(relative: str) -> Path:
    path = data_dir() / relative
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set CXR_DATA_DIR to the shared data folder)")
    return path
