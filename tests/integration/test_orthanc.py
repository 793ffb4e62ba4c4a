"""Round trip through a real PACS: Debian's Orthanc (headless, generated configuration, free loopback ports)
sends a chest radiograph to cxr-serve (a real process with its DICOM node on), and the SR comes back into the
same study. Also: cxr-serve down when Orthanc sends (the send fails cleanly; after the start a resend works),
the SR equals /predict's answer for the same file, SIGTERM right after a send drains the node (that SR still
arrives), and the process log and /metrics never contain the patient's name, ID or birth date, nor UIDs."""

from __future__ import annotations

import io
import time

import highdicom as hd
import httpx
import pytest
from app_harness import free_port
from chest_dicom import chest_dicom, shrink
from image_factory import real_xray
from integration_support import GATE_SETTINGS, pick_films
from peers import dciodvfy, orthanc, start_cxr_serve
from pydicom import dcmread

pytestmark = pytest.mark.slow

NODE_AE = "CXR_SERVE"


def upload(rest: httpx.Client, data: bytes) -> dict[str, str]:
    response = rest.post("/instances", content=data)
    assert response.status_code == 200, response.text
    return response.json()


def send_to_cxr(rest: httpx.Client, instance: str) -> httpx.Response:
    return rest.post("/modalities/cxr/store", json={"Resources": [instance], "Synchronous": True})


def wait_for_srs(rest: httpx.Client, study: str, count: int = 1, timeout: float = 60.0) -> list[bytes]:
    """The SR instances in ``study`` (each in its own series), once there are ``count``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        instances = [instance for series in rest.get(f"/studies/{study}/series").json()
                     if series["MainDicomTags"].get("Modality") == "SR" for instance in series["Instances"]]
        if len(instances) >= count:
            return [rest.get(f"/instances/{instance}/file").content for instance in instances]
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} SR(s) arrived in study {study} within {timeout}s")


def wait_for_metrics(api: httpx.Client, line: str, timeout: float = 30.0) -> str:
    """/metrics once it shows ``line`` (the node counts a delivery just after the PACS has stored it)."""
    deadline = time.monotonic() + timeout
    while line not in (text := api.get("/metrics").text):
        assert time.monotonic() < deadline, f"/metrics never showed {line}"
        time.sleep(0.1)
    return text


def test_orthanc_round_trip(shipped_model, fullres_images, patient, tmp_path):
    http_port, dicom_port = free_port(), free_port()
    first = shrink(real_xray(next(p for p in fullres_images if p.parent.name == "PNEUMONIA")))
    gate_env = {f"CXR_{key.upper()}": value for key, value in GATE_SETTINGS.items()}
    with orthanc(tmp_path, {"cxr": (NODE_AE, "127.0.0.1", dicom_port)}) as pacs, pacs.client() as rest:
        # cxr-serve is not running yet: Orthanc's send fails, cleanly
        early = upload(rest, chest_dicom(first, patient=patient))
        failed = send_to_cxr(rest, early["ID"])
        assert failed.status_code >= 400, failed.text
        assert rest.get("/system").status_code == 200  # Orthanc itself is fine

        server = start_cxr_serve(tmp_path / "cxr-serve.log", http_port=http_port, dicom_port=dicom_port,
                                 CXR_DICOM_AE_TITLE=NODE_AE, CXR_DICOM_ALLOWED_CALLING_AETS=pacs.ae_title,
                                 CXR_DICOM_DESTINATION_HOST="127.0.0.1",
                                 CXR_DICOM_DESTINATION_PORT=str(pacs.dicom_port),
                                 CXR_DICOM_DESTINATION_AE_TITLE=pacs.ae_title, CXR_DICOM_TIMEOUT_S="10",
                                 **gate_env)
        try:
            with httpx.Client(base_url=server.url, timeout=60) as api:
                films = pick_films(fullres_images, lambda data: api.post(
                    "/predict", files={"file": ("film.dcm", data)}).status_code == 200)
                source_bytes = chest_dicom(films["PNEUMONIA"], patient=patient)
                expected = api.post("/predict", files={"file": ("film.dcm", source_bytes)}).json()
                stored = upload(rest, source_bytes)

                resent = send_to_cxr(rest, stored["ID"])  # the resend, now that cxr-serve is up
                assert resent.status_code == 200, resent.text

                [sr_bytes] = wait_for_srs(rest, stored["ParentStudy"])
                metrics = wait_for_metrics(api, 'cxr_dicom_sr_sent_total{outcome="sent"} 1.0')
            # SIGTERM right after Orthanc's send returned: the node drains, the SR still arrives
            again = upload(rest, chest_dicom(films["PNEUMONIA"], patient=patient,
                                             study_uid=dcmread(io.BytesIO(source_bytes)).StudyInstanceUID))
            assert send_to_cxr(rest, again["ID"]).status_code == 200
            warnings = dciodvfy(sr_bytes, tmp_path)
            source, sr = dcmread(io.BytesIO(source_bytes)), hd.sr.srread(io.BytesIO(sr_bytes))
            assert sr.StudyInstanceUID == source.StudyInstanceUID
            assert sr.SeriesInstanceUID != source.SeriesInstanceUID
            assert (sr.PatientID, str(sr.PatientName)) == (source.PatientID, str(source.PatientName))
            [group] = sr.content.get_image_measurement_groups()
            probability = float(group.get_measurements()[0].value)
            finding = group.get_qualitative_evaluations()[0].value.meaning
            assert probability == pytest.approx(expected["probabilities"][expected["positive_class"]], abs=1e-5)
            assert finding == ("Present" if expected["prediction"] == expected["positive_class"] else "Absent")
        finally:
            code = server.process.stop(60)
        assert len(wait_for_srs(rest, stored["ParentStudy"], count=2, timeout=10)) == 2
        log = server.process.log_text()
        assert code == 0, log[-3000:]
        assert "DICOM node stopped; every accepted image was answered" in log
        assert "Traceback" not in log
        for secret in [*patient.secrets(), source.StudyInstanceUID, source.SOPInstanceUID]:
            assert secret not in log and secret not in metrics, secret
    if warnings:
        print("dciodvfy warnings:", *warnings, sep="\n")
