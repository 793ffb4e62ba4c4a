"""App fixtures: the shipped model behind a real server (once per session) and the in-process reference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from app_harness import SERVER_SETTINGS, Running, serve

from app.settings import Settings
from model_store.artifact import LoadedArtifact, load_artifact


@pytest.fixture(scope="session")
def server(shipped_model: Path) -> Iterator[Running]:
    """The shipped model, default settings (but small upload limits), over real HTTP."""
    with serve(Settings(**SERVER_SETTINGS)) as running:
        yield running


@pytest.fixture(scope="session")
def reference(shipped_model: Path) -> LoadedArtifact:
    """The shipped model loaded independently of the service: the in-process reference."""
    return load_artifact(shipped_model)


