"""DICOMweb and the heatmap through real PACS: Debian's Orthanc with its DICOMweb and web viewer plugins.

Orthanc "pacs" routes a CR film to cxr-serve by STOW-RS (``/dicom-web/servers/cxr/stow``, with the API key) and
another by C-STORE; cxr-serve sends SR + heatmap Secondary Capture back to "pacs" by C-STORE and to a second
Orthanc, "archive" (HTTP basic authentication on), by STOW-RS with credentials from a file. Both films' results
land in their own study in both PACS; dciodvfy passes SR and SC; the SR's reference to the SC resolves in the
PACS (REST lookup and WADO-RS). Then the heatmap series opened in Orthanc's web viewer in headless Chromium:
a screenshot kept as a test artifact (path printed), and its pixels checked for the heatmap's colours against
the film's own series in the same viewer. No patient identifier in cxr-serve's log or /metrics.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from app_harness import free_port
from chest_dicom import chest_dicom
from headless_chromium import headless_chromium
from integration_support import GATE_SETTINGS, pick_films
from peers import dciodvfy, orthanc, orthanc_plugins, start_cxr_serve
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from test_dicom_heatmap import coloured_fraction, heatmap_references

pytestmark = pytest.mark.slow

NODE_AE = "CXR_SERVE"
API_KEY = "orthanc-stow-key-0123456789abcdef"
ARCHIVE_USER = ("cxr", "archive-password-42")


def results_in(rest: httpx.Client, study: str, timeout: float = 90.0) -> dict[str, Dataset]:
    """{"SR": ..., "OT": ...} of ``study`` once both AI series are there (the SC's modality is OT)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        for series in rest.get(f"/studies/{study}/series").json():
            modality = series["MainDicomTags"].get("Modality")
            if modality in ("SR", "OT") and series["Instances"]:
                found[modality] = series["Instances"][0]
        if len(found) == 2:
            return {modality: dcmread(io.BytesIO(rest.get(f"/instances/{instance}/file").content))
                    for modality, instance in found.items()}
        time.sleep(0.3)
    raise AssertionError(f"SR + SC did not both arrive in study {study} within {timeout}s")


def part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    with headless_chromium(tmp_path / "chromium-profile") as driver:
        yield driver


def viewer_shot(driver, url: str, path: Path, settled: float, timeout: float = 60.0) -> float:
    """Opens ``url`` (Orthanc's web viewer on one series), waits until the coloured share of the screen stops
    changing (the image is drawn), keeps the screenshot at ``path``; returns that share."""
    driver.get(url)
    deadline, last = time.monotonic() + timeout, -1.0
    while True:
        time.sleep(1.0)
        driver.save_screenshot(str(path))
        share = coloured_fraction(np.asarray(Image.open(path).convert("RGB")))
        if (share >= settled and abs(share - last) < 0.002) or time.monotonic() > deadline:
            return share
        last = share


def test_film_by_stow_rs_and_by_c_store_comes_back_as_sr_and_heatmap(shipped_model, fullres_images, patient,
                                                                    tmp_path, browser):
    dicomweb, viewer = orthanc_plugins("OrthancDicomWeb"), orthanc_plugins("OrthancWebViewer")
    http_port, dicom_port = free_port(), free_port()
    auth_file = tmp_path / "archive-credentials"
    auth_file.write_text(f"Basic {ARCHIVE_USER[0]}:{ARCHIVE_USER[1]}\n")
    gate_env = {f"CXR_{key.upper()}": value for key, value in GATE_SETTINGS.items()}
    (tmp_path / "pacs").mkdir()
    (tmp_path / "archive").mkdir()
    stow_server = {"Url": f"http://127.0.0.1:{http_port}/dicomweb/", "HttpHeaders": {"X-API-Key": API_KEY}}
    with orthanc(tmp_path / "pacs", {"cxr": (NODE_AE, "127.0.0.1", dicom_port)}, plugins=dicomweb + viewer,
                 DicomWeb={"Enable": True, "Root": "/dicom-web/", "Servers": {"cxr": stow_server}}) as pacs, \
            orthanc(tmp_path / "archive", {}, plugins=dicomweb, users=dict([ARCHIVE_USER]),
                    DicomWeb={"Enable": True, "Root": "/dicom-web/"}) as archive, \
            pacs.client() as rest, archive.client() as archived:
        server = start_cxr_serve(tmp_path / "cxr-serve.log", http_port=http_port, dicom_port=dicom_port,
                                 CXR_DICOM_AE_TITLE=NODE_AE, CXR_DICOM_ALLOWED_CALLING_AETS=pacs.ae_title,
                                 CXR_DICOM_DESTINATION_HOST="127.0.0.1",
                                 CXR_DICOM_DESTINATION_PORT=str(pacs.dicom_port),
                                 CXR_DICOM_DESTINATION_AE_TITLE=pacs.ae_title, CXR_DICOM_TIMEOUT_S="10",
                                 CXR_DICOMWEB_RECEIVE="true", CXR_API_KEYS=API_KEY,
                                 CXR_DICOMWEB_DESTINATION_URL=f"{archive.url}/dicom-web",
                                 CXR_DICOMWEB_AUTH_FILE=str(auth_file), **gate_env)
        try:
            with httpx.Client(base_url=server.url, timeout=60, headers={"X-API-Key": API_KEY}) as api:
                films = pick_films(fullres_images, lambda data: api.post(
                    "/predict", files={"file": ("film.dcm", data)}).status_code == 200)
                sent = {"stow": chest_dicom(films["PNEUMONIA"], patient=patient),
                        "c-store": chest_dicom(films["NORMAL"], patient=patient)}
                stored = {route: rest.post("/instances", content=data).json() for route, data in sent.items()}

                by_stow = rest.post("/dicom-web/servers/cxr/stow",
                                    json={"Resources": [stored["stow"]["ID"]], "Synchronous": True})
                assert by_stow.status_code == 200, by_stow.text
                by_dimse = rest.post("/modalities/cxr/store",
                                     json={"Resources": [stored["c-store"]["ID"]], "Synchronous": True})
                assert by_dimse.status_code == 200, by_dimse.text

                for route, data in sent.items():
                    source = dcmread(io.BytesIO(data))
                    study = stored[route]["ParentStudy"]
                    back = results_in(rest, study)  # by C-STORE, into the routing PACS
                    sr, sc = back["SR"], back["OT"]
                    for obj in (sr, sc):
                        dciodvfy(part10(obj), tmp_path)
                        assert obj.StudyInstanceUID == source.StudyInstanceUID
                        assert obj.PatientID == source.PatientID
                    assert sc.BurnedInAnnotation == "YES" and (sc.Rows, sc.Columns) == (source.Rows, source.Columns)
                    lungs = sc.pixel_array[sc.Rows // 5 : 4 * sc.Rows // 5, sc.Columns // 8 : 7 * sc.Columns // 8]
                    assert coloured_fraction(lungs) > 0.05, route  # a grey film: 0
                    # the SR's reference to the SC resolves in the PACS: REST lookup and WADO-RS
                    [target] = heatmap_references(sr)
                    [found] = rest.post("/tools/lookup", content=target).json()
                    assert found["Type"] == "Instance"
                    assert rest.get(f"/instances/{found['ID']}/study").json()["ID"] == study
                    wado = rest.get(f"/dicom-web/studies/{sc.StudyInstanceUID}/series/{sc.SeriesInstanceUID}"
                                    f"/instances/{target}", headers={"Accept": "multipart/related; "
                                                                    "type=\"application/dicom\""})
                    assert wado.status_code == 200
                    # and by STOW-RS (basic auth from the file) into the archive, the same study
                    archive_study = archived.post("/tools/lookup", content=source.StudyInstanceUID).json()
                    assert archive_study, f"{route}: nothing reached the archive"
                    again = results_in(archived, archive_study[0]["ID"])
                    assert {again["SR"].SOPInstanceUID, again["OT"].SOPInstanceUID} == {sr.SOPInstanceUID,
                                                                                        sc.SOPInstanceUID}
                metrics = api.get("/metrics").text

            # the heatmap series in Orthanc's web viewer, against the film's own series as the grey baseline
            study = stored["stow"]["ParentStudy"]
            series = {s["MainDicomTags"]["Modality"]: s["ID"] for s in rest.get(f"/studies/{study}/series").json()}
            viewer_url = f"{pacs.url}/web-viewer/app/viewer.html?series="
            film_shot, heat_shot = tmp_path / "viewer-film.png", tmp_path / "viewer-heatmap.png"
            grey = viewer_shot(browser, viewer_url + series["CR"], film_shot, settled=0.0)
            coloured = viewer_shot(browser, viewer_url + series["OT"], heat_shot, settled=0.05)
            artifacts = Path(os.environ.get("CXR_TEST_ARTIFACTS", tmp_path))
            artifacts.mkdir(parents=True, exist_ok=True)
            if artifacts != tmp_path:
                shutil.copy(heat_shot, artifacts / heat_shot.name)
            print(f"web viewer screenshots: {heat_shot} (heatmap, coloured {coloured:.1%}), "
                  f"{film_shot} (film, coloured {grey:.1%})")
            assert coloured > 0.05 and coloured > 5 * grey, (coloured, grey)
        finally:
            code = server.process.stop(60)
        log = server.process.log_text()
        assert code == 0, log[-3000:]
        assert "Traceback" not in log
        for secret in [*patient.secrets(), *(dcmread(io.BytesIO(d)).StudyInstanceUID for d in sent.values())]:
            assert secret not in log and secret not in metrics, secret
