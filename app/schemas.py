"""Response models: they document the API in /openapi.json and check what we send."""

from __future__ import annotations

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str
    runtime: str = Field("keras", description="how the model ran: keras (float32 reference), keras-bf16 or "
                         "tflite-int8, each verified against the reference at load")


class Timing(BaseModel):
    decode: float = Field(description="decode + preprocess, ms")
    queue: float = Field(description="waiting for a batch, ms")
    inference: float = Field(description="the batched model call, ms")
    total: float = Field(description="wall time in the service core (includes any wait for a decode thread), ms")


class GateInfo(BaseModel):
    score: float = Field(description="gate model's P(frontal chest radiograph) for this image")
    threshold: float = Field(description="scores below it are refused (CXR_GATE=refuse) or flagged")
    model: ModelRef
    passed: bool = Field(description="false only when CXR_GATE=flag answered an image the gate would refuse")


class ExplanationInfo(BaseModel):
    method: str = Field(description="grad-cam (Selvaraju et al. 2017)")
    layer: str = Field(description="the explained layer: the model's last convolution unless CXR_EXPLAIN_LAYER")
    grid: list[list[float]] = Field(description="14 x 14 map in [0, 1] (1 = the location that most raised the "
                                    "positive class's score), rows top to bottom, over the model input: the "
                                    "whole image stretched to a square (centre square where the model crops)")
    overlay_png: str = Field(description="base64 RGBA PNG heatmap with the upload's aspect ratio, transparent where "
                             "the map is cold: stretch it over the image to show where the model looked")
    width: int = Field(description="overlay width in pixels")
    height: int = Field(description="overlay height in pixels")
    timing_ms: float = Field(description="Grad-CAM + overlay, ms (runs beside the batched model call)")


class Calibration(BaseModel):
    temperature: float = Field(description="the artifact's temperature scaling (1.0 = none), fitted on validation")
    site_calibration: dict[str, object] | None = Field(description="the site's logistic recalibration of the "
                                                       "logit after the temperature: intercept, slope, method "
                                                       "(logistic or intercept); null for a version without one")


class PredictionResponse(BaseModel):
    prediction: str = Field(description="positive class iff P(positive) >= threshold")
    probabilities: dict[str, float] = Field(description="after the calibration below: what the threshold compares")
    threshold: float = Field(description="the decision threshold on P(positive) of the operating point that decided")
    operating_point: str = Field(description="the named operating point that decided: the request's "
                                 "?operating_point, else CXR_OPERATING_POINT, else the version's default "
                                 "('default' = the stored validation threshold for a version without named points)")
    calibration: Calibration
    positive_class: str
    model: ModelRef
    request_id: str
    timing_ms: Timing
    gate: GateInfo | None = Field(None, description="the input gate's verdict; null for /v2 FP32 tensors (already "
                                  "preprocessed: the gate cannot see them) or with CXR_GATE=off")
    warnings: list[str] = Field(default_factory=list, description="plain-language cautions, e.g. an adult patient "
                                "or an image the gate flagged")
    explanation: ExplanationInfo | None = Field(None, description="only with ?explain=true: Grad-CAM heatmap")
    notice: str

    @model_serializer(mode="wrap")
    def _omit_absent_explanation(self, handler: SerializerFunctionWrapHandler):
        # plain predictions stay what they were: no "explanation": null. (No return annotation on purpose: with
        # one, pydantic documents this model in OpenAPI as a bare object.)
        data = handler(self)
        if isinstance(data, dict) and data.get("explanation") is None:
            data.pop("explanation", None)
        return data


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str
    details: dict[str, object] | None = Field(None, description="machine-readable extras, e.g. the gate score "
                                              "and threshold of a not_a_chest_xray refusal")


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


class WorkerState(BaseModel):
    pid: int
    version: str | None = Field(description="the model version it serves; null while none is loaded")
    ready: bool
    dicom_listener: bool | None = Field(None, description="it serves the DICOM C-STORE port (where configured)")


class Health(BaseModel):
    status: str
    reason: str | None = None
    model: ModelRef | None = None
    workers: list[WorkerState] | None = Field(None, description="with several worker processes, each one's state")


class VersionInfo(BaseModel):
    version: int
    operating_points: dict[str, float] | None = Field(description="name -> threshold on the served P(positive); "
                                                      "null when the version cannot be read")
    default_operating_point: str | None = Field(description="the point answers use when a request names none")
    calibration: Calibration | None = None
    provenance: dict[str, object] = Field(default_factory=dict, description="where a derived (site-calibrated) "
                                          "version came from: base version, site sample, method, date")
    site: dict[str, object] | None = Field(None, description="a site version's figures on its site sample "
                                           "(cxr-site calibrate): AUC, ECE, Brier, the calibration fit and each "
                                           "operating point's sensitivity and specificity with intervals")
    error: str | None = Field(None, description="why the version's metadata could not be read")


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
    runtime: dict[str, object] = Field(default_factory=dict, description="the runtime serving this model: name, "
                                       "requested (CXR_RUNTIME), fallback reason if any, and its verification "
                                       "against the golden set (max |dp|, decision flips)")
    gate: dict[str, object] = Field(description="the input gate: mode, header rules, gate model, threshold and "
                                    "its validation figures (sources held out)")
    operating_points: dict[str, float] = Field(description="the active version's named thresholds on the served "
                                               "P(positive); 'default' alone for a version without named points")
    default_operating_point: str = Field(description="the point answers use when a request names none "
                                         "(CXR_OPERATING_POINT, else the version's default)")
    calibration: Calibration
    provenance: dict[str, object] = Field(description="where the active version came from (empty for a trained "
                                          "version; base version and site sample for a site-calibrated one)")
    version_details: list[VersionInfo] = Field(description="every version in the store with its operating points, "
                                               "default point, calibration and provenance")
