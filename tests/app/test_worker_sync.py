"""app.worker_sync without processes: two WorkerSync objects on one run directory stand for two workers (the pids
of this process and its parent, both alive), with stand-in model managers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from app import worker_sync
from app.worker_sync import RELOAD_TIMEOUT_S, ReloadIncompleteError, WorkerSync


@dataclass
class Model:
    version: int

    @property
    def artifact(self) -> SimpleNamespace:
        return SimpleNamespace(sha256=f"{self.version:064d}")

    def describe(self) -> dict[str, str]:
        return {"name": "pneumonia", "version": str(self.version), "sha256": self.artifact.sha256, "runtime": "keras"}


@dataclass
class Manager:
    """What WorkerSync uses of app.model_manager.ModelManager."""

    _current: Model | None = field(default_factory=lambda: Model(2))
    fails: str | None = None  # the error a reload raises
    start_version: int | str | None = None
    registry: SimpleNamespace = field(default_factory=lambda: SimpleNamespace(root=Path("/srv/models")))

    @property
    def loaded(self) -> Model | None:
        return self._current

    def not_ready_reason(self) -> str | None:
        return None if self._current is not None else "model loading"

    def reload(self, version: int | str | None) -> Model:
        if self.fails:
            raise MemoryError(self.fails)
        self._current = Model(int(version or 3))
        return self._current


def worker(folder: Path, manager: Manager, pid: int) -> WorkerSync:
    sync = WorkerSync(folder, manager, expected=2)  # type: ignore[arg-type]
    sync.pid = pid
    return sync


@pytest.fixture
def pair(tmp_path):
    here, other = worker(tmp_path, Manager(), os.getpid()), worker(tmp_path, Manager(), os.getppid())
    here.start()
    other.start()
    yield here, other
    here.stop()
    other.stop()


def test_ready_only_when_both_are_ready_on_one_model(pair, tmp_path):
    here, other = pair
    assert here.not_ready_reason() is None
    other.manager._current = None
    other.write_state()
    assert "model loading" in here.not_ready_reason()
    other.manager._current = Model(1)
    other.write_state()
    assert "different models" in here.not_ready_reason()
    other.stop()
    assert here.not_ready_reason() == "1 of 2 workers up"


def test_a_killed_worker_not_yet_reaped_counts_as_gone(tmp_path):
    """kill -9 leaves a zombie until the supervisor reaps it; its last state said ready, and a signal still
    reaches it: readiness must not count it."""
    here = worker(tmp_path, Manager(), os.getpid())
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        other = worker(tmp_path, Manager(), dead.pid)
        other.write_state()
        assert here.not_ready_reason() is None
        dead.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{dead.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not become a zombie"
            time.sleep(0.01)
        assert here.not_ready_reason() == "1 of 2 workers up"
    finally:
        dead.kill()
        dead.wait()


def test_a_reload_reaches_the_other_worker_and_a_later_one_starts_on_it(pair, tmp_path):
    here, other = pair
    model, workers = here.reload(1)
    assert model.version == 1 and other.manager._current == Model(1)
    assert sorted(w["pid"] for w in workers) == sorted([os.getpid(), os.getppid()])
    assert all(w["version"] == "1" and w["ready"] for w in workers)
    replacement = worker(tmp_path, Manager(_current=None), os.getppid())
    replacement.adopt_target()
    assert replacement.manager.start_version == 1 and replacement.generation == here.generation == 1


def test_a_refused_reload_publishes_nothing(pair, tmp_path):
    here, other = pair
    here.manager.fails = "refused"
    with pytest.raises(MemoryError):
        here.reload(1)
    assert not (tmp_path / "model_target.json").exists() and other.manager._current == Model(2)


def test_a_worker_that_cannot_follow_is_named_without_server_paths(pair, tmp_path):
    here, other = pair
    other.manager.fails = "no room for /srv/models/pneumonia/1"
    with pytest.raises(ReloadIncompleteError) as incomplete:
        here.reload(1)
    message = incomplete.value.message
    assert f"worker {os.getppid()} failed: MemoryError: no room for <model store>/pneumonia/1" in message
    assert "/srv/models" not in message
    assert {w["version"] for w in incomplete.value.details["workers"]} == {"1", "2"}
    assert "different models" in here.not_ready_reason()
    other.manager.fails = None
    other._apply(json.loads((tmp_path / "model_target.json").read_text()))  # what each poll does
    assert other.manager._current == Model(2), "a failed generation is not retried on every poll"


def test_readiness_stays_green_while_a_reload_goes_through_and_not_after_a_failure(pair, tmp_path):
    here, other = pair
    other._stop.set()  # the other worker stops following: it keeps serving v2 for now
    other._thread.join()
    here.manager.reload(1)
    (tmp_path / "model_target.json").write_text(json.dumps({"generation": 1, "version": 1, "by": here.pid,
                                                            "published": time.time()}))
    assert here.not_ready_reason() is None, "one worker on v1, one still on v2: a reload in progress"
    other.failed = {"generation": 1, "error": "MemoryError"}
    other.write_state()
    assert "different models" in here.not_ready_reason()
    other.failed = None
    other.write_state()
    (tmp_path / "model_target.json").write_text(json.dumps({"generation": 1, "version": 1, "by": here.pid,
                                                            "published": time.time() - RELOAD_TIMEOUT_S - 1}))
    assert "different models" in here.not_ready_reason(), "not switched in time"


def test_a_worker_still_loading_at_start_up_applies_a_reload_after_its_load(pair, monkeypatch):
    here, other = pair
    other.manager._current = None  # its start-up load is still running: a reload now would be overwritten by it
    monkeypatch.setattr(worker_sync, "RELOAD_TIMEOUT_S", 0.7)
    with pytest.raises(ReloadIncompleteError, match=f"worker {os.getppid()} still serves no model"):
        here.reload(1)
    other.manager._current = Model(2)  # the start-up load finishes: the next poll applies the reload
    deadline = time.monotonic() + 10
    while other.manager._current != Model(1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert other.manager._current == Model(1) and here.not_ready_reason() is None
