"""tests/reliability fixtures: the real app (shipped model) shared per session, gated and ungated. Helpers live
in reliability_support.py."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))  # reliability_support, hostile (importlib mode)
from reliability_support import running_app


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    """One app with default settings for every test that does not change settings or the batcher."""
    with running_app() as test_client:
        yield test_client


@pytest.fixture(scope="session")
def ungated_client() -> Iterator[TestClient]:
    """Default settings but the input gate off, for tests that need synthetic pictures answered (the gate
    refuses them, as it should: its own tests are tests/app/test_gate.py)."""
    with running_app(gate="off") as test_client:
        yield test_client
