"""Two real ``cxr-serve`` replicas behind Debian's nginx, one real PostgreSQL audit store, 64 connections of load:
a rolling restart (SIGTERM one, wait until it is ready again, then the other) and a ``kill -9`` of one replica
fail no request (nginx retries on the other replica: docs/operations.md, "Replicas behind a load balancer");
in durable mode every answered request has its record, and /monitoring of either replica sees all of them.

The drain settings are the Kubernetes manifests' (CXR_GRACEFUL_TIMEOUT 30, CXR_AUDIT_FLUSH_TIMEOUT_S 3), and the
SIGTERM'd replica must be gone well inside their terminationGracePeriodSeconds less the preStop sleep."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import httpx
import pytest
import yaml
from audit_nginx import NGINX, Nginx
from audit_pg import fresh_pg_database
from audit_process import LoadRunner, start_service
from sqlalchemy import func, select

from app.audit import store
from app.audit.models import AuditRecord

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# each of the 64 connections pauses between requests: load on both replicas, yet CPU left on a 2-core machine
# for the restarted one to start (at full speed a restart takes minutes there)
PAUSE_S = 0.5
K8S = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "base"

def manifest_drain() -> tuple[dict[str, str], float]:
    """The manifests' drain settings, and the seconds SIGTERM may take (grace period less the preStop sleep)."""
    config = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    pod = yaml.safe_load((K8S / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    pre_stop = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    env = {name: config[name] for name in ("CXR_GRACEFUL_TIMEOUT", "CXR_AUDIT_FLUSH_TIMEOUT_S")}
    return env, pod["terminationGracePeriodSeconds"] - pre_stop

def wait_served_by(nginx: Nginx, port: int, since: int, count: int = 10, timeout: float = 60.0) -> None:
    """Until ``count`` requests logged after entry ``since`` were answered 200 by the replica on ``port``."""
    deadline = time.monotonic() + timeout
    address = f"127.0.0.1:{port}"
    while sum(status == "200" and tried[-1] == address for status, tried, _ in nginx.upstream_log()[since:]) < count:
        assert time.monotonic() < deadline, f"nginx sent no traffic to {address} in {timeout} s"
        time.sleep(0.2)


def records(url: str) -> tuple[collections.Counter[str], int]:
    """Records per request id, and the number of answers."""
    engine = store.make_engine(store.resolve_url(url, Path()))
    try:
        with engine.connect() as connection:
            ids = collections.Counter(connection.execute(select(AuditRecord.request_id)).scalars())
            answers = connection.execute(select(func.count()).select_from(AuditRecord)
                                         .where(AuditRecord.outcome == "answer")).scalar_one()
        return ids, answers
    finally:
        engine.dispose()

def test_rolling_restart_and_kill_9_behind_nginx(postgres, shipped_model: Path, xray_224_dir: Path,
                                                 tmp_path: Path) -> None:
    if not Path(NGINX).exists():
        pytest.skip("nginx not found (apt-get install nginx-light)")
    if not postgres.running():
        postgres.start()
    url = fresh_pg_database(postgres)
    engine = store.make_engine(store.resolve_url(url, Path()))
    store.upgrade(engine)  # once, before the replicas start (`cxr-audit migrate`), as docs/operations.md says
    engine.dispose()
    drain, sigterm_bound = manifest_drain()
    env = {"CXR_AUDIT_URL": url, "CXR_AUDIT_DURABLE": "true", **drain}
    data = sorted((xray_224_dir / "test" / "NORMAL").glob("*.jpeg"))[1].read_bytes()
    replicas = [start_service(tmp_path / f"replica{i}.log", **env) for i in range(2)]
    nginx = Nginx(tmp_path / "nginx", [r.port for r in replicas])
    try:
        for replica in replicas:
            replica.wait_ready()
        nginx.start()

        # 1. rolling restart under load: SIGTERM one, wait until it is ready again, then the other
        with LoadRunner(nginx.url, data, connections=64, pause_s=PAUSE_S) as load:
            load.wait_answers(64)
            for i, old in enumerate(replicas):
                code, took = old.terminate(sigterm_bound + 10)
                assert code == 0 and took < sigterm_bound, (code, took, old.log_text()[-2000:])
                replicas[i] = start_service(old.log, port=old.port, **env)
                replicas[i].wait_ready()
                # ready is not enough: nginx took it out (fail_timeout) when it answered 503 while loading, so
                # the next one is stopped only once the balancer sends it traffic again
                wait_served_by(nginx, replicas[i].port, since=len(nginx.upstream_log()))
            rolling = load.stop()
        assert not rolling.failed, (rolling.statuses, rolling.failed[:10], nginx.error_log()[-2000:])
        served = collections.Counter(tried[-1] for status, tried, _ in nginx.upstream_log() if status == "200")
        assert len(served) == 2, served  # both replicas answered

        # every answer has its record, and either replica's /monitoring counts them all
        stored, answers = records(url)
        assert all(stored[rid] >= 1 for rid in rolling.answered)
        for replica in replicas:
            figures = httpx.get(f"{replica.url}/monitoring", timeout=60).json()
            assert figures["answers"] == answers, (figures["answers"], answers)
        assert answers >= len(rolling.answered)

        # 2. kill -9 of one replica under load: nginx retries what was in flight on the other one
        with LoadRunner(nginx.url, data, connections=64, pause_s=PAUSE_S) as load:
            load.wait_answers(64)
            replicas[0].kill()
            load.wait_answers(64)
            killed = load.stop()
        assert not killed.failed, (killed.statuses, killed.failed[:10], nginx.error_log()[-2000:])
        stored, _ = records(url)
        missing = [rid for rid in killed.answered if stored[rid] == 0]
        assert not missing, f"{len(missing)} answered requests without a record"
        # a request answered by the killed replica's commit and then retried is recorded by both (same id)
        assert sum(1 for rid in killed.answered if stored[rid] > 1) <= 64
        retried = sum(1 for _, tried, _ in nginx.upstream_log() if len(tried) > 1)
        print(f"rolling restart: {len(rolling.answered)} answered, kill -9: {len(killed.answered)} answered, "
              f"{retried} requests retried on the other replica")
    finally:
        nginx.stop()
        for replica in replicas:
            if replica.process.poll() is None:
                replica.terminate(30)

def test_the_manifests_drain_fits_their_grace_period() -> None:
    drain, sigterm_bound = manifest_drain()
    assert float(drain["CXR_GRACEFUL_TIMEOUT"]) + float(drain["CXR_AUDIT_FLUSH_TIMEOUT_S"]) < sigterm_bound
