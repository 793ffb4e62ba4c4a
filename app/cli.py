"""``cxr-serve``: run the service with uvicorn, configured from CXR_* settings (flags override)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from app import listener
from app.logs import configure_logging
from app.main import create_app
from app.metrics import multiprocess_dir
from app.model_manager import configured_point_problem
from app.pinning import PIN_ENV, plan_pinning
from app.rundir import METRICS_SUBDIR, RUN_DIR_ENV, created_run_dir
from app.settings import Settings, SettingsError
from app.tls import uvicorn_options
from app.worker_sync import WORKER_COUNT_ENV
from app.workers import SHARED_THREADS, WorkerPlan, plan_workers, share_environment

log = logging.getLogger("cxr.serve")


class Server(uvicorn.Server):
    """Turns readiness red the moment a shutdown signal arrives, before uvicorn starts draining."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        app = self.config.app
        manager = getattr(getattr(app, "state", None), "manager", None)
        if manager is not None:
            manager.begin_shutdown()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn re-raises a captured SIGTERM after its graceful shutdown, so the process dies "killed by
        signal"; a completed drain is a clean exit here (status 0), which orchestrators and tests can check."""
        with super().capture_signals():
            yield
            self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cxr-serve", description="Serve the pneumonia model over HTTP. "
                                     "Every setting comes from CXR_* environment variables (see README); "
                                     "these flags override the most common ones.")
    parser.add_argument("--host", help="overrides CXR_HOST (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="overrides CXR_PORT (default 8000)")
    parser.add_argument("--workers", help="overrides CXR_WORKERS: auto (default) or 1-64")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings.load(**overrides)
    except SettingsError as exc:
        print(f"cxr-serve: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    problem = configured_point_problem(settings)
    if problem is not None:
        print(f"cxr-serve: invalid configuration:\n{problem}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    common = {"host": settings.host, "port": settings.port, "log_config": None, "access_log": False,
              "timeout_keep_alive": settings.timeout_keep_alive,
              "timeout_graceful_shutdown": settings.graceful_timeout, "proxy_headers": True,
              **uvicorn_options(settings.tls_cert, settings.tls_key)}
    if settings.tls_cert is not None:
        log.info("HTTPS on %s:%d (certificate %s, TLS 1.2 or newer)", settings.host, settings.port, settings.tls_cert)
    plan = plan_workers(settings.workers, settings.device, settings.runtime)
    shares = share_environment(plan, dict(os.environ))
    os.environ.update(shares)  # before TensorFlow is imported: it reads TF_NUM_INTRAOP_THREADS once
    os.environ.pop(PIN_ENV, None)  # the supervisor decides it, below
    log.info("%d worker process(es): %s; threads per worker: %s", plan.workers, plan.reason, ", ".join(
        f"{name}={os.environ.get(name)}" + ("" if name in shares else " (set by you)") for name in SHARED_THREADS))
    if plan.workers > 1:
        pinned = plan_pinning(plan.workers, int(os.environ.get("CXR_DECODE_THREADS", "0")), settings.pin_workers)
        if pinned is not None:
            os.environ[PIN_ENV] = pinned
            log.info("each worker on a CPU of its own (CPUs %s; CXR_PIN_WORKERS=false leaves it to the kernel)",
                     pinned)
        return run_workers(plan, common, reuse_port=settings.reuse_port)
    for name in (RUN_DIR_ENV, "PROMETHEUS_MULTIPROC_DIR"):  # one process shares nothing
        os.environ.pop(name, None)
    if "CXR_DECODE_THREADS" in shares:  # the settings were read before the share was known
        settings = settings.model_copy(update={"decode_threads": int(shares["CXR_DECODE_THREADS"])})
    server = Server(uvicorn.Config(create_app(settings), **common))
    server.run()
    return 0


def run_workers(plan: WorkerPlan, common: dict[str, object], *, reuse_port: bool) -> int:
    """Several uvicorn workers, each building its own app (and model) from the environment, which names the run
    directory they share (app.rundir). Set before the workers start, so their prometheus_client imports see it."""
    with created_run_dir() as folder:
        if multiprocess_dir() is not None:
            log.info("PROMETHEUS_MULTIPROC_DIR is replaced by this run's own folder")
        os.environ.update({RUN_DIR_ENV: str(folder), "PROMETHEUS_MULTIPROC_DIR": str(folder / METRICS_SUBDIR),
                           WORKER_COUNT_ENV: str(plan.workers)})
        log.info("the workers share %s (metrics, model state, locks, rate-limit buckets)", folder)
        config = uvicorn.Config("app.main:create_app_from_env", factory=True, workers=plan.workers, **common)
        per_worker = reuse_port and listener.BALANCED
        try:
            sock = listener.group_socket(config.host, config.port, per_worker=per_worker)
        except OSError as exc:  # the address is taken or not ours: said before any worker starts
            log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
            return STARTUP_FAILURE
        address = f"{'https' if config.is_ssl else 'http'}://{config.host}:{sock.getsockname()[1]}"
        if not per_worker:
            log.info("listening on %s, one socket the workers share%s", address,
                     "" if reuse_port else " (CXR_REUSE_PORT=false)")
        elif listener.migrates_queued_connections():
            log.info("listening on %s, a socket per worker (SO_REUSEPORT: the kernel spreads connections)", address)
        else:
            log.info("listening on %s, a socket per worker (SO_REUSEPORT: the kernel spreads connections); a "
                     "worker that dies resets the connections queued to it: net.ipv4.tcp_migrate_req=1 hands "
                     "them to the others", address)
        listener.supervise(config, sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
