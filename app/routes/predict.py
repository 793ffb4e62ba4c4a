"""POST /predict and POST /predict/batch: multipart uploads in, predictions out."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, File, Query, Request, Response, UploadFile

from app.dependencies import PredictContextDep
from app.errors import InvalidInputError, ServiceError, TooManyFilesError, UploadTooLargeError, classify
from app.renderers import DICOM, FHIR, JSON, MULTIPART, check_upload, negotiate, render_bytes, render_multipart
from app.schemas import BatchResponse, ErrorResponse, PredictionResponse
from app.settings import Settings
from model_store.imaging import DecodeError

log = logging.getLogger("cxr.predict")
router = APIRouter(tags=["predict"])
# ?explain=true: Grad-CAM in the JSON answer (app/explain.py); the other renderers carry no map
ExplainQuery = Annotated[bool, Query(description="add a Grad-CAM explanation (coarse grid + heatmap overlay PNG) "
                                                 "to each JSON result, or the heatmap Secondary Capture to a "
                                                 "multipart/related DICOM answer; refused images get none")]
# ?operating_point=NAME: which of the version's named thresholds decides (GET /models lists them)
PointQuery = Annotated[str | None, Query(max_length=64, description="the named operating point that decides, e.g. "
                                                                    "screening or balanced (GET /models lists "
                                                                    "the active version's); default: "
                                                                    "CXR_OPERATING_POINT, else the version's own")]

ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 403, 413, 415, 422, 429, 500, 503)}
# /predict answers by Accept: JSON (default), a DICOM SR (DICOM uploads only) or a FHIR DiagnosticReport
PREDICT_RESPONSES: dict[int | str, dict[str, object]] = {
    **ERRORS, 406: {"model": ErrorResponse},
    200: {"content": {DICOM: {"schema": {"type": "string", "format": "binary"}},
                      FHIR: {"schema": {"type": "object"}}},
          "description": "JSON by default; Accept: application/dicom gives a DICOM SR (Comprehensive 3D SR, "
                         "TID 1500) for a DICOM upload, Accept: application/fhir+json a FHIR DiagnosticReport, "
                         "Accept: multipart/related; type=\"application/dicom\" the SR plus, with explain=true, "
                         "the heatmap Secondary Capture it references"},
}


async def read_upload(upload: UploadFile, settings: Settings) -> bytes:
    return checked_upload(await upload.read(settings.max_upload_bytes + 1), settings)


def checked_upload(data: bytes, settings: Settings) -> bytes:
    """The per-file limit and the empty file (the body limit already stopped huge requests while streaming)."""
    if len(data) > settings.max_upload_bytes:
        raise UploadTooLargeError(f"file exceeds the limit of {settings.max_upload_bytes} bytes")
    if not data:
        raise DecodeError("the uploaded file is empty (0 bytes)")
    return data


@router.post("/predict", response_model=PredictionResponse, responses=PREDICT_RESPONSES,
             summary="Classify one chest X-ray (PNG, JPEG, TIFF, BMP, GIF or DICOM)")
async def predict(request: Request, context: PredictContextDep,
                  file: Annotated[UploadFile, File(description="the image file")],
                  *, explain: ExplainQuery = False, operating_point: PointQuery = None
                  ) -> dict[str, object] | Response:
    dataplane, settings, request_id = context.dataplane, context.settings, context.request_id
    # the audit records this answer or refusal exactly once, however the block ends
    async with request.app.state.audit.track_request(request, request_id) as ticket:
        media_type = negotiate(request.headers.get("accept"))  # 406 before any work
        if len((await request.form()).getlist("file")) > 1:  # the parsed form is cached: no second read
            raise InvalidInputError("several files were sent in 'file'; send exactly one, or use /predict/batch")
        data = await read_upload(file, settings)
        if media_type == JSON:
            prediction = await dataplane.predict_image(data, ticket=ticket, explain=explain,
                                                       operating_point=operating_point)
            return prediction.as_dict(request_id)
        check_upload(media_type, data)  # e.g. an SR for a PNG: 415 before the model runs
        if media_type == MULTIPART:
            prediction = await dataplane.predict_image(data, ticket=ticket, explain=explain,
                                                       operating_point=operating_point)
            body, content_type = await asyncio.to_thread(render_multipart, prediction, data, settings.max_pixels)
            return Response(body, headers={"Content-Type": content_type})
        prediction = await dataplane.predict_image(data, ticket=ticket, operating_point=operating_point)
        body = await asyncio.to_thread(render_bytes, media_type, prediction, data, request_id)
        return Response(body, media_type=media_type)


@router.post("/predict/batch", response_model=BatchResponse, responses=ERRORS,
             summary="Classify several X-rays; one result or one error per file, in order")
async def predict_batch(request: Request, context: PredictContextDep,
                        files: Annotated[list[UploadFile], File(description="the image files")],
                        *, explain: ExplainQuery = False, operating_point: PointQuery = None) -> dict[str, object]:
    dataplane, settings, request_id = context.dataplane, context.settings, context.request_id
    if len(files) > settings.max_batch_files:
        raise TooManyFilesError(f"{len(files)} files sent; at most {settings.max_batch_files} per request")
    dataplane.point(dataplane.manager.current, operating_point)  # an unknown name fails the request, not each file

    async def one(index: int, upload: UploadFile) -> dict[str, object]:
        item_id = f"{request_id}-{index}"
        try:
            async with request.app.state.audit.track_request(request, item_id) as ticket:
                data = await read_upload(upload, settings)
                prediction = await dataplane.predict_image(data, ticket=ticket, explain=explain,
                                                           operating_point=operating_point)
        except Exception as exc:  # one bad file must not fail the others
            status, code, message = classify(exc)
            if status >= 500:
                log.error("request %s file %d failed: %s", request_id, index, code, exc_info=exc)
                if isinstance(exc, ServiceError) and status == 503:
                    raise  # overloaded / not ready: the whole request should be retried
            error: dict[str, object] = {"code": code, "message": message, "request_id": item_id}
            if getattr(exc, "details", None):
                error["details"] = exc.details  # type: ignore[attr-defined]
            return {"filename": upload.filename, "status": status, "error": error}
        return {"filename": upload.filename, "status": 200, "result": prediction.as_dict(item_id)}

    results = await asyncio.gather(*(one(i, upload) for i, upload in enumerate(files)))
    return {"request_id": request_id, "results": results}
