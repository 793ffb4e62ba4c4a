"""Domain errors and the ONE table that maps each to an HTTP status and the error body.

The core (decode, preprocess, batcher, model) raises these; only this module knows about HTTP.
Body: ``{"error": {"code": "...", "message": "...", "request_id": "..."}}``. No stack trace ever leaves.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_store.imaging import DecodeError, ImageTooLargeError, UnsupportedFormatError
from model_store.preprocessing import PreprocessingError

log = logging.getLogger("cxr.errors")


class ServiceError(Exception):
    """Base of the errors the core raises on purpose; ``code`` is the stable machine-readable name."""

    code = "internal_error"
    status = 500

    def __init__(self, message: str, *, retry_after: float | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.details = details  # machine-readable extras, sent as error.details (e.g. the gate score)


class UploadTooLargeError(ServiceError):
    code, status = "upload_too_large", 413


class InvalidInputError(ServiceError):
    code, status = "invalid_input", 422


class TooManyFilesError(ServiceError):
    code, status = "too_many_files", 413


class NotReadyError(ServiceError):
    code, status = "not_ready", 503


class OverloadedError(ServiceError):
    code, status = "overloaded", 503


class ModelNotFound(ServiceError):
    code, status = "model_not_found", 404


class UnauthorizedError(ServiceError):
    code, status = "unauthorized", 401


class InferenceError(ServiceError):
    code, status = "inference_failed", 500


class UnknownRequestError(ServiceError):
    """Feedback for a request id the audit trail holds no answer for."""

    code, status = "unknown_request", 404


class AuditUnavailableError(ServiceError):
    """CXR_AUDIT_REQUIRED=true and the audit store is unreachable (or audit is off): no unaudited answer."""

    code, status = "audit_unavailable", 503


class NotAcceptableError(ServiceError):
    """No representation the client accepts (Accept header): JSON, DICOM SR and FHIR are offered."""

    code, status = "not_acceptable", 406


class DicomRequiredError(ServiceError):
    """A DICOM SR answer was asked for a non-DICOM upload (the SR must reference the source study)."""

    code, status = "dicom_required", 415


class UnknownOperatingPointError(ServiceError):
    """A request named an operating point the serving model version does not have; ``details.available``
    lists the names it has."""

    code, status = "unknown_operating_point", 422


class OperatingPointUnavailableError(ServiceError):
    """CXR_OPERATING_POINT names a point the version to load does not have: a reload to it is refused (the
    active version keeps serving), a start-up with it fails."""

    code, status = "operating_point_unavailable", 409


class NotAChestXrayError(ServiceError):
    """The input gate refused the image (a DICOM header rule or the gate model); ``rule`` says which, for
    metrics and the audit trail."""

    code, status = "not_a_chest_xray", 422

    def __init__(self, message: str, *, rule: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, details=details)
        self.rule = rule


# (exception type, HTTP status, code): first match wins, so subclasses come before their bases
ERROR_TABLE: tuple[tuple[type[Exception], int, str], ...] = (
    (ImageTooLargeError, 413, "image_too_large"),
    (UnsupportedFormatError, 415, "unsupported_format"),
    (DecodeError, 400, "undecodable_image"),
    (PreprocessingError, 400, "unusable_image"),
)


def classify(exc: Exception) -> tuple[int, str, str]:
    """(status, code, client-safe message) for any exception."""
    if isinstance(exc, ServiceError):
        return exc.status, exc.code, exc.message
    for kind, status, code in ERROR_TABLE:
        if isinstance(exc, kind):
            return status, code, str(exc)
    return 500, "internal_error", "internal server error; the request id identifies it in the server log"


def count_error(scope: dict[str, Any], code: str, status: int | None = None) -> None:
    """Counts an answered error in the app's metrics (``cxr_errors_total{code}``) and hands it to the audit
    trail (which records it when it refuses a prediction request that no per-image record covers)."""
    state = getattr(scope.get("app"), "state", None)
    metrics = getattr(state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(code).inc()
    audit = getattr(state, "audit", None)
    if audit is not None:
        audit.refused_request(scope, status if status is not None else status_of_code(code), code)


def status_of_code(code: str) -> int:
    """The HTTP status that goes with an error code (for callers that only know the code)."""
    kinds: list[type[ServiceError]] = [ServiceError]
    while kinds:
        kind = kinds.pop()
        if kind.code == code:
            return kind.status
        kinds.extend(kind.__subclasses__())
    return next((status for _, status, name in ERROR_TABLE if name == code), 500)


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "") or ""


def error_body(code: str, message: str, request_id: str, details: dict[str, Any] | None = None
               ) -> dict[str, dict[str, Any]]:
    body: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if details:
        body["details"] = details
    return {"error": body}


def error_response(status: int, code: str, message: str, request_id: str,
                   retry_after: float | None = None, *, headers: dict[str, str] | None = None,
                   details: dict[str, Any] | None = None) -> JSONResponse:
    headers = {**(headers or {}), **({"X-Request-ID": request_id} if request_id else {})}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return JSONResponse(error_body(code, message, request_id, details), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception) -> JSONResponse:
        status, code, message = classify(exc)
        request_id = request_id_of(request)
        count_error(request.scope, code, status)
        if status == 503:  # not ready / overloaded: expected states; a traceback per shed request floods the log
            log.warning("request %s refused: 503 %s: %s", request_id, code, message)
        elif status >= 500:
            log.error("request %s failed: %s", request_id, code, exc_info=exc)
        else:
            log.info("request %s rejected: %s %s: %s", request_id, status, code, message)
        return error_response(status, code, message, request_id, getattr(exc, "retry_after", None),
                              details=getattr(exc, "details", None))

    app.add_exception_handler(ServiceError, any_error)  # type: ignore[arg-type]
    for kind, _, _ in ERROR_TABLE:
        app.add_exception_handler(kind, any_error)  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'request'}: {err.get('msg', '')}"
            for err in exc.errors()
        )
        request_id = request_id_of(request)
        count_error(request.scope, "invalid_request", 422)
        log.info("request %s rejected: 422 %s", request_id, problems)
        return error_response(422, "invalid_request", problems or "invalid request", request_id)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc.__cause__, ServiceError):  # FastAPI wraps errors raised while parsing the body
            return await any_error(request, exc.__cause__)
        # FastAPI answers 400 only when it cannot parse the body (multipart over its part caps, broken JSON)
        code = {400: "malformed_body", 404: "not_found", 405: "method_not_allowed",
                413: "upload_too_large"}.get(exc.status_code, "http_error")
        count_error(request.scope, code, exc.status_code)
        return error_response(exc.status_code, code, str(exc.detail), request_id_of(request),
                              headers=exc.headers)
