"""One answer or refusal in the making, and the audit row made from it.

The transport fills in who asked and by which route, the data plane what came in (hashes, format, size) and
what went out (the prediction); ``AuditHook`` turns it into a row. Only whitelisted, non-identifying fields
are ever copied: no pixels, no DICOM patient fields, no error messages (a decoder's message may quote header
text), DICOM UIDs only as salted hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from model_store.imaging import sniff_format

ANSWER, REFUSAL = "answer", "refusal"
UID_TAGS = {"study_uid_hash": "StudyInstanceUID", "series_uid_hash": "SeriesInstanceUID",
            "sop_uid_hash": "SOPInstanceUID"}


def salted_hash(value: str, salt: str) -> str:
    """HMAC-SHA256: without the salt a hash cannot be checked against a guessed UID."""
    return hmac.new(salt.encode(), value.encode(), hashlib.sha256).hexdigest()


def dicom_uid_hashes(data: bytes, salt: str | None) -> dict[str, str]:
    """Salted hashes of the study/series/instance UIDs of a DICOM upload (nothing without a salt)."""
    if not salt:
        return {}
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                             specific_tags=list(UID_TAGS.values()))
    except Exception:  # undecodable headers are the decoder's business; the audit just has no UIDs
        return {}
    hashes = {}
    for column, keyword in UID_TAGS.items():
        value = str(getattr(ds, keyword, "") or "").strip()
        if value:
            hashes[column] = salted_hash(value, salt)
    return hashes


@dataclass(slots=True)
class InputInfo:
    sha256: str
    format: str | None
    size: int
    uid_hashes: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Ticket:
    request_id: str
    route: str
    client: str
    salt: str | None = None
    caller: str | None = None  # the key name or token subject (never the credential); None when anonymous
    input: InputInfo | None = None
    prediction: Any = None
    started: float = field(default_factory=time.perf_counter)
    ended: float | None = None  # when the transport was done with it, where the row is made later
    unhashed: bytes | None = None  # an upload described only when its row is made (``describe_bytes_later``)

    def describe_bytes(self, data: bytes) -> None:
        """Called by the data plane in a worker thread (hashing a large upload stays off the event loop)."""
        fmt = sniff_format(data)
        uids = dicom_uid_hashes(data, self.salt) if fmt == "DICOM" else {}
        self.input = InputInfo(hashlib.sha256(data).hexdigest(), fmt.lower() if fmt else None, len(data), uids)
        self.unhashed = None

    def describe_bytes_later(self, data: bytes) -> None:
        """A lone image prepared on the event loop: its hash (0.15 ms for a 256 KB upload) is taken when the row
        is made, which for an answer is after the answer has left (``Tracked``), not on its latency path."""
        self.unhashed = data

    def settle(self) -> None:
        """Takes a deferred description now; the row needs it."""
        if self.unhashed is not None:
            self.describe_bytes(self.unhashed)

    def describe_tensor(self, raw: bytes) -> None:
        self.input = InputInfo(hashlib.sha256(raw).hexdigest(), "tensor", len(raw))


def _gate_score(gate: Any) -> float | None:
    """The gate's score, whichever shape the gate result has (a number, an object or a dict with ``score``)."""
    if gate is None:
        return None
    if isinstance(gate, int | float):
        return float(gate)
    score = gate.get("score") if isinstance(gate, dict) else getattr(gate, "score", None)
    return float(score) if isinstance(score, int | float) else None


def base_row(ticket: Ticket, outcome: str, status: int, code: str | None) -> dict[str, Any]:
    ticket.settle()
    info = ticket.input
    ended = ticket.ended if ticket.ended is not None else time.perf_counter()
    row: dict[str, Any] = {
        "request_id": ticket.request_id[:160], "created_at": datetime.now(UTC), "route": ticket.route[:200],
        "client": ticket.client[:64], "caller": ticket.caller[:128] if ticket.caller else None,
        "outcome": outcome, "status": status, "error_code": code,
        "input_sha256": info.sha256 if info else None, "input_format": info.format if info else None,
        "input_bytes": info.size if info else None,
        # "item": this answer or refusal from the transport's first look at it to now, in ms
        "timings": {"item": round((ended - ticket.started) * 1000, 3)},
    }
    for column in UID_TAGS:
        row[column] = info.uid_hashes.get(column) if info else None
    return row


def answer_row(ticket: Ticket) -> dict[str, Any]:
    prediction = ticket.prediction
    row = base_row(ticket, ANSWER, 200, None)
    model = prediction.model
    meta = model.metadata
    described = model.describe()
    probabilities = {name: float(p) for name, p in zip(meta.class_names, prediction.probabilities, strict=True)}
    row.update({
        "gate_score": _gate_score(getattr(prediction, "gate", None)),
        "model_name": meta.name, "model_version": str(model.version), "model_sha256": model.artifact.sha256,
        "runtime": str(described["runtime"])[:64] if described.get("runtime") else None,
        "probabilities": probabilities, "p_positive": probabilities[meta.positive_class],
        "decision": prediction.label, "threshold": float(prediction.threshold),
        "operating_point": str(prediction.operating_point)[:32], "calibration": prediction.calibration,
        "timings": {**{k: float(v) for k, v in prediction.timing_ms.items()}, **row["timings"]},
    })
    return row


def refusal_row(ticket: Ticket, status: int, code: str, exc: BaseException | None = None) -> dict[str, Any]:
    row = base_row(ticket, REFUSAL, status, code)
    # the gate's refusal carries its score in ``details`` ({"score": ..., "threshold": ...})
    gate = (getattr(exc, "gate", None) or getattr(exc, "details", None)) if exc is not None else None
    row["gate_score"] = _gate_score(gate)
    model = getattr(exc, "model", None)
    if model is not None and hasattr(model, "artifact"):
        row.update({"model_name": model.metadata.name, "model_version": str(model.version),
                    "model_sha256": model.artifact.sha256})
    return row
