"""The input gate: refuse what is not a frontal chest radiograph before the classifier ever sees it.

It runs once the upload has decoded (so a broken file keeps the decoder's precise error), cheapest check
first: DICOM header rules, a colour check (radiographs are grey), then a small gate model that scores the
*grey* image (binarization would throw away what tells a fundus photo from a radiograph). The gate model is an
artifact like the classifier (``<store>/gate/<version>/model.h5``, same loader rules, its own preprocessing
spec and threshold), so it is trained, versioned and verified the same way.
"""

from __future__ import annotations

import io
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from app.errors import NotAChestXrayError
from app.runtimes.lite import LiteInterpreter, convert_tflite
from app.settings import Settings
from model_store.artifact import LoadedArtifact, load_artifact
from model_store.preprocessing import preprocess
from model_store.registry import ModelRegistry

log = logging.getLogger("cxr.gate")

REFUSAL_SENTENCE = "this image does not look like a frontal chest radiograph"
ADULT_WARNING = ("the DICOM header gives a patient age over 17 years; the model was trained on frontal chest "
                 "films of children aged 1 to 5, so its answer for adults is not validated")
HEADER_TAGS = ("Modality", "BodyPartExamined", "ViewPosition", "PatientAge")
FRONTAL_VIEWS = frozenset({"PA", "AP"})
RADIOGRAPHY = frozenset({"CR", "DX"})
_AGE = re.compile(r"^(\d{3})([DWMY])$")
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclass(frozen=True)
class GateResult:
    """The gate model's verdict on one image; ``passed`` is False only in ``flag`` mode (refuse raises)."""

    score: float
    threshold: float
    model: dict[str, str]
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 6), "threshold": self.threshold, "model": self.model,
                "passed": self.passed}


def dicom_header(data: bytes) -> Any | None:
    """The few header elements the rules read, without touching pixel data; None when unparsable (the
    decoder then answers with its precise error)."""
    import pydicom

    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True, specific_tags=list(HEADER_TAGS))
    except Exception:  # a broken header is the decoder's to report, with its own message
        return None


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    text = str(value).strip().upper() if value is not None else ""
    return text or None


def check_header(ds: Any, rules: frozenset[str]) -> list[str]:
    """Apply the enabled header rules; raise a precise refusal, or return warnings for the result."""
    modality = _text(ds, "Modality")
    if "modality" in rules and modality not in RADIOGRAPHY:
        shown = f"is {modality!r}" if modality else "is missing"
        raise NotAChestXrayError(f"{REFUSAL_SENTENCE}: DICOM Modality (0008,0060) {shown}; only CR or DX "
                                 "radiographs are accepted", rule="modality")
    body_part = _text(ds, "BodyPartExamined")
    if "body_part" in rules and body_part is not None and body_part != "CHEST":
        raise NotAChestXrayError(f"{REFUSAL_SENTENCE}: DICOM BodyPartExamined (0018,0015) is {body_part!r}; "
                                 "only CHEST is accepted", rule="body_part")
    view = _text(ds, "ViewPosition")
    if "view_position" in rules and view is not None and view not in FRONTAL_VIEWS:
        raise NotAChestXrayError(f"{REFUSAL_SENTENCE}: DICOM ViewPosition (0018,5101) is {view!r}; only "
                                 "frontal PA or AP views are accepted", rule="view_position")
    return [ADULT_WARNING] if _age_years(_text(ds, "PatientAge")) > 17 else []


def colourfulness(data: bytes, fmt: str | None) -> float:
    """How colourful an (already decoded, so size-checked) upload is: the spread plus a share of the mean of
    the opponent colour channels (Hasler & Suesstrunk 2003) on a thumbnail, 0 for grey images. Radiographs are
    grey by physics, even when stored as RGB; fundus, skin, endoscopy and stained slides are not. DICOM is left
    to its header rules (Modality)."""
    if fmt is None or fmt == "DICOM":
        return 0.0
    with Image.open(io.BytesIO(data)) as image:
        if image.mode in _GREY_MODES:
            return 0.0
        image.draft("RGB", (16, 16))  # JPEG: decoded at up to 1/8 scale in the DCT domain (0.18 ms, not 0.9)
        rgb = image.convert("RGB")
        factor = max(rgb.size) // 64
        a = np.asarray(rgb.reduce(factor) if factor > 1 else rgb, dtype=np.float32) / 255.0
    rg = a[..., 0] - a[..., 1]
    yb = 0.5 * (a[..., 0] + a[..., 1]) - a[..., 2]
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def _age_years(age: str | None) -> float:
    """DICOM AS ('034Y', '006M', ...) in years; 0 when absent or malformed (no warning then)."""
    match = _AGE.match(age or "")
    if match is None:
        return 0.0
    per_year = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[match.group(2)]
    return int(match.group(1)) / per_year


class GateModel:
    """The gate artifact, run one image at a time in the decode threads (beside decoding: no hop, no batch
    wait), one single-threaded TFLite interpreter per decode thread: a Keras call of this small net is mostly
    fixed overhead (about 1.2 ms of CPU against 0.25 ms, benchmarks/gate_cost.py). It runs on the runtime its
    threshold and figures hold for (``metrics.runtime``, written by cxr-train-gate): dynamic-range int8 where that
    says ``tflite-int8`` (0.075 ms against float32's 0.25), else float32. The conversion is checked against the
    Keras model at load (float32 to 1e-4; int8 to its quantization error); on failure it falls back to Keras,
    saying so."""

    TOLERANCE = 1e-4
    INT8_TOLERANCE = 0.05  # int8 weights and activations: the worst on the 558 gate/ images is 0.012

    def __init__(self, artifact: LoadedArtifact, version: int) -> None:
        import tensorflow as tf

        self.artifact = artifact
        self.version = version
        meta = artifact.metadata
        self.spec = meta.preprocessing
        self.threshold = float(meta.decision_threshold)
        self.positive = meta.positive_index
        model = artifact.model

        @tf.function(input_signature=[tf.TensorSpec((1, *self.spec.input_shape), tf.float32)])
        def run(x: tf.Tensor) -> tf.Tensor:
            return model(x, training=False)

        self._keras = run
        self._local = threading.local()
        self._flatbuffer: bytes | None = None
        self.validated_runtime = str(meta.metrics.get("runtime", "keras"))
        quantize = self.validated_runtime == "tflite-int8"
        tolerance = self.INT8_TOLERANCE if quantize else self.TOLERANCE
        self.runtime = "keras"
        try:
            self._flatbuffer = convert_tflite(model, quantize=quantize)
            worst = max(float(np.abs(self._lite(x) - run(x).numpy()).max()) for x in self._probes())
            if worst > tolerance:
                raise ValueError(f"TFLite differs from Keras by {worst:.2g} (> {tolerance:g})")
            self.runtime = "tflite-int8" if quantize else "tflite"
        except Exception as exc:  # conversion or verification: serve with the reference, and say why once
            self._flatbuffer = None
            log.warning("gate model runs on Keras (slower%s): TFLite not usable: %s: %s",
                        f"; its figures were validated on {self.validated_runtime}" if quantize else "",
                        type(exc).__name__, exc)
        self.predict(np.zeros((1, *self.spec.input_shape), np.float32))  # trace + warm once, at load

    def _probes(self) -> list[np.ndarray]:
        rng = np.random.default_rng(0)
        shape = (1, *self.spec.input_shape)
        return [np.zeros(shape, np.float32), np.ones(shape, np.float32),
                *(rng.uniform(size=shape).astype(np.float32) for _ in range(4))]

    def _lite(self, x: np.ndarray) -> np.ndarray:
        interpreter = getattr(self._local, "interpreter", None)
        if interpreter is None:  # one per decode thread: an interpreter is not thread-safe
            interpreter = self._local.interpreter = LiteInterpreter(self._flatbuffer, x.shape)
        return interpreter.run(x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._lite(x) if self._flatbuffer is not None else self._keras(x).numpy()

    def describe(self) -> dict[str, str]:
        meta = self.artifact.metadata
        return {"name": meta.name, "version": str(self.version), "sha256": self.artifact.sha256}

    def score(self, image: np.ndarray) -> float:
        x = preprocess(image, self.spec)[None]
        return float(self.predict(x)[0, self.positive])


class InputGate:
    """Header rules, colour check and gate model, as configured by ``CXR_GATE`` (refuse | flag | off)."""

    def __init__(self, mode: str, rules: frozenset[str], model: GateModel | None,
                 max_colourfulness: float = 1.0) -> None:
        if mode != "off" and model is None:
            raise ValueError("the gate model is required unless CXR_GATE=off")
        self.mode = mode
        self.rules = rules if mode != "off" else frozenset()
        self.model = model if mode != "off" else None
        self.max_colourfulness = max_colourfulness

    def check_header(self, data: bytes, fmt: str | None) -> list[str]:
        """Header rules on DICOM bytes (warnings to add to the result); nothing to check for other formats."""
        if fmt != "DICOM":
            return []
        ds = dicom_header(data)
        if ds is None:
            return []
        if self.mode == "off":
            return check_header(ds, frozenset())  # no rules, but the age warning still applies
        try:
            return check_header(ds, self.rules)
        except NotAChestXrayError:
            if self.mode == "flag":
                return [f"flagged by the input gate: {REFUSAL_SENTENCE} (DICOM header)"]
            raise

    def check_image(self, image: np.ndarray, data: bytes, fmt: str | None) -> tuple[GateResult | None, list[str]]:
        """The decoded image: colour check, then the gate model. Returns the verdict and, in flag mode, the
        warnings for what would have been refused."""
        if self.model is None:
            return None, []
        flagged = []
        colour = colourfulness(data, fmt) if self.max_colourfulness < 1.0 else 0.0
        if colour > self.max_colourfulness:
            message = (f"{REFUSAL_SENTENCE}: it is a colour image (colourfulness {colour:.2f}, limit "
                       f"{self.max_colourfulness:.2f}); radiographs are grey")
            if self.mode != "flag":
                raise NotAChestXrayError(message, rule="colour", details={"colourfulness": round(colour, 4),
                                                                           "limit": self.max_colourfulness})
            flagged.append(f"flagged by the input gate: {message}")
        score = self.model.score(image)
        threshold = self.model.threshold
        passed = score >= threshold
        if not passed and self.mode != "flag":
            raise NotAChestXrayError(f"{REFUSAL_SENTENCE} (gate score {score:.3f}, threshold {threshold:.3f}); "
                                     "send a frontal (PA or AP) chest X-ray", rule="gate_model",
                                     details={"score": round(score, 6), "threshold": threshold})
        if not passed:
            flagged.append(f"flagged by the input gate: {REFUSAL_SENTENCE} (gate score {score:.3f})")
        return GateResult(score, threshold, self.model.describe(), passed=passed and not flagged), flagged

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "header_rules": sorted(self.rules),
                               "max_colourfulness": self.max_colourfulness}
        if self.model is not None:
            meta = self.model.artifact.metadata
            out.update(model=self.model.describe(), runtime=self.model.runtime, threshold=self.model.threshold,
                       preprocessing=meta.preprocessing.to_dict(), validation=meta.metrics.get("validation", {}))
        return out


def load_gate(settings: Settings) -> InputGate:
    rules = frozenset(settings.gate_header_rules)
    if settings.gate == "off":
        log.warning("input gate is OFF (CXR_GATE=off): every decodable image gets an answer")
        return InputGate("off", rules, None)
    registry = ModelRegistry(settings.gate_model_store)
    number, path = registry.resolve(settings.gate_model_name, settings.gate_model_version)
    model = GateModel(load_artifact(path), number)
    log.info("input gate %s: model %s v%d (threshold %.4f), header rules %s", settings.gate,
             settings.gate_model_name, number, model.threshold, sorted(rules) or "none")
    return InputGate(settings.gate, rules, model, settings.gate_max_colourfulness)
