"""Liveness (the process answers) and readiness (a prediction would succeed now)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from app.dependencies import ManagerDep
from app.schemas import Health
from app.worker_sync import worker_summary

router = APIRouter(prefix="/health", tags=["health"])


@router.get("/live", response_model=Health, responses={503: {"model": Health}},
            summary="The process is up and can still become ready (503 after a failed model load)")
async def live(manager: ManagerDep) -> JSONResponse:
    if manager.load_error is not None:
        return JSONResponse({"status": "failed", "reason": f"model failed to load: {manager.load_error}"},
                            status_code=503)
    return JSONResponse({"status": "alive"})


def local_not_ready_reason(app: FastAPI) -> str | None:
    """Why this process could not serve a prediction now (None: it could)."""
    reason = app.state.manager.not_ready_reason()
    node = getattr(app.state, "dicom_node", None)  # the DICOM node, where one is configured
    if reason is None and node is not None:
        reason = node.not_ready_reason()
    if reason is None:  # fail-closed audit (CXR_AUDIT_REQUIRED=true): not ready while its store is unreachable
        reason = app.state.audit.not_ready_reason()
    return reason


@router.get("/ready", response_model=Health, responses={503: {"model": Health}},
            summary="Model loaded and warm, batcher running, not shutting down")
async def ready(request: Request, manager: ManagerDep) -> JSONResponse:
    reason = local_not_ready_reason(request.app)
    sync = request.app.state.worker_sync  # several workers: ready only when all of them are, on one model
    workers = None
    if sync is not None:
        states = await asyncio.to_thread(sync.live_states)
        workers = [worker_summary(state) for state in states]
        if reason is None:
            # on the states just read: no second pass over the workers' files
            reason = await asyncio.to_thread(sync.not_ready_reason, states)
    extra = {"workers": workers} if workers is not None else {}
    if reason is not None:
        return JSONResponse({"status": "not_ready", "reason": reason, **extra}, status_code=503)
    return JSONResponse({"status": "ready", "model": manager.current.describe(), **extra})
