"""Response models: they document the API in /openapi.json and check what we send."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class Timing(BaseModel):
    decode: float = Field(description="decode + preprocess, ms")
    queue: float = Field(description="waiting for a batch, ms")
    inference: float = Field(description="the batched model call, ms")
    total: float = Field(description="wall time in the service core (includes any wait for a decode thread), ms")


class PredictionResponse(BaseModel):
    prediction: str = Field(description="positive class iff P(positive) >= threshold")
    probabilities: dict[str, float]
    threshold: float = Field(description="decision threshold on P(positive), chosen on validation data")
    positive_class: str
    model: ModelRef
    request_id: str
    timing_ms: Timing
    notice: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class BatchItem(BaseModel):
    filename: str | None
    status: int = Field(description="HTTP-style status of this file: 200 or the error's status")
    result: PredictionResponse | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    request_id: str
    results: list[BatchItem]


class Health(BaseModel):
    status: str
    reason: str | None = None
    model: ModelRef | None = None


class ModelsResponse(BaseModel):
    name: str
    active_version: str
    versions: list[int]
    sha256: str
    class_names: list[str]
    decision_threshold: float
    preprocessing: dict[str, object]
    metrics: dict[str, object]
    dataset: dict[str, object]
    created_at: str
    code_version: str
    max_batch_size: int
    device: str
