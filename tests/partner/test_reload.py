"""Model versions and hot reload against a live process: no failed request during a switch, a broken
version is refused and the old one keeps serving."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections import Counter

import httpx
import pytest

from model_store.artifact import load_artifact, save_artifact
from model_store.registry import ModelRegistry
from tests.partner.conftest import SHIPPED, start_server, stop_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reload_server(store, tmp_path_factory):
    live = start_server(store, tmp_path_factory.mktemp("log") / "server.log", CXR_MAX_DELAY_MS="2")
    yield live
    assert stop_server(live) == 0


def add_version(store, version: int) -> str:
    """Version N: the shipped weights re-saved with their own metadata (so a distinct file and sha256)."""
    loaded = load_artifact(SHIPPED)
    metadata = dataclasses.replace(loaded.metadata, version=str(version))
    return save_artifact(loaded.model, metadata, ModelRegistry(store).path_for("pneumonia", version))


def active(server) -> dict:
    return httpx.get(f"{server.url}/models", timeout=10).json()


def test_reload_under_load_fails_no_request(reload_server, store, fullres_dir):
    upload = next(iter(sorted(fullres_dir.glob("PNEUMONIA/*.jpeg")))).read_bytes()
    sha2 = add_version(store, 2)
    statuses: Counter[int] = Counter()
    versions: Counter[str] = Counter()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=reload_server.url, timeout=60) as client:
            deadline = time.monotonic() + 60  # bounded even if the test goes wrong
            while not stop.is_set() and time.monotonic() < deadline:
                response = client.post("/predict", files={"file": ("x.jpeg", upload)})
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    versions[response.json()["model"]["version"]] += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    response = httpx.post(f"{reload_server.url}/admin/reload", json={}, timeout=120)
    assert httpx.get(f"{reload_server.url}/health/ready").status_code == 200
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join()
    assert response.status_code == 200, response.text
    assert response.json()["previous"]["version"] == "1"
    now = response.json()["active"]
    assert {k: now[k] for k in ("name", "version", "sha256")} == {"name": "pneumonia", "version": "2",
                                                                 "sha256": sha2}
    assert now["runtime"]  # the runtime the new version serves with (verified at its load)
    assert set(statuses) == {200}, statuses
    assert versions["1"] > 0 and versions["2"] > 0, versions  # both served during the test
    listing = active(reload_server)
    assert listing["active_version"] == "2" and listing["versions"] == [1, 2]


def test_broken_version_is_refused_and_old_keeps_serving(reload_server, store, fullres_dir):
    before = active(reload_server)["active_version"]
    target = ModelRegistry(store).path_for("pneumonia", 9)
    target.parent.mkdir(parents=True)
    target.write_bytes(SHIPPED.read_bytes()[:5000])  # truncated HDF5
    response = httpx.post(f"{reload_server.url}/admin/reload", json={"version": 9}, timeout=60)
    assert response.status_code == 422
    assert "keeps serving" in response.json()["error"]["message"]
    assert str(store) not in response.text  # no server paths in error bodies
    assert active(reload_server)["active_version"] == before
    assert httpx.get(f"{reload_server.url}/health/ready").status_code == 200
    upload = next(iter(sorted(fullres_dir.glob("NORMAL/*.jpeg")))).read_bytes()
    ok = httpx.post(f"{reload_server.url}/predict", files={"file": ("x.jpeg", upload)}, timeout=30)
    assert ok.status_code == 200 and ok.json()["model"]["version"] == before
    shutil.rmtree(target.parent)


def test_unknown_version_is_404_and_pinning_follows_the_active_version(reload_server):
    response = httpx.post(f"{reload_server.url}/admin/reload", json={"version": 42}, timeout=30)
    assert response.status_code == 404
    assert "has no version 42" in response.json()["error"]["message"]
    current = active(reload_server)["active_version"]
    assert httpx.get(f"{reload_server.url}/v2/models/pneumonia/versions/{current}/ready").status_code == 200
    stale = httpx.get(f"{reload_server.url}/v2/models/pneumonia/versions/1/ready")
    if current != "1":
        assert stale.status_code == 404 and "not loaded" in stale.json()["error"]


def test_reload_back_to_a_pinned_older_version(reload_server):
    response = httpx.post(f"{reload_server.url}/admin/reload", json={"version": 1}, timeout=120)
    assert response.status_code == 200
    assert response.json()["active"]["version"] == "1"
    assert httpx.get(f"{reload_server.url}/v2/models/pneumonia/versions/1/ready").status_code == 200
