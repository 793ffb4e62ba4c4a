"""``create_app(settings)``: the FastAPI application. The model loads in the background after start-up, so
liveness answers at once and readiness says 503 (with the reason) until the model is loaded and warm."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.formparsers import MultiPartParser

from app.access.control import AccessControl
from app.audit import Audit
from app.dataplane import DataPlane
from app.errors import install_error_handlers
from app.fast_predict import FastPredict
from app.metrics import Metrics
from app.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.model_manager import ModelManager
from app.pinning import Placement, pin_worker
from app.routes import include_routers
from app.routes.health import local_not_ready_reason
from app.rundir import run_dir
from app.settings import Settings
from app.worker_sync import WorkerSync

log = logging.getLogger("cxr.app")

MULTIPART_OVERHEAD = 64 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # Starlette spools multipart files over 1 MiB to a temporary file: X-ray uploads must never reach the disk,
    # so every file up to the upload limit stays in memory (the body limit bounds it per request).
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_upload_bytes + 1)
    metrics = Metrics()
    manager = ModelManager(settings, metrics)
    dataplane = DataPlane(settings, manager, metrics)
    pin_worker(dataplane.inflight.slot)  # before the worker starts threads of its own: they inherit its CPU
    placement = Placement(lambda: dataplane.inflight.count, dataplane.inflight.others_busy)
    dataplane.spread = placement.spread_cpus  # spread over every CPU: a decode thread per CPU
    access = AccessControl(settings)
    access.log_start()
    audit = Audit(settings, metrics, access=access)
    dicom_node = None
    if settings.dicom_results_enabled:  # a C-STORE port and/or the STOW-RS receiver
        from app.dicom_node import DicomNode  # pynetdicom is loaded only where a DICOM node is configured

        dicom_node = DicomNode(settings, dataplane, metrics, audit=audit)
    folder = run_dir()  # several workers (cxr-serve): they keep each other's model in step
    sync = WorkerSync.from_env(folder, manager, lambda: local_not_ready_reason(app)) if folder is not None else None
    if sync is not None and dicom_node is not None:
        sync.extra = lambda: {"dicom_listener": dicom_node.listening}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if sync is not None:
            sync.adopt_target()
        loader = threading.Thread(target=manager.load_initial_logged, name="model-loader", daemon=True)
        loader.start()
        audit.start(manager)
        if dicom_node is not None:
            dicom_node.start(asyncio.get_running_loop())
        if sync is not None:
            sync.start()
        placing = asyncio.create_task(placement.watch()) if placement.active else None
        try:
            yield
        finally:
            if placing is not None:
                placing.cancel()
            if dicom_node is not None:  # first: its accepted images still need the model
                await asyncio.to_thread(dicom_node.stop, settings.graceful_timeout)
            # blocking drains, kept off the event loop so responses still in flight can be sent
            await asyncio.to_thread(manager.shutdown)
            await asyncio.to_thread(dataplane.close)
            # last: the answers drained above are recorded too
            await asyncio.to_thread(audit.close, settings.audit_flush_timeout_s)
            if sync is not None:
                await asyncio.to_thread(sync.stop)

    app = FastAPI(title="cxr-serve", version="0.1.0", lifespan=lifespan,
                  description="Pneumonia screening for chest X-rays. Decision support for qualified readers; "
                              "not a diagnosis.")
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.manager = manager
    app.state.dataplane = dataplane
    app.state.audit = audit
    app.state.access = access
    app.state.dicom_node = dicom_node
    app.state.worker_sync = sync
    install_error_handlers(app)
    include_routers(app)

    def body_limit(path: str) -> int:
        files = settings.max_batch_files if path.endswith(("/batch", "/infer", "/dicomweb/studies")) else 1
        return settings.max_upload_bytes * files + MULTIPART_OVERHEAD

    app.add_middleware(FastPredict, fastapi_app=app)  # innermost: inside the body limit
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID"])
    # outermost: sees every response
    app.add_middleware(RequestContextMiddleware, metrics=metrics, access_log=settings.access_log,
                       inflight=dataplane.inflight)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for ``uvicorn --factory`` and multi-worker runs."""
    from app.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format, pid=run_dir() is not None)
    return create_app(settings)
