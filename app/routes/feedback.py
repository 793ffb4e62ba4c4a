"""POST /feedback: a reader confirms (or corrects) an answer; the label feeds the live monitoring."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request

from app.audit.feedback import record_feedback
from app.audit.schemas import FeedbackRequest, FeedbackResponse
from app.schemas import ErrorResponse

log = logging.getLogger("cxr.audit")
router = APIRouter(tags=["audit"])


@router.post("/feedback", response_model=FeedbackResponse, status_code=201,
             responses={status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 422, 503)},
             summary="Record the confirmed label of an answer (history kept; the latest label counts)")
async def feedback(request: Request, body: FeedbackRequest) -> dict[str, object]:
    audit = request.app.state.audit
    engine = audit.require_store()
    recorded = await asyncio.to_thread(record_feedback, engine, audit.writer, body.request_id, body.label,
                                       body.reader_id)
    # the feedback table has no caller column: the log names who changed the live figures
    log.info("feedback for request %s recorded by caller %s", body.request_id, request.state.caller.name)
    return recorded
