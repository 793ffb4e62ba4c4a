"""/predict by Accept: JSON (default), DICOM SR (highdicom, TID 1500; verified by dciodvfy) and FHIR
(fhir.resources), on the real app with the shipped model and real radiographs written as CR/DX objects."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from app_harness import wait_ready
from chest_dicom import chest_dicom
from fastapi.testclient import TestClient
from fhir.resources.device import Device
from fhir.resources.diagnosticreport import DiagnosticReport
from fhir.resources.observation import Observation
from image_factory import encode
from integration_support import GATE_SETTINGS, pick_films
from peers import dciodvfy
from pydicom import dcmread
from pydicom.uid import Comprehensive3DSRStorage

from app.dataplane import NOTICE, Prediction
from app.main import create_app
from app.renderers import DICOM, FHIR, dicom_sr, fhir, negotiate
from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
WARNINGS: list[str] = []  # dciodvfy warnings seen in this module, printed at the end for the report


@pytest.fixture(scope="module")
def client(shipped_model: Path) -> Iterator[TestClient]:
    app = create_app(Settings(model_store=REPO_ROOT / "model_store", access_log=False, **GATE_SETTINGS))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        wait_ready(app)
        yield test_client
    if WARNINGS:
        print("\ndciodvfy warnings:\n" + "\n".join(sorted(set(WARNINGS))))


@pytest.fixture(scope="module")
def films(client: TestClient, fullres_images: list[Path]) -> dict:
    return pick_films(fullres_images, lambda data: post(client, data, "film.dcm").status_code == 200)


def post(client: TestClient, data: bytes, name: str, accept: str | None = None):
    headers = {"Accept": accept} if accept is not None else {}
    return client.post("/predict", files={"file": (name, data)}, headers=headers)


def predictions_counted(client: TestClient) -> float:
    text = client.get("/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("cxr_predictions_total{"))


def sr_result(sr_bytes: bytes) -> tuple[str, float, hd.sr.Comprehensive3DSR]:
    """(finding code meaning, probability) read back through highdicom's TID 1500 parser."""
    sr = hd.sr.srread(io.BytesIO(sr_bytes))
    [group] = sr.content.get_image_measurement_groups()
    [evaluation] = group.get_qualitative_evaluations()
    [measurement] = group.get_measurements()
    return evaluation.value.meaning, float(measurement.value), sr


@pytest.mark.parametrize("kind", ["CR", "DX"])
def test_dicom_upload_answers_a_valid_sr_in_the_source_study(client, films, patient, kind, tmp_path):
    source_bytes = chest_dicom(films["PNEUMONIA"], kind=kind, patient=patient)
    source = dcmread(io.BytesIO(source_bytes))
    expected = post(client, source_bytes, "film.dcm").json()

    response = post(client, source_bytes, "film.dcm", accept=DICOM)

    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"] == DICOM
    WARNINGS.extend(dciodvfy(response.content, tmp_path))
    finding, probability, sr = sr_result(response.content)
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID != source.SeriesInstanceUID and sr.Modality == "SR"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber"):
        assert sr[keyword].value == source[keyword].value, keyword
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED",
                                                                             "PRELIMINARY")
    assert probability == pytest.approx(expected["probabilities"][expected["positive_class"]], abs=1e-5)
    assert finding == ("Present" if expected["prediction"] == expected["positive_class"] else "Absent")
    [reference] = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]\
        .ReferencedSOPSequence
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_sr_carries_algorithm_threshold_observer_and_notice(client, films, patient, tmp_path):
    response = post(client, chest_dicom(films["NORMAL"], patient=patient), "film.dcm", accept=DICOM)
    assert response.status_code == 200, response.text[:500]
    model = post(client, chest_dicom(films["NORMAL"], patient=patient), "film.dcm").json()
    text = _content_text(dcmread(io.BytesIO(response.content)).ContentSequence)
    assert f"Algorithm Name={model['model']['name']}" in text
    assert f"Algorithm Version={model['model']['version']}" in text
    assert "Algorithm Manufacturer=cxr-serve" in text
    assert f"Algorithm Parameters=decision threshold={model['threshold']:g}" in text
    assert "Observer Type=Device" in text and "Device Observer UID=" in text
    assert f"Comment={NOTICE}" in text
    assert "Pneumonia=" in text  # the qualitative evaluation, SNOMED CT 233604007


def test_warnings_travel_with_the_result(client, films, patient, tmp_path):
    """A flagged result (e.g. CXR_GATE=flag) keeps its warning in both the SR and the FHIR answer."""
    model = client.app.state.manager.current
    warning = "flagged by the input gate: test warning"
    prediction = Prediction(model=model, probabilities=np.array([0.3, 0.7], dtype=np.float32), timing_ms={},
                            warnings=[warning])
    source = chest_dicom(films["NORMAL"], patient=patient)
    sr_bytes = dicom_sr.render(prediction, source)
    dciodvfy(sr_bytes, tmp_path)
    assert f"Comment={warning}" in _content_text(dcmread(io.BytesIO(sr_bytes)).ContentSequence)
    report = DiagnosticReport.model_validate_json(fhir.render(prediction, source, "req-1"))
    observation, _ = _contained(report)
    assert [note.text for note in observation.note] == [NOTICE, warning]


def _content_text(sequence) -> str:
    """The content tree as 'Concept Name=value' lines (TEXT, CODE, UIDREF, NUM), recursively."""
    lines = []
    for item in sequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else "?"
        if "TextValue" in item:
            lines.append(f"{name}={item.TextValue}")
        elif "ConceptCodeSequence" in item:
            lines.append(f"{name}={item.ConceptCodeSequence[0].CodeMeaning}")
        elif "UID" in item:
            lines.append(f"{name}={item.UID}")
        if "ContentSequence" in item:
            lines.append(_content_text(item.ContentSequence))
    return "\n".join(lines)


def test_fhir_for_a_dicom_upload_links_the_imaging_study(client, films, patient):
    source_bytes = chest_dicom(films["PNEUMONIA"], patient=patient)
    expected = post(client, source_bytes, "film.dcm").json()

    response = post(client, source_bytes, "film.dcm", accept=FHIR)

    assert response.status_code == 200, response.text[:500]
    assert response.headers["content-type"] == FHIR
    report = DiagnosticReport.model_validate_json(response.content)  # parses back into the models
    assert report.status == "preliminary"
    study_uid = dcmread(io.BytesIO(source_bytes)).StudyInstanceUID
    assert [ref.identifier.value for ref in report.study] == [f"urn:oid:{study_uid}"]
    assert [ref.type for ref in report.study] == ["ImagingStudy"]
    observation, device = _contained(report)
    assert observation.status == "preliminary"
    assert observation.code.coding[0].code == "233604007"
    present = expected["prediction"] == expected["positive_class"]
    assert observation.valueCodeableConcept.coding[0].display == ("Present" if present else "Absent")
    probability = observation.component[0].valueQuantity.value
    assert float(probability) == pytest.approx(expected["probabilities"][expected["positive_class"]], abs=1e-5)
    assert float(observation.component[1].valueQuantity.value) == pytest.approx(expected["threshold"], abs=1e-5)
    assert observation.device.reference == f"#{device.id}"
    assert next(v.value for v in device.version) == expected["model"]["version"]
    assert [r.reference for r in report.result] == [f"#{observation.id}"]
    assert NOTICE in report.conclusion


def _contained(report: DiagnosticReport) -> tuple[Observation, Device]:
    kinds = {resource.get_resource_type(): resource for resource in report.contained}
    assert set(kinds) == {"Observation", "Device"}
    return (Observation.model_validate(kinds["Observation"].model_dump()),
            Device.model_validate(kinds["Device"].model_dump()))


def test_fhir_for_a_png_upload_has_no_study_reference(client, films):
    response = post(client, encode(films["NORMAL"], "PNG"), "film.png", accept=f"{FHIR}, {DICOM};q=0.5")
    assert response.status_code == 200, response.text[:500]
    report = DiagnosticReport.model_validate_json(response.content)
    assert report.study is None and report.status == "preliminary"


def test_sr_for_a_png_upload_is_415_before_the_model_runs(client, films):
    before = predictions_counted(client)
    response = post(client, encode(films["NORMAL"], "PNG"), "film.png", accept=DICOM)
    assert response.status_code == 415, response.text
    error = response.json()["error"]
    assert error["code"] == "dicom_required" and "DICOM upload" in error["message"]
    assert predictions_counted(client) == before


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "image/png, application/dicom;q=0"])
def test_unsupported_accept_is_406_before_the_model_runs(client, films, accept):
    before = predictions_counted(client)
    response = post(client, encode(films["NORMAL"], "PNG"), "film.png", accept=accept)
    assert response.status_code == 406, response.text
    error = response.json()["error"]
    assert error["code"] == "not_acceptable"
    assert all(media in error["message"] for media in ("application/json", DICOM, FHIR))
    assert predictions_counted(client) == before


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "application/*",
                                    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"])
def test_default_and_wildcards_answer_the_json_body(client, films, accept):
    response = post(client, encode(films["NORMAL"], "PNG"), "film.png", accept=accept)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert {"prediction", "probabilities", "threshold", "model", "request_id"} <= set(response.json())


@pytest.mark.parametrize(("accept", "chosen"), [
    ("application/dicom", DICOM), ("application/fhir+json", FHIR), ("APPLICATION/DICOM", DICOM),
    ("application/json;q=0.4, application/fhir+json;q=0.9", FHIR),
    ("application/json;q=0, */*", DICOM),  # the most specific range decides: JSON refused, */* takes the next
    ("application/*;q=0.5, application/fhir+json", FHIR),
    ("application/dicom;q=0.5, application/fhir+json;q=0.5", DICOM),  # ties: the server's order
])
def test_negotiation_follows_rfc_9110(accept, chosen):
    assert negotiate(accept) == chosen


def test_no_patient_data_in_errors_logs_or_metrics(client, films, patient, caplog):
    caplog.set_level(logging.DEBUG)
    source = chest_dicom(films["NORMAL"], patient=patient)
    tiny = chest_dicom(films["NORMAL"][:20, :20], patient=patient)  # refused: too small to be a radiograph
    bodies = [post(client, data, "film.dcm", accept=accept).text
              for data, accept in ((source, DICOM), (source, FHIR), (tiny, DICOM), (tiny, FHIR),
                                   (source[:400], DICOM))]
    seen = "\n".join([*bodies[2:], caplog.text, client.get("/metrics").text])
    assert "error" in bodies[2]
    for secret in patient.secrets():
        assert secret not in seen
