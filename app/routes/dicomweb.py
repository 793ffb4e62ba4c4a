"""POST /dicomweb/studies: a STOW-RS receiver (PS3.18 10.5), the DICOM node's second way in.

A PACS or router (Orthanc's ``/dicom-web/servers/<name>/stow``, dcm4chee, a cloud imaging service) sends CR/DX
instances as ``multipart/related; type="application/dicom"``. Each one goes through the node exactly as a
C-STORE'd image does (queue, gate, model, Grad-CAM, SR + heatmap to the configured destinations). The answer is
the PS3.18 response: ReferencedSOPSequence for the instances taken, FailedSOPSequence (with a failure reason) for
those refused. A full queue answers 503 with Retry-After before any work, never a wait.
"""

from __future__ import annotations

import asyncio
import io
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydicom import dcmread

from app.dependencies import SettingsDep
from app.dicomweb import (
    CANNOT_UNDERSTAND,
    DICOM,
    DICOM_JSON,
    MULTIPART,
    PROCESSING_FAILURE,
    SOP_CLASS_NOT_SUPPORTED,
    decode_multipart,
    reference,
    stow_response,
)
from app.errors import NotReadyError, OverloadedError, ServiceError
from app.schemas import ErrorResponse

log = logging.getLogger("cxr.dicomweb")
router = APIRouter(tags=["dicomweb"])
RETRY_AFTER_S = 2.0


class DicomwebDisabledError(ServiceError):
    code, status = "dicomweb_disabled", 404


def _header(data: bytes) -> tuple[str, str] | None:
    """(SOP Class UID, SOP Instance UID) of a Part 10 instance; None where they cannot be read."""
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except Exception:  # anything pydicom raises on a broken file means the same: not a readable instance
        return None


@router.post("/dicomweb/studies", summary="STOW-RS: store CR/DX instances; SR + heatmap go to the destinations",
             responses={status: {"model": ErrorResponse} for status in (401, 404, 413, 415, 422, 503)} | {
                 200: {"content": {DICOM_JSON: {}}, "description": "all instances taken (PS3.18 response)"},
                 202: {"content": {DICOM_JSON: {}}, "description": "some taken, some refused (FailedSOPSequence)"},
                 409: {"content": {DICOM_JSON: {}}, "description": "none taken (FailedSOPSequence)"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 f'{MULTIPART}; type="{DICOM}"': {"schema": {"type": "string", "format": "binary"}}}}})
async def store_instances(request: Request, settings: SettingsDep) -> JSONResponse:
    node = request.app.state.dicom_node
    if node is None or not settings.dicomweb_receive:
        raise DicomwebDisabledError("the STOW-RS receiver is off; set CXR_DICOMWEB_RECEIVE=true (with a result "
                                    "destination) to take instances by DICOMweb")
    from app.dicom_node import IMAGE_SOP_CLASSES

    parts = decode_multipart(await request.body(), request.headers.get("content-type"),
                             max_parts=settings.max_batch_files, max_part_bytes=settings.max_upload_bytes)
    failed: list[dict[str, object]] = []
    taken: list[tuple[bytes, tuple[str, str]]] = []
    for data in parts:
        uids = _header(data)
        if uids is None:
            failed.append(reference("", "", failure=CANNOT_UNDERSTAND))
        elif uids[0] not in IMAGE_SOP_CLASSES:
            failed.append(reference(*uids, failure=SOP_CLASS_NOT_SUPPORTED))
        else:
            taken.append((data, uids))
    if taken:
        outcome = node.admit_many(len(taken))
        if outcome == "queue_full":
            node.metrics.dicom_received.labels("queue_full").inc()
            raise OverloadedError(f"the DICOM queue is full ({settings.dicom_queue_size} images); retry later",
                                  retry_after=RETRY_AFTER_S)
        if outcome != "accepted":
            node.metrics.dicom_received.labels(outcome).inc()
            raise NotReadyError(f"not taking images now ({outcome.replace('_', ' ')}); retry later",
                                retry_after=RETRY_AFTER_S)
    caller = request.client.host if request.client else "unknown"
    outcomes = await asyncio.gather(*(node.process_stow(data, caller) for data, _ in taken))
    stored: list[dict[str, object]] = []
    for (_, uids), refusal in zip(taken, outcomes, strict=True):
        if refusal is None:
            stored.append(reference(*uids))
        else:
            failed.append(reference(*uids, failure=PROCESSING_FAILURE))
    status, body = stow_response(stored, failed)
    log.info("STOW-RS request %s: %d instance(s) taken, %d refused", request.state.request_id, len(stored),
             len(failed))
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON)
