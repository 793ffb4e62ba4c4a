"""The Open Inference Protocol (KServe v2 REST) under /v2, so standard clients (tritonclient, KServe) work.

Requests go through the same data plane (and batcher) as /predict. Inputs: ``image`` (BYTES, one encoded file
per element: raw in binary mode, base64 strings in JSON mode) or ``input`` (FP32, already preprocessed, shape
[N, H, W, 1]). Outputs: ``probabilities`` (FP32 [N, C]) and ``label`` (BYTES [N]) by default; ``heatmap`` (FP32
[N, 14, 14], the Grad-CAM map on the model input, rows top to bottom, in [0, 1]) only when requested by name in
``outputs``, since it costs a gradient pass. Supports the binary tensor data extension
(``Inference-Header-Content-Length``). Errors are ``{"error": "..."}``. The request parameter
``operating_point`` picks the named threshold; the response parameters say which one decided, its threshold and
the calibration (flat scalars, as the protocol's parameters are).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import struct
import zlib
from enum import Enum
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from app.dataplane import DataPlane, Prediction
from app.errors import ModelNotFound, ServiceError, classify
from app.explain import GRID_SIZE
from app.model_manager import ModelManager, ServingModel
from app.operating_points import OperatingPoint, calibration_of, choose, describe
from app.schemas import ErrorDetail

log = logging.getLogger("cxr.v2")
TAGS: list[str | Enum] = ["v2 (Open Inference Protocol)"]
open_router = APIRouter(prefix="/v2", tags=TAGS)  # server metadata and health: no key, for orchestration
router = APIRouter(prefix="/v2", tags=TAGS)

IMAGE_INPUT, TENSOR_INPUT = "image", "input"
PROBABILITIES, LABEL, HEATMAP = "probabilities", "label", "heatmap"
OUTPUTS = (PROBABILITIES, LABEL, HEATMAP)
HEADER_LENGTH = "Inference-Header-Content-Length"
SERVER_VERSION = "0.1.0"


class V2ErrorBody(BaseModel):
    """Errors raised inside the v2 routes are ``{"error": "..."}`` (the protocol's shape); a missing API key and
    an oversized body are refused before them, in the service's own shape."""

    error: str | ErrorDetail


V2_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": V2ErrorBody} for status in (400, 401, 403, 404, 413, 415, 422, 429, 500, 503)}


class V2Error(ServiceError):
    code, status = "invalid_inference_request", 400


def v2_error(exc: Exception, request: Request) -> JSONResponse:
    status, code, message = classify(exc)
    request_id = getattr(request.state, "request_id", "")
    request.app.state.audit.refused_request(request.scope, status, code)  # unless an element was recorded
    if status >= 500:
        log.error("v2 request %s failed: %s", request_id, code, exc_info=exc)
    else:
        log.info("v2 request %s rejected: %s %s", request_id, status, message)
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _manager(request: Request) -> ModelManager:
    return request.app.state.manager


def _serving(request: Request, name: str, version: str | None) -> ServingModel:
    """The active model if it matches name (and version when pinned); 404 otherwise."""
    model = _manager(request).current
    if name != model.metadata.name:
        raise ModelNotFound(f"unknown model {name!r}; this server serves {model.metadata.name!r}")
    if version is not None and version != str(model.version):
        available = _manager(request).registry.versions(name)
        state = "exists but is not loaded" if version.isdigit() and int(version) in available else "does not exist"
        raise ModelNotFound(f"version {version!r} of model {name!r} {state}; the active version is {model.version}")
    return model


# -- server ------------------------------------------------------------------------------------------------
@open_router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "cxr-serve", "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]}


@open_router.get("/health/live", summary="Server live", responses={503: {"description": "model failed to load"}})
async def server_live(request: Request) -> JSONResponse:
    live = _manager(request).load_error is None
    return JSONResponse({"live": live}, status_code=200 if live else 503)


@open_router.get("/health/ready", summary="Server ready", responses={503: {"description": "not ready"}})
async def server_ready(request: Request) -> JSONResponse:
    ready = _manager(request).not_ready_reason() is None and request.app.state.audit.not_ready_reason() is None
    sync = request.app.state.worker_sync  # several workers: every one of them, on one model (app.worker_sync)
    if ready and sync is not None:
        ready = await asyncio.to_thread(sync.not_ready_reason) is None
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


# -- model metadata and readiness --------------------------------------------------------------------------
def model_metadata(model: ServingModel, configured: str | None = None) -> dict[str, Any]:
    meta = model.metadata
    size = meta.preprocessing.input_size
    return {
        "name": meta.name, "versions": [str(model.version)], "platform": "tensorflow_keras",
        "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                   {"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, size, size, 1]}],
        "outputs": [{"name": PROBABILITIES, "datatype": "FP32", "shape": [-1, len(meta.class_names)]},
                    {"name": LABEL, "datatype": "BYTES", "shape": [-1]},
                    {"name": HEATMAP, "datatype": "FP32", "shape": [-1, GRID_SIZE, GRID_SIZE]}],
        "parameters": {"class_names": meta.class_names, "positive_class": meta.positive_class,
                       "decision_threshold": meta.decision_threshold, "sha256": model.artifact.sha256,
                       "preprocessing": meta.preprocessing.to_dict(), **describe(meta, configured)},
    }


@router.get("/models/{name}", summary="Model metadata", responses=V2_ERRORS)
@router.get("/models/{name}/versions/{version}", summary="Model metadata (pinned version)", responses=V2_ERRORS)
async def get_model_metadata(request: Request, name: str, version: str | None = None) -> JSONResponse:
    try:
        return JSONResponse(model_metadata(_serving(request, name, version),
                                           request.app.state.settings.operating_point))
    except Exception as exc:
        return v2_error(exc, request)


@router.get("/models/{name}/ready", summary="Model ready", responses=V2_ERRORS)
@router.get("/models/{name}/versions/{version}/ready", summary="Model ready (pinned version)", responses=V2_ERRORS)
async def model_ready(request: Request, name: str, version: str | None = None) -> JSONResponse:
    try:
        model = _serving(request, name, version)
    except Exception as exc:
        return v2_error(exc, request)
    return JSONResponse({"name": name, "version": str(model.version), "ready": True})


# -- inference ---------------------------------------------------------------------------------------------
INFER_DOC = {"requestBody": {"content": {
    "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"}, "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": {"type": "object"}},
        "outputs": {"type": "array", "items": {"type": "object"}}}}},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}, "required": True}}


@router.post("/models/{name}/infer", summary="Inference", openapi_extra=INFER_DOC, responses=V2_ERRORS)
@router.post("/models/{name}/versions/{version}/infer", summary="Inference (pinned version)",
             openapi_extra=INFER_DOC, responses=V2_ERRORS)
async def infer(request: Request, name: str, version: str | None = None) -> Response:
    try:
        model = _serving(request, name, version)
        header, binary = await read_infer_body(request)
        request_inputs, requested = parse_request(header, binary, model, request.app.state.settings.max_batch_files)
        dataplane: DataPlane = request.app.state.dataplane
        point_name = requested_point(header)
        point = dataplane.point(model, point_name)  # 422 for an unknown name, before any element runs
        predictions = await run_inputs(dataplane, request_inputs, model, request, point_name,
                                       explain=HEATMAP in requested)
        return build_response(header, model, predictions, requested, point)
    except Exception as exc:
        return v2_error(exc, request)


def decided_by(model: ServingModel, point: OperatingPoint | None) -> dict[str, Any]:
    """The operating point, its threshold and the calibration, as the flat scalars protocol parameters are."""
    point = point or choose(model.metadata)
    calibration = calibration_of(model.metadata)
    site = calibration["site_calibration"]
    return {"operating_point": point.name, "threshold": point.threshold,
            "temperature": calibration["temperature"],
            **({f"site_calibration_{key}": value for key, value in site.items()} if site else {})}


async def read_infer_body(request: Request) -> tuple[dict[str, Any], bytes]:
    body = await request.body()
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        limit = request.app.state.settings.max_upload_bytes * request.app.state.settings.max_batch_files
        inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            body = inflater.decompress(body, limit + 1)
        except zlib.error as exc:
            raise V2Error(f"cannot decompress {encoding} body: {exc}") from exc
        if len(body) > limit or inflater.unconsumed_tail:
            raise V2Error(f"decompressed body exceeds {limit} bytes")
    elif encoding not in ("", "identity"):
        raise V2Error(f"unsupported Content-Encoding {encoding!r}")
    length = request.headers.get(HEADER_LENGTH.lower())
    if length is not None:
        if not length.isdigit() or int(length) > len(body):
            raise V2Error(f"{HEADER_LENGTH} {length!r} is not a length within the body ({len(body)} bytes)")
        json_part, binary = body[: int(length)], body[int(length) :]
    else:
        json_part, binary = body, b""
    try:
        header = json.loads(json_part)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise V2Error(f"request header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise V2Error("request must be a JSON object with an 'inputs' list")
    return header, binary


def _element_count(shape: list[int]) -> int:
    return int(np.prod(shape)) if shape else 1


def parse_request(header: dict[str, Any], binary: bytes, model: ServingModel, max_items: int
                  ) -> tuple[tuple[str, list[Any]], dict[str, bool]]:
    """Validate the request; returns ((input name, items), {output name: binary?})."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise V2Error(f"exactly one input is expected: {IMAGE_INPUT!r} (BYTES) or {TENSOR_INPUT!r} (FP32)")
    tensor = inputs[0]
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape) or not shape:
        raise V2Error(f"input {name!r}: shape must be a non-empty list of non-negative integers, got {shape!r}")
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0 or size != len(binary):
            raise V2Error(f"input {name!r}: binary_data_size {size!r} does not match the {len(binary)} bytes sent")
        raw: bytes | None = binary
    else:
        if binary:
            raise V2Error("binary data was sent but no input declares binary_data_size")
        raw = None
        if "data" not in tensor:
            raise V2Error(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    if shape[0] > max_items:
        raise V2Error(f"batch of {shape[0]} exceeds the limit of {max_items} per request")
    if name == IMAGE_INPUT:
        if datatype != "BYTES":
            raise V2Error(f"input {IMAGE_INPUT!r} must be BYTES, got {datatype!r}")
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise V2Error(f"input {IMAGE_INPUT!r} shape must be [N] or [N, 1], got {shape}")
        items: list[Any] = decode_bytes_binary(raw) if raw is not None else decode_bytes_json(tensor["data"])
        if len(items) != shape[0]:
            raise V2Error(f"input {IMAGE_INPUT!r} has {len(items)} elements, shape says {shape[0]}")
    elif name == TENSOR_INPUT:
        if datatype != "FP32":
            raise V2Error(f"input {TENSOR_INPUT!r} must be FP32, got {datatype!r}")
        expected = [shape[0], *model.input_shape]
        if shape != expected:
            raise V2Error(f"input {TENSOR_INPUT!r} shape must be {expected} (N, H, W, 1), got {shape}")
        array = decode_fp32(raw, tensor.get("data"), shape)
        items = list(array)
    else:
        raise V2Error(f"unknown input {name!r}; expected {IMAGE_INPUT!r} (BYTES) or {TENSOR_INPUT!r} (FP32)")
    return (name, items), requested_outputs(header)


def decode_bytes_binary(raw: bytes) -> list[bytes]:
    """Triton's BYTES serialisation: each element is a 4-byte little-endian length, then the bytes."""
    items, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise V2Error("BYTES tensor data is truncated (incomplete length prefix)")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise V2Error("BYTES tensor data is truncated (element shorter than its length prefix)")
        items.append(raw[offset : offset + length])
        offset += length
    return items


def decode_bytes_json(data: Any) -> list[bytes]:
    """In JSON mode each BYTES element is a base64 string (JSON cannot carry raw bytes)."""
    flat = np.asarray(data, dtype=object).reshape(-1).tolist() if isinstance(data, list) else None
    if flat is None or not all(isinstance(item, str) for item in flat):
        raise V2Error(f"input {IMAGE_INPUT!r}: JSON data must be a list of base64-encoded strings")
    try:
        return [base64.b64decode(item, validate=True) for item in flat]
    except (binascii.Error, ValueError) as exc:
        raise V2Error(f"input {IMAGE_INPUT!r}: element is not valid base64 ({exc})") from exc


def decode_fp32(raw: bytes | None, data: Any, shape: list[int]) -> np.ndarray:
    count = _element_count(shape)
    if raw is not None:
        if len(raw) != count * 4:
            raise V2Error(f"input {TENSOR_INPUT!r}: {len(raw)} bytes of FP32 data, shape {shape} needs {count * 4}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)
    try:
        array = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise V2Error(f"input {TENSOR_INPUT!r}: data must be numbers ({exc})") from exc
    if array.size != count:
        raise V2Error(f"input {TENSOR_INPUT!r}: {array.size} values, shape {shape} needs {count}")
    return array.reshape(shape)


def requested_point(header: dict[str, Any]) -> str | None:
    """The request parameter ``operating_point`` (a string naming one of the version's points), if any."""
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise V2Error("'parameters' must be an object")
    name = params.get("operating_point")
    if name is not None and not isinstance(name, str):
        raise V2Error(f"parameters.operating_point must be a string naming an operating point, got {name!r}"[:200])
    return name


def requested_outputs(header: dict[str, Any]) -> dict[str, bool]:
    params = header.get("parameters") or {}
    default_binary = bool(params.get("binary_data_output", False))
    outputs = header.get("outputs")
    if outputs is None:
        return {PROBABILITIES: default_binary, LABEL: default_binary}
    if not isinstance(outputs, list):
        raise V2Error("'outputs' must be a list of {\"name\": ...} objects")
    chosen: dict[str, bool] = {}
    for output in outputs:
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUTS:
            raise V2Error(f"unknown output {name!r}; available: {', '.join(map(repr, OUTPUTS))}")
        chosen[name] = bool((output.get("parameters") or {}).get("binary_data", default_binary))
    return chosen


async def run_inputs(dataplane: DataPlane, request_inputs: tuple[str, list[Any]], model: ServingModel,
                     request: Request, operating_point: str | None = None, *, explain: bool = False
                     ) -> list[Prediction]:
    name, items = request_inputs
    request_id = getattr(request.state, "request_id", "")

    async def one(index: int, item: Any) -> Prediction:
        try:
            # audited per element, as <request id>-<index> (the X-Request-ID header carries the request id)
            async with request.app.state.audit.track_request(request, f"{request_id}-{index}") as ticket:
                if name == IMAGE_INPUT:
                    return await dataplane.predict_image(item, model=model, ticket=ticket,
                                                         operating_point=operating_point, explain=explain)
                return await dataplane.predict_tensor(item, model=model, ticket=ticket,
                                                      operating_point=operating_point, explain=explain)
        except ServiceError:
            raise
        except Exception as exc:  # say which element was bad, keep the status its error class maps to
            exc.args = (f"element {index}: {exc}",)
            raise

    return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))


def build_response(header: dict[str, Any], model: ServingModel, predictions: list[Prediction],
                   requested: dict[str, bool], point: OperatingPoint | None = None) -> Response:
    n = len(predictions)
    probabilities = (np.stack([p.probabilities for p in predictions]).astype("<f4") if n
                     else np.zeros((0, len(model.metadata.class_names)), "<f4"))
    labels = [p.label for p in predictions]
    outputs, blobs = [], []
    for name, binary in requested.items():
        if name == PROBABILITIES:
            entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(probabilities.shape)}
            blob = probabilities.tobytes()
            data: Any = probabilities.reshape(-1).tolist()
        elif name == HEATMAP:
            maps = np.stack([p.explanation.grid for p in predictions if p.explanation is not None]).astype("<f4") \
                if n else np.zeros((0, GRID_SIZE, GRID_SIZE), "<f4")
            entry = {"name": name, "datatype": "FP32", "shape": list(maps.shape)}
            blob = maps.tobytes()
            data = maps.reshape(-1).tolist()
        else:
            entry = {"name": name, "datatype": "BYTES", "shape": [n]}
            blob = b"".join(struct.pack("<I", len(s.encode())) + s.encode() for s in labels)
            data = labels
        if binary:
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data
        outputs.append(entry)
    body: dict[str, Any] = {"model_name": model.metadata.name, "model_version": str(model.version),
                            "outputs": outputs}
    if "id" in header:
        body["id"] = header["id"]
    body["parameters"] = decided_by(predictions[0].model if predictions else model,
                                    predictions[0].point if predictions else point)
    if any(p.gate is not None or p.warnings for p in predictions):  # BYTES inputs passed the input gate
        body["parameters"].update({
            "gate_score": [p.gate.score if p.gate is not None else None for p in predictions],
            "warnings": [p.warnings for p in predictions]})
    encoded = json.dumps(body).encode()
    if not blobs:
        return Response(encoded, media_type="application/json")
    return Response(encoded + b"".join(blobs), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(encoded))})
