"""Named operating points over real HTTP: a temporary model store holds the shipped v2 and a site-calibrated copy
(v3: the same weights, a logistic recalibration of the logit and two named thresholds), served by the real
runtime. Every answer must equal the recalibration computed here by hand, decided by the point's threshold."""

from __future__ import annotations

import base64
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from app_harness import SERVER_SETTINGS, Running, serve, service_command
from fhir.resources.diagnosticreport import DiagnosticReport
from image_factory import make_dicom
from pydicom import dcmread
from pydicom.uid import generate_uid
from site_store import make_site_store
from sqlalchemy import select

from app.audit.models import AuditRecord
from app.model_manager import configured_point_problem
from app.settings import Settings, SettingsError
from model_store.artifact import load_artifact
from model_store.calibration import apply_temperature
from model_store.imaging import decode
from model_store.preprocessing import preprocess

SITE = {"intercept": -0.6, "slope": 0.8, "method": "logistic"}
TOL = 1e-4  # same bytes, same weights, the float32 runtime: only batch-size numerics may differ
# the gate is not what these tests are about; off, every film gets an answer
SETTINGS = {**SERVER_SETTINGS, "gate": "off", "max_batch_files": 16}


def by_hand(raw: np.ndarray, temperature: float, positive: int) -> np.ndarray:
    """P(positive) at the site, written out: the temperature, then logit(p_site) = a + b logit(p)."""
    p = apply_temperature(raw, temperature)[:, positive].astype(np.float64)
    logit = SITE["intercept"] + SITE["slope"] * np.log(p / (1 - p))
    return 1 / (1 + np.exp(-logit))


def split_between(values: np.ndarray, low: int, high: int) -> float:
    """A threshold in the widest gap between sorted ``values`` at ranks low..high: no film lies near it."""
    ordered = np.sort(values)
    i = max(range(low, high), key=lambda k: ordered[k + 1] - ordered[k])
    return float((ordered[i] + ordered[i + 1]) / 2)


@pytest.fixture(scope="module")
def films(xray_224_dir: Path) -> list[bytes]:
    folder = xray_224_dir / "test"
    files = sorted(folder.glob("NORMAL/*.jpeg"))[:5] + sorted(folder.glob("PNEUMONIA/*.jpeg"))[:5]
    return [p.read_bytes() for p in files]


@pytest.fixture(scope="module")
def site(shipped_model: Path, films: list[bytes], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A store with v2 (copied) and v3 = v2 site-calibrated, its thresholds placed so the points disagree."""
    base = load_artifact(shipped_model)
    meta = base.metadata
    spec = meta.preprocessing
    batch = np.stack([preprocess(decode(d, min_size=2 * spec.input_size, max_pixels=50_000_000), spec)
                      for d in films])
    expected = by_hand(np.asarray(base.model(batch, training=False)), meta.temperature, meta.positive_index)
    points = {"screening": split_between(expected, 1, 4), "balanced": split_between(expected, 5, 8)}
    store = make_site_store(tmp_path_factory.mktemp("store"), shipped_model, SITE, points)
    return {"store": store, "expected": expected, "points": points, "temperature": meta.temperature,
            "positive": meta.positive_class, "base_threshold": meta.decision_threshold}


@pytest.fixture(scope="module")
def server(site: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The site version (the latest in the store), no CXR_OPERATING_POINT: its own default, screening."""
    folder = tmp_path_factory.mktemp("audit")
    with serve(Settings(**SETTINGS, model_store=site["store"], audit_path=folder / "audit.db")) as running:
        yield running


def predict(server: Running, data: bytes, point: str | None = None, **headers: str):
    params = {"operating_point": point} if point is not None else {}
    return server.client.post("/predict", files={"file": ("film.jpeg", data)}, params=params, headers=headers)


def test_answers_match_the_hand_computed_recalibration_at_each_point(server, site, films):
    decided = {}
    for point in (None, "screening", "balanced"):
        name = point or "screening"  # the site version's default
        threshold = site["points"][name]
        for data, want in zip(films, site["expected"], strict=True):
            response = predict(server, data, point)
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["probabilities"][site["positive"]] == pytest.approx(want, abs=TOL)
            assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
            assert body["operating_point"] == name and body["threshold"] == pytest.approx(threshold)
            assert body["prediction"] == (site["positive"] if want >= threshold else "NORMAL")
            assert body["calibration"] == {"temperature": pytest.approx(site["temperature"]),
                                           "site_calibration": SITE}
            assert body["model"]["version"] == "3"
        decided[name] = [want >= threshold for want in site["expected"]]
    # the points really decide differently on these films, so a point ignored would fail above
    assert decided["screening"] != decided["balanced"]


def test_batch_answers_at_the_requested_point(server, site, films):
    files = [("files", (f"{i}.jpeg", data)) for i, data in enumerate(films[:4])]
    response = server.client.post("/predict/batch", files=files, params={"operating_point": "balanced"})
    assert response.status_code == 200, response.text
    for item, want in zip(response.json()["results"], site["expected"][:4], strict=True):
        result = item["result"]
        assert result["operating_point"] == "balanced"
        assert result["threshold"] == pytest.approx(site["points"]["balanced"])
        assert result["prediction"] == (site["positive"] if want >= site["points"]["balanced"] else "NORMAL")


@pytest.mark.parametrize("route", ["/predict", "/predict/batch"])
def test_an_unknown_point_is_422_with_the_names_that_exist(server, films, route):
    field = "file" if route == "/predict" else "files"
    response = server.client.post(route, files={field: ("film.jpeg", films[0])},
                                  params={"operating_point": "sensitive"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unknown_operating_point"
    assert error["details"] == {"available": ["balanced", "screening"]}
    assert "'sensitive'" in error["message"] and "balanced, screening" in error["message"]


def infer(server: Running, films: list[bytes], parameters: dict | None = None):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(films)],
                        "data": [base64.b64encode(d).decode() for d in films]}],
            **({"parameters": parameters} if parameters is not None else {})}
    return server.client.post("/v2/models/pneumonia/infer", json=body)


def test_v2_request_parameter_picks_the_point_and_the_response_names_it(server, site, films):
    response = infer(server, films, {"operating_point": "balanced"})
    assert response.status_code == 200, response.text
    body = response.json()
    threshold = site["points"]["balanced"]
    outputs = {o["name"]: o["data"] for o in body["outputs"]}
    positive = np.array(outputs["probabilities"]).reshape(len(films), 2)[:, 1]
    np.testing.assert_allclose(positive, site["expected"], atol=TOL)
    assert outputs["label"] == [site["positive"] if p >= threshold else "NORMAL" for p in site["expected"]]
    parameters = body["parameters"]
    assert parameters["operating_point"] == "balanced" and parameters["threshold"] == pytest.approx(threshold)
    assert parameters["temperature"] == pytest.approx(site["temperature"])
    assert {k: parameters[f"site_calibration_{k}"] for k in SITE} == SITE
    default = infer(server, films[:1]).json()["parameters"]
    assert default["operating_point"] == "screening"
    refused = infer(server, films[:1], {"operating_point": "nope"})
    assert refused.status_code == 422 and "balanced, screening" in refused.json()["error"]
    assert infer(server, films[:1], {"operating_point": 3}).status_code == 400
    metadata = server.client.get("/v2/models/pneumonia").json()["parameters"]
    assert metadata["operating_points"] == pytest.approx(site["points"])
    assert metadata["default_operating_point"] == "screening"


def dicom_film(data: bytes) -> bytes:
    """A real film as a DICOM object with the study, series and instance UIDs an SR must reference."""
    ds = dcmread(io.BytesIO(make_dicom(decode(data, min_size=1024, max_pixels=50_000_000))))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "Test^Site", "SITE-1"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_sr_and_fhir_carry_the_point_and_the_calibration(server, site, films):
    source = dicom_film(films[-1])
    sr = predict(server, source, "balanced", Accept="application/dicom")
    assert sr.status_code == 200, sr.text
    parameters = [str(item.TextValue) for item in _walk(dcmread(io.BytesIO(sr.content)).ContentSequence)
                  if "ConceptNameCodeSequence" in item
                  and item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"]
    assert "operating point=balanced" in parameters
    assert f"decision threshold={site['points']['balanced']:g}" in parameters
    assert f"temperature={site['temperature']:g}" in parameters
    assert "site calibration=logistic intercept=-0.6 slope=0.8" in parameters

    fhir = predict(server, source, "screening", Accept="application/fhir+json")
    assert fhir.status_code == 200, fhir.text
    report = DiagnosticReport.model_validate_json(fhir.content)
    observation = next(r for r in report.contained if r.get_resource_type() == "Observation")
    components = {c.code.text: c for c in observation.component}
    assert components["Operating point"].valueString == "screening"
    assert float(components["Decision threshold"].valueQuantity.value) == pytest.approx(
        site["points"]["screening"], abs=1e-6)
    assert components["Calibration"].valueString == (
        f"temperature {site['temperature']:g}; site calibration logistic (intercept -0.6, slope 0.8)")
    assert "at operating point screening" in report.conclusion


def _walk(sequence):
    for item in sequence:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def test_audit_records_and_monitoring_carry_the_point(server, site, films):
    client, audit = server.client, server.app.state.audit
    ids = {}
    for point in ("screening", "balanced"):
        for i, data in enumerate(films):
            request_id = f"op-{point}-{i}"
            assert predict(server, data, point, **{"X-Request-ID": request_id}).status_code == 200
            ids[request_id] = (point, i)
    assert audit.writer.flush(30)
    with audit.engine.connect() as connection:
        rows = {r["request_id"]: r for r in connection.execute(
            select(AuditRecord).where(AuditRecord.request_id.in_(list(ids)))).mappings()}
    assert set(rows) == set(ids)
    for request_id, (point, _) in ids.items():
        row = rows[request_id]
        assert row["operating_point"] == point and row["threshold"] == pytest.approx(site["points"][point])
        assert row["calibration"] == {"temperature": pytest.approx(site["temperature"]), "site_calibration": SITE}
    # feedback: the first five films are NORMAL, the last five PNEUMONIA; each point has its own confusion matrix
    for request_id, (_, i) in ids.items():
        label = "NORMAL" if i < 5 else "PNEUMONIA"
        assert client.post("/feedback", json={"request_id": request_id, "label": label}).status_code == 201
    figures = client.get("/monitoring").json()["by_operating_point"]
    for point in ("screening", "balanced"):
        said = site["expected"] >= site["points"][point]
        truth = np.arange(len(films)) >= 5
        want = {"tp": int((said & truth).sum()), "fp": int((said & ~truth).sum()),
                "tn": int((~said & ~truth).sum()), "fn": int((~said & truth).sum())}
        assert figures[point]["confusion_matrix"] == want, point


def test_models_lists_each_versions_points_calibration_and_provenance(server, site):
    body = server.client.get("/models").json()
    assert body["active_version"] == "3" and body["default_operating_point"] == "screening"
    assert body["operating_points"] == pytest.approx(site["points"])
    assert body["calibration"]["site_calibration"] == SITE
    assert body["provenance"]["base_version"] == 2
    versions = {v["version"]: v for v in body["version_details"]}
    assert set(versions) == {2, 3}
    assert versions[2]["operating_points"] == {"default": pytest.approx(site["base_threshold"])}
    assert versions[2]["default_operating_point"] == "default" and versions[2]["provenance"] == {}
    assert versions[2]["calibration"]["site_calibration"] is None
    assert versions[3]["operating_points"] == pytest.approx(site["points"])
    assert versions[3]["provenance"]["films"] == {"NORMAL": 5}


def test_rollback_to_the_base_version_answers_at_its_stored_threshold(server, site, films):
    client = server.client
    try:
        assert client.post("/admin/reload", json={"version": 2}).status_code == 200
        body = predict(server, films[0]).json()
        assert body["operating_point"] == "default"
        assert body["threshold"] == pytest.approx(site["base_threshold"])
        assert body["calibration"]["site_calibration"] is None
        refused = predict(server, films[0], "screening")
        assert refused.status_code == 422 and refused.json()["error"]["details"] == {"available": ["default"]}
    finally:
        assert client.post("/admin/reload", json={"version": 3}).status_code == 200


@pytest.fixture(scope="module")
def configured(site: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("audit-configured")
    settings = Settings(**SETTINGS, model_store=site["store"], operating_point="balanced",
                        audit_path=folder / "audit.db")
    with serve(settings) as running:
        yield running


def test_cxr_operating_point_is_the_default_and_a_reload_without_it_is_refused(configured, site, films):
    client = configured.client
    body = predict(configured, films[-1]).json()
    assert body["operating_point"] == "balanced"
    assert body["threshold"] == pytest.approx(site["points"]["balanced"])
    assert predict(configured, films[-1], "screening").json()["operating_point"] == "screening"
    refused = client.post("/admin/reload", json={"version": 2})
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert error["code"] == "operating_point_unavailable" and error["details"] == {"available": ["default"]}
    assert "CXR_OPERATING_POINT='balanced'" in error["message"] and "version 3 keeps serving" in error["message"]
    assert client.get("/models").json()["active_version"] == "3"
    assert predict(configured, films[-1]).json()["operating_point"] == "balanced"


def test_start_up_with_a_point_the_version_lacks_exits_with_a_clear_error(site, tmp_path):
    settings = Settings(**SETTINGS, model_store=site["store"], model_version="2", operating_point="screening")
    problem = configured_point_problem(settings)
    assert problem is not None and "'screening'" in problem and "version 2" in problem and "default" in problem
    assert configured_point_problem(Settings(**SETTINGS, model_store=site["store"],
                                             operating_point="screening")) is None
    env = {**os.environ, "CXR_MODEL_STORE": str(site["store"]), "CXR_MODEL_VERSION": "2",
           "CXR_OPERATING_POINT": "screening", "CXR_AUDIT_ENABLED": "false", "CXR_PORT": "1"}
    done = subprocess.run(service_command(), check=False, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "CXR_OPERATING_POINT='screening' is not an operating point of pneumonia version 2" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_malformed_point_name_is_a_settings_error(tmp_path):
    with pytest.raises(SettingsError, match="CXR_OPERATING_POINT"):
        Settings.load(operating_point="Screening Point!")
    assert Settings(operating_point="  ").operating_point is None


def test_openapi_documents_the_point(server):
    spec = server.client.get("/openapi.json").json()
    for path in ("/predict", "/predict/batch"):
        names = [p["name"] for p in spec["paths"][path]["post"]["parameters"]]
        assert "operating_point" in names, path
    schemas = spec["components"]["schemas"]
    assert {"operating_point", "threshold", "calibration"} <= set(schemas["PredictionResponse"]["required"])
    assert {"temperature", "site_calibration"} <= set(schemas["Calibration"]["properties"])
    assert {"operating_points", "default_operating_point", "version_details"} <= set(
        schemas["ModelsResponse"]["required"])
    assert "409" in spec["paths"]["/admin/reload"]["post"]["responses"]
