"""GET /monitoring: the rolling-window figures (answers, refusals, confirmed performance, drift) as JSON."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from sqlalchemy.exc import SQLAlchemyError

from app.audit.schemas import MonitoringResponse
from app.errors import AuditUnavailableError
from app.schemas import ErrorResponse

router = APIRouter(tags=["audit"])


@router.get("/monitoring", response_model=MonitoringResponse,
            responses={status: {"model": ErrorResponse} for status in (401, 403, 429, 503)},
            summary="Live performance over the rolling window (CXR_AUDIT_WINDOW_HOURS) of the active model")
async def monitoring(request: Request) -> dict[str, object]:
    audit = request.app.state.audit
    audit.require_store()
    try:
        return await asyncio.to_thread(audit.stats)
    except SQLAlchemyError as exc:
        raise AuditUnavailableError(f"the audit store cannot be reached ({type(exc).__name__}); retry later",
                                    retry_after=5) from exc
