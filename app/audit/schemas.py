"""Request and response models of /feedback and /monitoring (they make the OpenAPI document)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.schemas import ModelRef


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(min_length=1, max_length=160, pattern=r"^[^\x00-\x1f\x7f]+$",
                            description="the request id of the answer (for /predict/batch and /v2: "
                            "<request id>-<index>)")
    label: Literal["NORMAL", "PNEUMONIA", "uncertain"] = Field(description="the confirmed finding")
    reader_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[\w.@:-]+$",
                                  description="who confirmed it (a staff id, not patient data)")


class FeedbackEntry(BaseModel):
    label: str
    reader_id: str | None
    recorded_at: str


class FeedbackResponse(BaseModel):
    request_id: str
    label: str
    reader_id: str | None
    prediction: str = Field(description="what the model answered")
    recorded_at: str
    history: list[FeedbackEntry] = Field(description="every label given for this answer, oldest first; the "
                                         "last one counts")


class Rate(BaseModel):
    value: float | None = Field(description="numerator / denominator; null when the denominator is 0")
    numerator: int
    denominator: int


class Confusion(BaseModel):
    tp: int
    fp: int
    tn: int
    fn: int


class FeedbackFigures(BaseModel):
    confirmed: int = Field(description="answers in the window with a NORMAL or PNEUMONIA label")
    uncertain: int = Field(description="answers whose latest label is 'uncertain' (not in the rates)")
    confusion_matrix: Confusion
    sensitivity: Rate
    specificity: Rate
    ppv: Rate


class Refusals(BaseModel):
    total: int
    by_reason: dict[str, int] = Field(description="error code -> count")


class Window(BaseModel):
    hours: float
    since: str
    until: str


class StoreState(BaseModel):
    up: bool
    buffered: int
    written: int = Field(description="records written by this process")
    not_stored: dict[str, int] = Field(description="records this process could not store, by reason")


class MonitoringResponse(BaseModel):
    window: Window
    model: ModelRef | None = Field(description="the active model; answers, rates and drift are its own")
    answers: int
    positives: int
    positive_rate: Rate
    refusals: Refusals
    feedback: FeedbackFigures
    by_operating_point: dict[str, FeedbackFigures] = Field(default_factory=dict, description="the same figures "
                                                           "per operating point that decided (confirmed answers "
                                                           "only; 'default' = the stored threshold)")
    drift: dict[str, Any] = Field(description="available, psi, band (stable < 0.1 <= moderate < 0.25 <= "
                                  "significant), n and bins; or available=false and the reason")
    store: StoreState
