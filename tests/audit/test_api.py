"""The audit trail of the real app over real HTTP (SQLite store): every answer and refusal recorded exactly
once under concurrent load, feedback and monitoring against a hand-computed confusion matrix, no patient data
in the store or the logs, the client as a key label never the key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from app_harness import SERVER_SETTINGS, Running, serve
from image_factory import make_dicom
from sqlalchemy import delete, select

from app.audit.models import AuditRecord, Feedback
from app.settings import Settings

KEY = "audit-test-key-0123456789abcdef"
KEY_LABEL = "key-" + hashlib.sha256(KEY.encode()).hexdigest()[:8]
SALT = "salt-for-tests-0123456789abcdef"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def xrays(xray_224_dir: Path) -> list[bytes]:
    """Six NORMAL and six PNEUMONIA films from the held-out test split."""
    folder = xray_224_dir / "test"
    files = sorted(folder.glob("NORMAL/*.jpeg"))[:6] + sorted(folder.glob("PNEUMONIA/*.jpeg"))[:6]
    return [p.read_bytes() for p in files]


@pytest.fixture(scope="module")
def server(shipped_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("audit")
    settings = Settings(**SERVER_SETTINGS, api_keys=[KEY], audit_path=folder / "audit.db", audit_salt=SALT)
    with serve(settings) as running:
        yield running


@pytest.fixture
def store(server: Running):
    """The app's store, emptied before the test (each test counts from zero)."""
    audit = server.app.state.audit
    assert audit.writer.flush(30)
    with audit.engine.begin() as connection:
        connection.execute(delete(Feedback))
        connection.execute(delete(AuditRecord))
    return audit


def rows(audit) -> list[dict]:
    assert audit.writer.flush(30), "the writer did not flush in time"
    with audit.engine.connect() as connection:
        return [dict(r) for r in connection.execute(select(AuditRecord).order_by(AuditRecord.id)).mappings()]


def rid() -> str:
    return "t-" + uuid.uuid4().hex


def test_every_answer_and_refusal_is_recorded_exactly_once_under_concurrent_load(server, store, xrays):
    client = server.client
    expected: dict[str, int] = {}  # request id -> HTTP status of that answer or refusal

    def single(data: bytes, headers: dict[str, str]) -> None:
        request_id = rid()
        response = client.post("/predict", files={"file": ("x", data)}, headers={**headers, "X-Request-ID": request_id})
        expected[request_id] = response.status_code

    def batch(files: list[bytes]) -> None:
        request_id = rid()
        response = client.post("/predict/batch", files=[("files", (f"f{i}", d)) for i, d in enumerate(files)],
                               headers={**AUTH, "X-Request-ID": request_id})
        if response.status_code == 200:
            for i, item in enumerate(response.json()["results"]):
                expected[f"{request_id}-{i}"] = item["status"]
        else:  # refused as a whole before any file was looked at
            expected[request_id] = response.status_code

    def v2(files: list[bytes]) -> None:
        request_id = rid()
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(files)],
                            "data": [base64.b64encode(d).decode() for d in files]}]}
        response = client.post("/v2/models/pneumonia/infer", json=body, headers={**AUTH, "X-Request-ID": request_id})
        assert response.status_code == 200, response.text
        for i in range(len(files)):
            expected[f"{request_id}-{i}"] = 200

    def too_big() -> None:
        request_id = rid()
        response = client.post("/predict", content=b"x" * (3 * 1024 * 1024), headers={
            **AUTH, "X-Request-ID": request_id, "Content-Type": "multipart/form-data; boundary=b"})
        expected[request_id] = response.status_code

    jobs = [lambda d=d: single(d, AUTH) for d in xrays * 2]
    jobs += [lambda: single(b"not an image at all", AUTH), lambda: single(b"", AUTH),
             lambda: single(xrays[0], {}), lambda: single(xrays[0], {"X-API-Key": "wrong-key-0123456789abcdef"}),
             lambda: batch([xrays[1], b"garbage", xrays[2]]), lambda: batch([xrays[3]] * 9),
             lambda: v2(xrays[4:6]), too_big]
    with ThreadPoolExecutor(16) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()

    records = rows(store)
    counts: dict[str, int] = {}
    for record in records:
        counts[record["request_id"]] = counts.get(record["request_id"], 0) + 1
    assert counts == dict.fromkeys(expected, 1)  # every one, once, and nothing else
    by_id = {r["request_id"]: r for r in records}
    assert {i: r["status"] for i, r in by_id.items()} == expected
    statuses = sorted(expected.values())
    assert statuses.count(401) == 2 and statuses.count(413) == 2 and statuses.count(415) == 2
    for record in records:
        assert (record["outcome"] == "answer") == (record["status"] == 200)
        if record["outcome"] == "answer":
            meta = server.app.state.manager.current.metadata
            assert record["model_sha256"] == server.app.state.manager.current.artifact.sha256
            assert set(record["probabilities"]) == set(meta.class_names)
            assert record["decision"] in meta.class_names and record["threshold"] == meta.decision_threshold
            assert record["input_sha256"] and record["input_format"] and record["input_bytes"] > 0
            assert record["timings"]["inference"] >= 0
        else:
            assert record["error_code"]
    clients = {r["client"] for r in records}
    assert clients == {KEY_LABEL, "no-key", "invalid-key"}
    assert KEY not in repr(records)


def test_answer_record_matches_the_response(server, store, xrays):
    response = server.client.post("/predict", files={"file": ("x", xrays[7])}, headers=AUTH)
    body = response.json()
    (record,) = rows(store)
    assert record["request_id"] == body["request_id"] and record["route"] == "/predict"
    assert record["input_sha256"] == hashlib.sha256(xrays[7]).hexdigest() and record["input_format"] == "jpeg"
    assert record["probabilities"] == pytest.approx(body["probabilities"])
    assert record["decision"] == body["prediction"] and record["threshold"] == body["threshold"]
    assert record["model_version"] == body["model"]["version"]
    if body.get("gate"):
        assert record["gate_score"] == pytest.approx(body["gate"]["score"])


def test_feedback_and_monitoring_match_a_hand_computed_confusion_matrix(server, store, xrays):
    client = server.client
    decisions = {}
    refused = 0
    for data in xrays:
        response = client.post("/predict", files={"file": ("x", data)}, headers=AUTH)
        if response.status_code != 200:  # e.g. the input gate's refusal: a refusal, not an answer
            assert response.json()["error"]["code"] == "not_a_chest_xray", response.text
            refused += 1
            continue
        decisions[response.json()["request_id"]] = response.json()["prediction"]
    ids = list(decisions)
    assert len(ids) >= 8
    # the reader's truth: alternate, so both classes meet both decisions; the first id is relabelled (the
    # latest label counts), the last is 'uncertain' (counted apart), one answer gets no label at all
    truth = {i: ("PNEUMONIA" if n % 2 else "NORMAL") for n, i in enumerate(ids[:-2])}
    for request_id, label in truth.items():
        response = client.post("/feedback", json={"request_id": request_id, "label": label, "reader_id": "r1"},
                               headers=AUTH)
        assert response.status_code == 201, response.text
    first = ids[0]
    flipped = "PNEUMONIA" if truth[first] == "NORMAL" else "NORMAL"
    second = client.post("/feedback", json={"request_id": first, "label": flipped, "reader_id": "r2"}, headers=AUTH)
    assert [h["label"] for h in second.json()["history"]] == [truth[first], flipped]
    truth[first] = flipped
    assert client.post("/feedback", json={"request_id": ids[-1], "label": "uncertain"},
                       headers=AUTH).status_code == 201

    tp = sum(1 for i, t in truth.items() if t == "PNEUMONIA" and decisions[i] == "PNEUMONIA")
    fn = sum(1 for i, t in truth.items() if t == "PNEUMONIA" and decisions[i] == "NORMAL")
    tn = sum(1 for i, t in truth.items() if t == "NORMAL" and decisions[i] == "NORMAL")
    fp = sum(1 for i, t in truth.items() if t == "NORMAL" and decisions[i] == "PNEUMONIA")
    positives = sum(1 for d in decisions.values() if d == "PNEUMONIA")

    figures = client.get("/monitoring", headers=AUTH).json()
    assert figures["answers"] == len(ids) and figures["positives"] == positives
    assert figures["positive_rate"]["value"] == pytest.approx(positives / len(ids), abs=1e-6)
    assert figures["refusals"]["total"] == refused
    feedback = figures["feedback"]
    assert feedback["confusion_matrix"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert feedback["confirmed"] == len(truth) and feedback["uncertain"] == 1
    assert feedback["sensitivity"] == {"value": pytest.approx(tp / (tp + fn), abs=1e-6) if tp + fn else None,
                                       "numerator": tp, "denominator": tp + fn}
    assert feedback["specificity"]["numerator"] == tn and feedback["specificity"]["denominator"] == tn + fp
    assert feedback["ppv"]["numerator"] == tp and feedback["ppv"]["denominator"] == tp + fp
    # the shipped artifact carries its validation distribution, but a dozen answers are too few for a PSI:
    # drift is unavailable, with the reason, not made up
    assert figures["drift"]["available"] is False and "at least 50" in figures["drift"]["reason"]

    metrics = client.get("/metrics").text
    assert f'cxr_monitor_confusion{{cell="tp"}} {float(tp)}' in metrics
    assert f"cxr_monitor_answers {float(len(ids))}" in metrics
    assert "cxr_audit_records_written_total" in metrics


def test_feedback_refuses_unknown_ids_bad_labels_and_missing_keys(server, store, xrays):
    client = server.client
    response = client.post("/feedback", json={"request_id": "never-seen", "label": "NORMAL"}, headers=AUTH)
    assert response.status_code == 404 and response.json()["error"]["code"] == "unknown_request"
    refused = client.post("/predict", files={"file": ("x", b"nope")}, headers=AUTH).json()["error"]["request_id"]
    response = client.post("/feedback", json={"request_id": refused, "label": "NORMAL"}, headers=AUTH)
    assert response.status_code == 404  # a refusal has no answer to confirm
    answered = client.post("/predict", files={"file": ("x", xrays[0])}, headers=AUTH).json()["request_id"]
    response = client.post("/feedback", json={"request_id": answered, "label": "maybe"}, headers=AUTH)
    assert response.status_code == 422
    assert client.post("/feedback", json={"request_id": answered, "label": "NORMAL"}).status_code == 401
    assert client.get("/monitoring").status_code == 401
    assert client.post("/feedback", json={"request_id": answered, "label": "NORMAL"}, headers=AUTH).status_code == 201


PATIENT = {"PatientName": "Doe^Janet^Q", "PatientID": "PID-7741-XQ", "PatientBirthDate": "19750312",
           "OtherPatientIDs": "MRN-99812", "AccessionNumber": "ACC-55120"}


def test_no_patient_data_in_the_store_or_the_logs(server, store, xrays, caplog):
    import io

    from pydicom import dcmread

    ds = dcmread(io.BytesIO(make_dicom(real_xray_from(xrays[2]))))
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.111", "1.2.826.0.1.3680043.8.498.222"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    caplog.set_level(logging.DEBUG)
    ok = server.client.post("/predict", files={"file": ("study.dcm", data)}, headers=AUTH)
    broken = server.client.post("/predict", files={"file": ("study.dcm", data[:600])}, headers=AUTH)
    assert ok.status_code in (200, 422) and broken.status_code >= 400
    records = rows(store)
    assert len(records) == 2
    store.writer.flush(30)
    store.engine.dispose()  # checkpoint-free read of every byte SQLite holds: the file and its WAL
    raw = b"".join(p.read_bytes() for p in Path(store.engine.url.database).parent.glob("audit.db*"))
    logs = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    secrets = [*PATIENT.values(), "Doe", "Janet", ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID]
    for secret in secrets:
        assert secret.encode() not in raw, f"{secret} found in the audit store"
        assert secret not in logs, f"{secret} found in the logs"
        assert secret not in repr(records)
    answer = records[0]
    assert answer["input_format"] == "dicom"
    assert answer["study_uid_hash"] == hmac.new(SALT.encode(), ds.StudyInstanceUID.encode(), "sha256").hexdigest()
    assert answer["sop_uid_hash"] == hmac.new(SALT.encode(), ds.SOPInstanceUID.encode(), "sha256").hexdigest()


def real_xray_from(data: bytes):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))
