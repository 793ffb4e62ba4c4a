"""tests/deploy: makes deploy_helpers importable (pytest runs with --import-mode=importlib) and renders once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_helpers import KUSTOMIZATIONS, render_kustomization


@pytest.fixture(scope="session")
def renders() -> dict[str, list[dict[str, Any]]]:
    """base, overlays/cpu and overlays/gpu, rendered by `kubectl kustomize`."""
    return {name: render_kustomization(folder) for name, folder in KUSTOMIZATIONS.items()}
