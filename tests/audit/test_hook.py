"""The hook's small parts: client labels, which requests are audited, error codes to statuses, audit off."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from app.audit import Audit
from app.audit.hook import ClientLabels, audited_path
from app.audit.ticket import Ticket, dicom_uid_hashes, refusal_row, salted_hash
from app.errors import AuditUnavailableError, status_of_code
from app.metrics import Metrics
from app.settings import Settings

KEYS = ["first-key-0123456789abcdef", "second-key-0123456789abcdef"]


def test_client_is_a_stable_label_never_the_key() -> None:
    labels = ClientLabels(KEYS)
    first = labels.label_of(KEYS[0])
    assert first == "key-" + hashlib.sha256(KEYS[0].encode()).hexdigest()[:8] and KEYS[0] not in first
    assert labels.label_of(KEYS[1]) != first and labels.label_of(KEYS[0]) == first
    assert labels.label_of(None) == "no-key" and labels.label_of("not-a-configured-key-000") == "invalid-key"
    assert ClientLabels([]).label_of(None) == "anonymous"


def test_only_prediction_requests_are_audited() -> None:
    assert audited_path("POST", "/predict") and audited_path("POST", "/predict/batch")
    assert audited_path("POST", "/v2/models/pneumonia/infer")
    assert audited_path("POST", "/v2/models/pneumonia/versions/1/infer")
    for method, path in [("GET", "/predict"), ("POST", "/feedback"), ("GET", "/models"), ("POST", "/admin/reload"),
                         ("GET", "/v2/models/pneumonia"), ("POST", "/nowhere")]:
        assert not audited_path(method, path)


def test_error_codes_map_to_their_statuses() -> None:
    assert status_of_code("upload_too_large") == 413 and status_of_code("internal_error") == 500
    assert status_of_code("unsupported_format") == 415 and status_of_code("audit_unavailable") == 503
    assert status_of_code("no_such_code") == 500


def test_refusal_rows_keep_the_gate_score_not_the_message() -> None:
    refusal = ValueError("Patient Doe^Jane is not a chest X-ray")
    refusal.details = {"score": 0.12, "threshold": 0.5}  # type: ignore[attr-defined]  # as the gate's error
    row = refusal_row(Ticket("r", "/predict", "anonymous"), 422, "not_a_chest_xray", refusal)
    assert row["gate_score"] == 0.12 and row["error_code"] == "not_a_chest_xray"
    assert "Doe" not in repr(row)


def test_uids_are_not_recorded_without_a_salt() -> None:
    assert dicom_uid_hashes(b"anything", None) == {}
    assert salted_hash("1.2.3", "a" * 16) != salted_hash("1.2.3", "b" * 16)


def test_audit_off_records_nothing_and_refuses_feedback_and_monitoring(tmp_path) -> None:
    audit = Audit(Settings(audit_enabled=False, audit_path=tmp_path / "never.db"), Metrics())
    assert audit.engine is None and audit.not_ready_reason() is None

    async def use() -> Ticket:
        async with audit.track_item("r1", "dicom", "ORTHANC") as ticket:
            return ticket

    assert asyncio.run(use()).request_id == "r1"
    with pytest.raises(AuditUnavailableError):
        audit.require_store()
    audit.close(1)
    assert not (tmp_path / "never.db").exists()


def test_salt_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="audit_salt"):
        Settings(audit_salt="short")


def test_a_bad_store_url_is_refused_without_echoing_its_password() -> None:
    from app.settings import SettingsError

    with pytest.raises(SettingsError) as refused:
        Settings.load(audit_url="mysql://cxr:hunter2-secret@db/audit")
    assert "CXR_AUDIT_URL" in str(refused.value) and "hunter2" not in str(refused.value)
    assert Settings(audit_url="postgresql://cxr@db/audit").audit_url == "postgresql://cxr@db/audit"
