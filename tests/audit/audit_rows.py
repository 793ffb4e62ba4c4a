"""Audit rows for tests, as the hook would make them, without running a model."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

SHA = "ab" * 32


def answer(request_id: str, p_positive: float, *, threshold: float = 0.5, created: datetime | None = None,
           model_sha256: str = SHA) -> dict[str, Any]:
    decision = "PNEUMONIA" if p_positive >= threshold else "NORMAL"
    return {
        "request_id": request_id, "created_at": created or datetime.now(UTC), "route": "/predict",
        "client": "anonymous", "outcome": "answer", "status": 200, "error_code": None,
        "input_sha256": hashlib.sha256(request_id.encode()).hexdigest(), "input_format": "jpeg",
        "input_bytes": 1000, "study_uid_hash": None, "series_uid_hash": None, "sop_uid_hash": None,
        "gate_score": 0.99, "model_name": "pneumonia", "model_version": "2", "model_sha256": model_sha256,
        "runtime": "keras", "probabilities": {"NORMAL": 1 - p_positive, "PNEUMONIA": p_positive},
        "p_positive": p_positive, "decision": decision, "threshold": threshold, "timings": {"total": 1.0},
    }


def refusal(request_id: str, code: str, status: int = 400, *, created: datetime | None = None) -> dict[str, Any]:
    row = answer(request_id, 0.0, created=created)
    row.update({"outcome": "refusal", "status": status, "error_code": code, "probabilities": None,
                "p_positive": None, "decision": None, "threshold": None, "model_sha256": None, "gate_score": None})
    return row


def days_ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)
