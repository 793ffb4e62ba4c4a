"""Keeps the worker processes of one ``cxr-serve`` serving the same model, through files in the run directory.

Each worker writes ``workers/<pid>.json`` (its model, ready flag, the model target generation it applied) and
polls ``model_target.json`` (a stat every ``POLL_S``): a reload is done by the worker that receives it, which
then publishes the new target; the others load it in their sync thread. A worker starting later (a replacement
for one that died) loads the published target, not CXR_MODEL_VERSION. Dead workers are noticed here too: their
state file is removed and their live gauges dropped (app.metrics.mark_process_dead).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.errors import ServiceError
from app.metrics import mark_process_dead, multiprocess_dir
from app.model_manager import ModelManager, ServingModel
from app.rundir import file_lock

log = logging.getLogger("cxr.workers")

POLL_S = 0.3  # a stat per poll: a reload reaches every worker within a poll plus its load time
RELOAD_TIMEOUT_S = 120.0  # loading and warming a model takes ~10 s of CPU; workers load at the same time
WORKER_COUNT_ENV = "CXR_WORKER_COUNT"  # how many workers the supervisor runs: readiness waits for all of them


class ReloadIncompleteError(ServiceError):
    code, status = "reload_incomplete", 500


def alive(pid: int) -> bool:
    """Whether ``pid`` runs. A worker killed outright stays a zombie until the supervisor reaps it (up to a
    second or more under load), and a signal still reaches a zombie: its state in /proc tells."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc here (not Linux), or it ended meanwhile: the next look tells
    return state not in ("Z", "X")  # zombie, or dead


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically (rename), so a reader never sees half a file."""
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


class WorkerSync:
    def __init__(self, folder: Path, manager: ModelManager, expected: int | None = None,
                 not_ready: Callable[[], str | None] | None = None) -> None:
        self.manager = manager
        # this worker's whole readiness (model, DICOM node, fail-closed audit); the model's alone by default
        self.not_ready = not_ready or manager.not_ready_reason
        self.pid = os.getpid()
        self.states = folder / "workers"
        self.states.mkdir(exist_ok=True)
        self.target_path = folder / "model_target.json"
        self.reload_lock = folder / "reload.lock"
        self.expected = expected
        self.generation = 0  # the model target this worker serves
        self.failed: dict[str, Any] | None = None  # a target it could not apply
        self.extra: Callable[[], dict[str, Any]] | None = None  # more to report, e.g. the DICOM listener
        self._written: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_reap = 0.0

    @classmethod
    def from_env(cls, folder: Path, manager: ModelManager,
                 not_ready: Callable[[], str | None] | None = None) -> WorkerSync:
        count = os.environ.get(WORKER_COUNT_ENV, "")
        return cls(folder, manager, int(count) if count.isdigit() else None, not_ready)

    # -- life cycle ------------------------------------------------------------------------------------
    def adopt_target(self) -> None:
        """Before the start-up load: a published target (a reload before this worker started) wins."""
        target = _read_json(self.target_path)
        if target is not None:
            self.generation = int(target["generation"])
            self.manager.start_version = int(target["version"])
            log.info("worker %d starts with the published model v%s (reload generation %d)", self.pid,
                     target["version"], self.generation)

    def start(self) -> None:
        self.write_state()
        self._thread = threading.Thread(target=self._run, name="worker-sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        (self.states / f"{self.pid}.json").unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._apply(_read_json(self.target_path))  # a small file in the page cache: microseconds
                self.write_state()
                if time.monotonic() - self._last_reap > 2.0:
                    self.reap()
            except Exception:  # the thread must outlive any one bad poll
                log.exception("worker %d: model sync poll failed", self.pid)

    def _apply(self, target: dict[str, Any] | None) -> None:
        if target is None or int(target["generation"]) <= self.generation:
            return
        if self.failed is not None and self.failed["generation"] == int(target["generation"]):
            return  # tried once and said so; the next reload publishes a new generation
        if self.manager.loaded is None:
            return  # the start-up load first (it would replace the reloaded model); the next poll applies it
        generation, version = int(target["generation"]), int(target["version"])
        log.info("worker %d: loading model v%d (reload generation %d, published by worker %s)", self.pid,
                 version, generation, target.get("by"))
        try:
            self.manager.reload(version)
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}".replace(str(self.manager.registry.root), "<model store>")
            log.error("worker %d could not load model v%d: %s", self.pid, version, detail)
            with self._lock:
                self.failed = {"generation": generation, "error": detail}
            return
        with self._lock:
            self.generation, self.failed = generation, None

    # -- state files -----------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        model = self.manager.loaded
        reason = self.not_ready()
        with self._lock:
            return {"pid": self.pid, "ready": reason is None, "reason": reason, "generation": self.generation,
                    "failed": self.failed,
                    "model": model.describe() if model is not None else None,
                    **(self.extra() if self.extra is not None else {})}

    def write_state(self) -> None:
        with self._write_lock:  # the sync thread and request threads: one writer of this worker's file at a time
            state = self.state()
            if state != self._written:
                _write_json(self.states / f"{self.pid}.json", state)
                self._written = state

    def live_states(self) -> list[dict[str, Any]]:
        """Every live worker's state, this one's fresh; dead workers' files are removed on the way."""
        self.write_state()
        states = []
        for path in sorted(self.states.glob("*.json")):
            state = _read_json(path)
            if state is None:
                continue
            if not alive(int(state["pid"])):
                self._forget(int(state["pid"]))
                continue
            states.append(state)
        return states

    def reap(self) -> None:
        """Forgets dead workers: state files, and metric files of live gauges (a worker killed with -9 never
        says goodbye; uvicorn starts a replacement with a new pid)."""
        self._last_reap = time.monotonic()
        self.live_states()
        folder = multiprocess_dir()
        if folder is None:
            return
        pids = {path.stem.rsplit("_", 1)[-1] for path in folder.glob("gauge_live*.db")}
        for pid in pids:
            if pid.isdigit() and not alive(int(pid)):
                self._forget(int(pid))

    def _forget(self, pid: int) -> None:
        log.info("worker %d is gone; forgetting its state and live gauges", pid)
        (self.states / f"{pid}.json").unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            mark_process_dead(pid)

    # -- readiness -------------------------------------------------------------------------------------
    def not_ready_reason(self, states: list[dict[str, Any]] | None = None) -> str | None:
        """None when every worker is ready with the same model (and all the supervisor runs are up); ``states``:
        :meth:`live_states` where the caller has just read them."""
        states = self.live_states() if states is None else states
        waiting = [f"worker {s['pid']}: {s['reason']}" for s in states if not s["ready"]]
        if waiting:
            return "not every worker is ready (" + "; ".join(waiting) + ")"
        if self.expected is not None and len(states) < self.expected:
            return f"{len(states)} of {self.expected} workers up"
        models = {_model_key(s) for s in states}
        if len(models) > 1 and not self._switching(states):
            return "workers serve different models (" + "; ".join(
                f"worker {s['pid']}: {_model_key(s)}" for s in states) + ")"
        return None

    def _switching(self, states: list[dict[str, Any]]) -> bool:
        """A reload is on its way through the workers (published less than RELOAD_TIMEOUT_S ago, none failed it):
        each worker serves the old or the new version, both ready, as one process does while it switches, so
        readiness stays green instead of taking every replica out of service during a reload."""
        target = _read_json(self.target_path)
        if target is None or time.time() - float(target.get("published", 0)) > RELOAD_TIMEOUT_S:
            return False
        return not any((s.get("failed") or {}).get("generation") == target["generation"] for s in states)

    # -- reload everywhere -----------------------------------------------------------------------------
    def reload(self, version: int | str | None) -> tuple[ServingModel, list[dict[str, Any]]]:
        """Reloads here (which raises, publishing nothing, when the version is refused), publishes the new
        target, then waits until every live worker serves it; ReloadIncompleteError names those that did not."""
        with file_lock(self.reload_lock):  # one reload at a time across the workers
            new = self.manager.reload(version)
            current = _read_json(self.target_path)
            generation = max(self.generation, int(current["generation"]) if current else 0) + 1
            with self._lock:
                self.generation, self.failed = generation, None
            _write_json(self.target_path, {"generation": generation, "version": new.version, "by": self.pid,
                                           "published": time.time()})
            log.info("worker %d published model v%d (reload generation %d)", self.pid, new.version, generation)
            return new, self._wait(generation, new, RELOAD_TIMEOUT_S)

    def _wait(self, generation: int, new: ServingModel, timeout: float) -> list[dict[str, Any]]:
        want = (str(new.version), new.artifact.sha256)
        deadline = time.monotonic() + timeout
        while True:
            states = self.live_states()
            failed = [s for s in states if (s.get("failed") or {}).get("generation") == generation]
            behind = [s for s in states if s not in failed and not (
                s["generation"] >= generation and s["ready"] and _version_of(s) == want)]
            missing = self.expected is not None and len(states) < self.expected
            if not (failed or behind or missing):
                return [worker_summary(s) for s in states]
            if failed or time.monotonic() >= deadline:
                break
            time.sleep(POLL_S / 3)
        problems = [f"worker {s['pid']} failed: {s['failed']['error']}" for s in failed]
        problems += [f"worker {s['pid']} still serves {_model_key(s)} ({s['reason'] or 'loading'})" for s in behind]
        if missing:
            problems.append(f"only {len(states)} of {self.expected} workers are up")
        waited = "" if failed else f" after {timeout:.0f} s"
        raise ReloadIncompleteError(f"model v{new.version} is active in worker {self.pid}, but not everywhere"
                                    f"{waited}: " + "; ".join(problems),
                                    details={"workers": [worker_summary(s) for s in states]})


def _model_key(state: dict[str, Any]) -> str:
    model = state.get("model")
    return f"{model['name']} v{model['version']} ({model['sha256'][:12]})" if model else "no model"


def _version_of(state: dict[str, Any]) -> tuple[str, str] | None:
    model = state.get("model")
    return (model["version"], model["sha256"]) if model else None


def worker_summary(state: dict[str, Any]) -> dict[str, Any]:
    """What clients see of a worker's state (no paths, no model store)."""
    model = state.get("model") or {}
    summary = {"pid": state["pid"], "version": model.get("version"), "ready": state["ready"]}
    if "dicom_listener" in state:
        summary["dicom_listener"] = state["dicom_listener"]
    return summary
