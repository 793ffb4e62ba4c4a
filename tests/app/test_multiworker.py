"""``cxr-serve`` with two worker processes, as real processes: one service for the whole module (each start loads
the model in every worker). Metrics add up whichever worker is scraped, a reload reaches both workers, readiness
waits for both, one worker serves the DICOM port, the audit trail has one record per answer, ``kill -9`` of a
worker is survived, and the rate limit holds per caller across workers."""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from app_harness import ServiceProcess, free_port, start_service_process
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from pynetdicom.sop_class import Verification

pytestmark = pytest.mark.slow

READER = "reader-key-0123456789abcdef"  # legacy keys: every scope, one rate-limit bucket each
BURST = "burst-key-0123456789abcdef"
RATE = 60  # per minute, per caller
ACCESS = re.compile(r"cxr\.access\[(\d+)\]: (\S+) ")  # "<logger>[pid]: <request id> ..."


@dataclass
class Service:
    process: ServiceProcess
    audit: Path
    dicom_port: int
    image: bytes

    def post(self, path: str, key: str = READER, **kwargs: object) -> httpx.Response:
        # a fresh connection per request: the kernel hashes each to one worker's socket (app/listener.py)
        return httpx.post(self.process.url + path, headers={"Authorization": f"Bearer {key}"}, timeout=60,
                          **kwargs)

    def predict(self, count: int, threads: int = 4) -> list[httpx.Response]:
        with ThreadPoolExecutor(threads) as pool:  # concurrent, so both workers take some
            return list(pool.map(lambda _: self.post("/predict", files={"file": ("x.png", self.image)}),
                                 range(count)))

    def ready(self) -> httpx.Response:
        return httpx.get(self.process.url + "/health/ready", timeout=30)

    def predict_count(self) -> float:
        text = httpx.get(self.process.url + "/metrics", timeout=30).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "cxr_http_requests_total" and s.labels.get("route") == "/predict"
                   and s.labels.get("status") == "200")

    def pids_of(self, request_ids: set[str]) -> set[int]:
        """The workers that answered these requests, from the access log."""
        return {int(pid) for pid, rid in ACCESS.findall(self.process.log_text()) if rid in request_ids}


def echo(port: int) -> int:
    """C-ECHO to the DICOM node: its status (0 = success)."""
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR_SERVE")
    assert assoc.is_established, "nobody serves the DICOM port"
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


@pytest.fixture(scope="module")
def service(tmp_path_factory, fullres_images) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("multiworker")
    env = {**os.environ, "CXR_WORKERS": "2", "CXR_DEVICE": "cpu", "CXR_GATE": "off", "CXR_RUNTIME": "keras",
           "CXR_MAX_BATCH_SIZE": "4", "CXR_LOG_LEVEL": "info", "TF_CPP_MIN_LOG_LEVEL": "2",
           "CXR_API_KEYS": f"{READER},{BURST}", "CXR_RATE_LIMIT": f"{RATE}/minute",
           "CXR_AUDIT_PATH": str(folder / "audit.db"), "CXR_DICOM_PORT": str(free_port()),
           # a destination nobody listens on: no image is sent here, the node only has to bind its port
           "CXR_DICOM_DESTINATION_HOST": "127.0.0.1", "CXR_DICOM_DESTINATION_PORT": str(free_port()),
           "CXR_DICOM_DESTINATION_AE_TITLE": "NOBODY"}
    for name in ("CXR_MODEL_STORE", "CXR_DECODE_THREADS", "TF_NUM_INTRAOP_THREADS"):
        env.pop(name, None)  # the shipped model; the supervisor shares the cores out
    process = start_service_process(folder / "server.log", env)
    try:
        process.wait_for("/health/ready", timeout=240)
        yield Service(process, folder / "audit.db", int(env["CXR_DICOM_PORT"]), fullres_images[0].read_bytes())
    finally:
        code = process.stop()
    log = process.log_text()
    assert code == 0, log[-3000:]
    assert "Traceback" not in log


def test_ready_only_with_both_workers_on_one_model_and_one_dicom_listener(service):
    body = service.ready().json()
    assert body["status"] == "ready"
    workers = body["workers"]
    assert len(workers) == 2 and len({w["pid"] for w in workers}) == 2
    assert all(w["ready"] and w["version"] == body["model"]["version"] for w in workers)
    assert sorted(w["dicom_listener"] for w in workers) == [False, True], "exactly one worker binds the port"
    assert httpx.get(service.process.url + "/v2/health/ready", timeout=30).json() == {"ready": True}
    assert echo(service.dicom_port) == 0
    log = service.process.log_text()
    assert "2 worker process(es): CXR_WORKERS=2" in log
    assert "a socket per worker (SO_REUSEPORT" in log
    assert "CXR_DECODE_THREADS=" in log and "TF_NUM_INTRAOP_THREADS=" in log


def test_metrics_count_every_workers_requests_whichever_worker_is_scraped(service):
    before = service.predict_count()
    answers = service.predict(12)
    assert [r.status_code for r in answers] == [200] * 12
    answered_by = service.pids_of({r.headers["X-Request-ID"] for r in answers})
    assert len(answered_by) == 2, f"both workers should have answered some of 12 concurrent requests: {answered_by}"
    for _ in range(6):  # scrapes land on either worker; each sees the total
        assert service.predict_count() == before + 12
    text = httpx.get(service.process.url + "/metrics", timeout=30).text
    assert re.search(r"^cxr_ready 1\.0$", text, re.M), "every live worker ready"
    assert "cxr_ready{" not in text, "gauges are combined, not one series per process"


def test_a_reload_reaches_every_worker_and_a_refused_one_reaches_none(service):
    before = service.ready().json()["model"]["version"]
    target = "1" if before != "1" else "2"
    refused = service.post("/admin/reload", json={"version": 99})
    assert refused.status_code == 404
    assert {w["version"] for w in service.ready().json()["workers"]} == {before}

    with ThreadPoolExecutor(1) as pool:  # readiness polled all through the reload: it stays green
        done = threading.Event()
        probes = pool.submit(lambda: [service.ready().status_code for _ in iter(done.is_set, True)])
        reloaded = service.post("/admin/reload", json={"version": int(target)})
        done.set()
        statuses = probes.result()
    assert reloaded.status_code == 200, reloaded.text
    assert statuses and set(statuses) == {200}, statuses
    body = reloaded.json()
    assert (body["previous"]["version"], body["active"]["version"]) == (before, target)
    assert len(body["workers"]) == 2 and all(w["version"] == target and w["ready"] for w in body["workers"])
    answers = service.predict(16)
    assert {r.json()["model"]["version"] for r in answers} == {target}
    assert len(service.pids_of({r.headers["X-Request-ID"] for r in answers})) == 2
    ready = service.ready().json()
    assert ready["model"]["version"] == target and {w["version"] for w in ready["workers"]} == {target}


def test_kill_9_of_a_worker_is_replaced_its_counts_stay_and_the_dicom_port_moves(service):
    answers = service.predict(6)
    assert [r.status_code for r in answers] == [200] * 6
    ready = service.ready().json()
    version = ready["model"]["version"]
    # the DICOM listener (both workers answered requests above: whichever dies, it leaves counts behind)
    victim = next(w["pid"] for w in ready["workers"] if w["dicom_listener"])
    total = service.predict_count()
    os.kill(victim, signal.SIGKILL)

    seen_not_ready = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            response = service.ready()
        except httpx.TransportError:  # a connection the kernel gave the dying worker's socket (app/listener.py)
            time.sleep(0.2)
            continue
        body = response.json()
        if response.status_code == 200:
            pids = {w["pid"] for w in body["workers"]}
            if victim not in pids:
                break
        else:
            seen_not_ready = True
            assert body["reason"]
        assert service.process.process.poll() is None, "the supervisor keeps running"
        time.sleep(0.2)
    else:
        pytest.fail(f"no replacement for worker {victim}:\n{service.process.log_text()[-3000:]}")
    assert seen_not_ready, "readiness is red while the replacement loads"
    workers = body["workers"]
    assert len(workers) == 2 and all(w["ready"] and w["version"] == version for w in workers), \
        "the replacement serves the reloaded version, not CXR_MODEL_VERSION"
    assert sum(w["dicom_listener"] for w in workers) == 1, "another worker took the DICOM port over"
    assert echo(service.dicom_port) == 0
    assert service.predict_count() == total, "the dead worker's counts are kept"
    answers = service.predict(6)
    assert [r.status_code for r in answers] == [200] * 6
    assert {r.json()["model"]["version"] for r in answers} == {version}
    assert service.predict_count() == total + 6


def test_a_burst_of_connections_is_shared_out_even_while_one_worker_cannot_accept(service):
    """Each worker listens on a socket of its own (SO_REUSEPORT, app/listener.py): the kernel hashes each new
    connection to one of them, whichever worker is awake. With one shared socket the awake worker took them all
    (here: the other is stopped while the connections open). Runs after the kill -9: the replacement is in too."""
    workers = [w["pid"] for w in service.ready().json()["workers"]]
    assert len(workers) == 2
    host, port = service.process.url.removeprefix("http://").rsplit(":", 1)
    os.kill(workers[0], signal.SIGSTOP)
    try:
        connections = [socket.create_connection((host, int(port)), timeout=60) for _ in range(16)]
        time.sleep(0.5)  # the awake worker accepts every connection it is offered
    finally:
        os.kill(workers[0], signal.SIGCONT)
    request_ids = set()
    for connection in connections:
        with connection:
            connection.sendall(b"GET /health/live HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            answer = b"".join(iter(lambda c=connection: c.recv(65536), b""))
            assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
            request_ids.add(re.search(rb"(?im)^x-request-id: *(\S+)", answer).group(1).decode())
    assert service.pids_of(request_ids) == set(workers), "each worker answers some of 16 connections"


def test_the_rate_limit_holds_per_caller_across_workers(service):
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:  # no file: allowed requests answer 422, limited ones 429
        statuses = list(pool.map(lambda _: service.post("/predict", key=BURST).status_code, range(150)))
    refill = (time.monotonic() - started) * RATE / 60
    allowed = statuses.count(422)
    assert statuses.count(429) + allowed == len(statuses)
    assert RATE <= allowed <= RATE + refill + 1, f"{allowed} allowed of {len(statuses)}"
    assert service.post("/predict", files={"file": ("x.png", service.image)}).status_code == 200, \
        "another caller keeps its own bucket"


def test_every_answer_has_exactly_one_audit_record(service):
    answers = service.predict(8)
    ids = [r.headers["X-Request-ID"] for r in answers]
    assert [r.status_code for r in answers] == [200] * 8
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # buffered writers: a second or so
        with sqlite3.connect(service.audit) as db:
            rows = db.execute(f"SELECT request_id FROM audit_records WHERE request_id IN ({','.join('?' * len(ids))})",
                              ids).fetchall()
        if len(rows) >= len(ids):
            break
        time.sleep(0.3)
    assert sorted(r[0] for r in rows) == sorted(ids)
    with sqlite3.connect(service.audit) as db:
        duplicates = db.execute("SELECT request_id, COUNT(*) FROM audit_records GROUP BY request_id "
                                "HAVING COUNT(*) > 1").fetchall()
    assert duplicates == []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) != 2, reason="the service pins its two workers only where the "
                    "affinity mask holds exactly two CPUs")
def test_each_worker_replacements_included_runs_every_thread_on_a_cpu_of_its_own(service):
    """Runs last: the worker that replaced the one killed above has taken its predecessor's CPU."""
    workers = [w["pid"] for w in service.ready().json()["workers"]]

    def masks(pid: int) -> dict[str, str]:
        return {task.name: re.search(r"^Cpus_allowed_list:\s*(\S+)", (task / "status").read_text(), re.M)[1]
                for task in Path(f"/proc/{pid}/task").iterdir()}

    deadline = time.monotonic() + 5  # idle workers keep to their CPU (a worker alone with work may spread)
    while True:
        placed = {pid: masks(pid) for pid in workers}
        # one CPU per worker for all its threads (the every-core interpreter aside: CXR_RUNTIME=keras, none)
        cpus = sorted(next(iter(set(m.values()))) for m in placed.values() if len(set(m.values())) == 1)
        if cpus == sorted(str(c) for c in os.sched_getaffinity(0)) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert cpus == sorted(str(c) for c in os.sched_getaffinity(0)), placed
    assert "each worker on a CPU of its own" in service.process.log_text()
