"""The DICOM node in the real app (uvicorn + lifespan, shipped model): a pynetdicom modality sends CR/DX
images, a pynetdicom SR destination receives what the node sends back. Destination down, refused images,
calling-AE control and back-pressure, and no patient data in any log line or metric."""

from __future__ import annotations

import contextlib
import io
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_harness import Running, free_port, serve
from chest_dicom import SOP_CLASSES, chest_dicom
from integration_support import GATE_SETTINGS, pick_films
from peers import SrSink, dciodvfy, sr_sink
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from app.dicom_node import OUT_OF_RESOURCES, DicomNode
from app.metrics import Metrics
from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
MODALITY_AE = "MODALITY"
RETRIES = 2


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")


@pytest.fixture(scope="module")
def logs() -> Iterator[Collect]:
    """Every log line of the app (all threads) during this module, for the patient-data check."""
    handler, root = Collect(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.fixture(scope="module")
def sink() -> Iterator[SrSink]:
    with sr_sink() as destination:
        yield destination


@pytest.fixture(scope="module")
def audit_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit") / "audit.sqlite"


@pytest.fixture(scope="module")
def node(shipped_model: Path, sink: SrSink, logs: Collect, audit_db: Path) -> Iterator[Running]:
    settings = Settings(model_store=REPO_ROOT / "model_store", access_log=False, dicom_port=free_port(),
                        audit_path=audit_db,
                        dicom_allowed_calling_aets=MODALITY_AE, dicom_destination_host="127.0.0.1",
                        dicom_destination_port=sink.port, dicom_destination_ae_title=sink.ae_title,
                        dicom_send_retries=RETRIES, dicom_retry_delay_s=0.1, dicom_timeout_s=5,
                        dicom_heatmap="off",  # the node's mechanics, one SR per image (heatmaps: test_dicomweb.py)
                        **GATE_SETTINGS)
    with serve(settings) as running:
        yield running


@pytest.fixture(scope="module")
def films(node: Running, fullres_images: list[Path]) -> dict:
    return pick_films(fullres_images, lambda data: node.client.post(
        "/predict", files={"file": ("film.dcm", data)}).status_code == 200)


def send(running: Running, data: bytes, calling: str = MODALITY_AE) -> int | None:
    """C-STORE from a modality; the status, or None when the association was refused."""
    dataset = dcmread(io.BytesIO(data))
    ae = AE(ae_title=calling)
    for sop_class in SOP_CLASSES.values():
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    settings = running.app.state.settings
    assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title=settings.dicom_ae_title)
    if not assoc.is_established:
        return None
    try:
        return int(assoc.send_c_store(dataset).Status)
    finally:
        assoc.release()


def metric(running: Running, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in running.client.get("/metrics").text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == (f"{name}{{{wanted}}}" if labels else name):
            return float(value)
    return 0.0


def wait_metric(running: Running, name: str, at_least: float, timeout: float = 60.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    while (value := metric(running, name, **labels)) < at_least:
        assert time.monotonic() < deadline, f"{name}{labels} stayed at {value}, expected >= {at_least}"
        time.sleep(0.05)
    return value


def test_readiness_covers_the_node(node):
    assert node.client.get("/health/ready").status_code == 200
    assert node.app.state.dicom_node.not_ready_reason() is None


@pytest.mark.parametrize("kind", ["CR", "DX", "DX-PROCESSING"])
def test_received_image_comes_back_as_an_sr_in_its_study(node, sink, films, kind, tmp_path):
    source_bytes = chest_dicom(films["PNEUMONIA"], kind=kind)  # the default synthetic patient
    source = dcmread(io.BytesIO(source_bytes))
    expected = node.client.post("/predict", files={"file": ("film.dcm", source_bytes)}).json()
    before = len(sink.received)

    assert send(node, source_bytes) == 0x0000

    sr = sink.wait_for(before + 1)[before]
    dciodvfy(sr_bytes(sr), tmp_path)
    assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.PatientID == source.PatientID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert evidence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    finding, probability = sr_finding(sr)
    assert probability == pytest.approx(expected["probabilities"][expected["positive_class"]], abs=1e-5)
    assert finding == ("Present" if expected["prediction"] == expected["positive_class"] else "Absent")


def sr_bytes(sr: Dataset) -> bytes:
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def sr_finding(sr: Dataset) -> tuple[str, float]:
    import highdicom as hd

    [group] = hd.sr.srread(io.BytesIO(sr_bytes(sr))).content.get_image_measurement_groups()
    return group.get_qualitative_evaluations()[0].value.meaning, float(group.get_measurements()[0].value)


REFUSALS = {
    "unusable_image": (400, lambda gray: chest_dicom(gray[:20, :20])),  # too small to be a radiograph
    "not_a_chest_xray": (422, lambda gray: chest_dicom(gray, body_part="HAND")),  # the gate's header rule
}


@pytest.mark.parametrize("code", sorted(REFUSALS))
def test_refused_image_gets_no_sr_but_a_log_line_and_a_metric(node, sink, films, logs, code):
    if code == "not_a_chest_xray" and GATE_SETTINGS:
        pytest.skip("no gate model in the store: the tests run with CXR_GATE=off")
    status, make = REFUSALS[code]
    before_sr = len(sink.received)
    before = metric(node, "cxr_dicom_images_processed_total", outcome="refused", code=code)

    assert send(node, make(films["NORMAL"])) == 0x0000  # taken; the refusal is the node's, after decoding

    wait_metric(node, "cxr_dicom_images_processed_total", before + 1, outcome="refused", code=code)
    assert any(f"refused: {status} {code}" in line for line in logs.lines)
    wait_metric(node, "cxr_dicom_pending", 0)  # nothing of it left in the node ...
    assert len(sink.received) == before_sr  # ... and no SR was sent for it


def test_destination_down_retries_then_logs_and_counts_the_loss(node, sink, films, patient, logs):
    failed = metric(node, "cxr_dicom_sr_sent_total", outcome="failed")
    attempts = metric(node, "cxr_dicom_sr_send_attempts_total", result="failure")
    sink.stop()
    try:
        assert send(node, chest_dicom(films["NORMAL"], patient=patient)) == 0x0000
        wait_metric(node, "cxr_dicom_sr_sent_total", failed + 1, outcome="failed")
    finally:
        sink.start()
    assert metric(node, "cxr_dicom_sr_send_attempts_total", result="failure") == attempts + RETRIES + 1
    assert any("NOT delivered" in line and f"after {RETRIES + 1} attempt(s)" in line for line in logs.lines)
    assert node.client.get("/health/ready").status_code == 200  # a lost SR does not make the node unready
    # the destination is back: the next image is delivered
    before = len(sink.received)
    assert send(node, chest_dicom(films["NORMAL"], patient=patient)) == 0x0000
    sink.wait_for(before + 1)


def test_calling_ae_not_allowed_is_refused(node, films, patient):
    before = metric(node, "cxr_dicom_images_received_total", outcome="not_allowed")
    assert send(node, chest_dicom(films["NORMAL"], patient=patient), calling="INTRUDER") is None
    assert metric(node, "cxr_dicom_images_received_total", outcome="not_allowed") == before + 1


def test_full_queue_answers_out_of_resources(node):
    """Back-pressure without racing the model: the node's admission with a queue of one."""
    settings = node.app.state.settings.model_copy(update={"dicom_queue_size": 1})
    gate = DicomNode(settings, node.app.state.dataplane, Metrics())
    assert gate._admit() == "accepted"
    assert gate._admit() == "queue_full"
    gate._release()
    assert gate._admit() == "accepted"
    gate._stopping.set()
    assert gate._admit() == "shutting_down"
    assert OUT_OF_RESOURCES == 0xA700


def test_every_node_answer_and_refusal_is_audited(node, audit_db, films):
    """One audit row per image the node took (route "dicom", the calling AE as client); the refused one with
    its code. The writer is buffered, so the rows are awaited. (``films``: the images the tests above sent, so
    this skips with them where the real films are absent.)"""
    expected = ["unusable_image"] if GATE_SETTINGS else sorted(REFUSALS)  # the header rule needs the gate on
    deadline = time.monotonic() + 30
    while True:
        with contextlib.closing(sqlite3.connect(audit_db)) as db:
            rows = db.execute("SELECT client, outcome, error_code FROM audit_records WHERE route = 'dicom'").fetchall()
        answers = [r for r in rows if r[1] == "answer"]
        refusals = [r for r in rows if r[1] == "refusal"]
        if len(answers) >= 5 and len(refusals) >= len(expected):  # 3 kinds + 2 when the destination was down
            break
        assert time.monotonic() < deadline, rows
        time.sleep(0.2)
    assert {r[0] for r in rows} == {MODALITY_AE}
    assert sorted(r[2] for r in refusals) == expected


def test_no_patient_data_in_any_log_line_or_metric(node, patient, logs, films):
    seen = "\n".join([*logs.lines, node.client.get("/metrics").text])
    assert "DICOM image" in seen and "SR" in seen  # the node did log its work in this module
    for secret in patient.secrets():
        assert secret not in seen, secret


def test_stop_drains_accepted_images_then_readiness_fails(node, sink, films):
    """Last in this module (it stops the node): an image still being processed when stop() begins is answered
    before stop() returns, and from then on the service is not ready (the lifespan's stop is then a no-op)."""
    dicom_node = node.app.state.dicom_node
    render, go = dicom_node.render_results, threading.Event()

    def held_render(prediction, data):
        assert go.wait(60), "never released"
        return render(prediction, data)

    dicom_node.render_results = held_render
    before = len(sink.received)
    assert send(node, chest_dicom(films["NORMAL"])) == 0x0000
    assert dicom_node.pending == 1  # held in the node until released below
    stopper = threading.Thread(target=dicom_node.stop, kwargs={"timeout": 60})
    stopper.start()
    while not dicom_node._stopping.is_set():
        time.sleep(0.01)
    # draining: a new image is not taken (connection refused, or 0xA700 if it slipped in before the listener closed)
    assert send(node, chest_dicom(films["NORMAL"])) in (None, OUT_OF_RESOURCES)
    go.set()
    stopper.join(90)

    assert not stopper.is_alive() and dicom_node.pending == 0
    assert len(sink.received) == before + 1  # the held image was answered before stop() returned
    ready = node.client.get("/health/ready")
    assert ready.status_code == 503 and "DICOM node" in ready.json()["reason"]
