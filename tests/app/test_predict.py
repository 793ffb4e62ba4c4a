"""POST /predict and /predict/batch over real HTTP with the shipped model and real X-rays."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from app_harness import Running, reference_probabilities
from image_factory import encode, make_dicom, real_xray

from app.dataplane import NOTICE

TOL = 1e-4  # same bytes, same preprocessing, same weights: only batch-size numerics may differ


def predict(server: Running, data: bytes, filename: str = "x", **headers: str) -> dict:
    response = server.client.post("/predict", files={"file": (filename, data)}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def probabilities(body: dict, class_names: list[str]) -> np.ndarray:
    return np.array([body["probabilities"][name] for name in class_names])


@pytest.fixture(scope="module")
def xray(fullres_images) -> np.ndarray:
    return real_xray(fullres_images[-1], size=384)  # a PNEUMONIA film


@pytest.fixture(scope="module")
def class_names(reference) -> list[str]:
    return reference.metadata.class_names


def test_response_contract(server, reference, shipped_model, fullres_images):
    data = fullres_images[0].read_bytes()
    response = server.client.post("/predict", files={"file": ("film.jpeg", data, "image/jpeg")},
                                  headers={"X-Request-ID": "ward-7:req-42"})
    assert response.status_code == 200
    body = response.json()
    meta = reference.metadata
    assert set(body) == {"prediction", "probabilities", "threshold", "operating_point", "calibration",
                         "positive_class", "model", "request_id", "timing_ms", "gate", "warnings", "notice"}
    # v2 has no named points: its one point is the stored validation threshold, after its temperature alone
    assert body["operating_point"] == "default"
    assert body["calibration"] == {"temperature": meta.temperature, "site_calibration": None}
    assert body["gate"]["passed"] is True and body["warnings"] == []
    assert response.headers["x-request-id"] == body["request_id"] == "ward-7:req-42"
    assert list(body["probabilities"]) == meta.class_names
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["threshold"] == meta.decision_threshold
    positive = body["probabilities"][meta.positive_class] >= meta.decision_threshold
    assert body["prediction"] == (meta.positive_class if positive else "NORMAL")
    assert body["model"] == {"name": "pneumonia", "version": shipped_model.parent.name, "runtime": "keras",
                             "sha256": hashlib.sha256(shipped_model.read_bytes()).hexdigest()}
    timing = body["timing_ms"]
    assert set(timing) == {"decode", "queue", "inference", "total"}
    assert all(v >= 0 for v in timing.values())
    assert timing["total"] >= timing["decode"]
    assert body["notice"] == NOTICE and "not a diagnosis" in NOTICE


def test_request_ids_are_generated_when_missing_or_unusable(server, fullres_images):
    data = fullres_images[0].read_bytes()
    generated = predict(server, data)["request_id"]
    assert len(generated) == 32
    too_long = predict(server, data, **{"X-Request-ID": "x" * 500})["request_id"]
    assert too_long != "x" * 500 and len(too_long) == 32


def test_api_equals_the_in_process_model_on_real_full_resolution_uploads(server, reference, fullres_images,
                                                                         class_names):
    uploads = [p.read_bytes() for p in fullres_images]
    expected = reference_probabilities(reference, uploads)
    for path, data, want in zip(fullres_images, uploads, expected, strict=True):
        body = predict(server, data, path.name)
        np.testing.assert_allclose(probabilities(body, class_names), want, atol=TOL, err_msg=path.name)
    # the model is a real classifier on these films, not a constant
    assert expected[:, 1].max() - expected[:, 1].min() > 0.5


def test_concurrent_requests_each_get_their_own_answer(server, reference, fullres_images, class_names):
    uploads = [p.read_bytes() for p in fullres_images] * 2
    expected = reference_probabilities(reference, uploads)
    calls_before, images_before = model_calls(server)
    with ThreadPoolExecutor(16) as pool:
        bodies = list(pool.map(lambda d: predict(server, d), uploads))
    for body, want in zip(bodies, expected, strict=True):
        np.testing.assert_allclose(probabilities(body, class_names), want, atol=TOL)
    calls, images = model_calls(server)
    assert images - images_before == len(uploads)
    assert calls - calls_before < len(uploads), "concurrent requests should share model calls"


def model_calls(server: Running) -> tuple[float, float]:
    """(model calls, images) so far, from the batch size histogram."""
    from prometheus_client.parser import text_string_to_metric_families

    family = next(f for f in text_string_to_metric_families(server.client.get("/metrics").text)
                  if f.name == "cxr_batch_size")
    values = {s.name: s.value for s in family.samples}
    return values["cxr_batch_size_count"], values["cxr_batch_size_sum"]


def test_the_compiled_function_never_retraces_after_warm_up(server):
    active = server.app.state.manager.current
    traced = active.batcher.predict.traced
    assert traced.experimental_get_tracing_count() == len(active.batcher.buckets)


@pytest.mark.parametrize("case", ["PNG/L", "PNG/RGB", "PNG/RGBA", "PNG/I;16", "TIFF/L", "BMP/L", "GIF/L", "JPEG/L",
                                  "JPEG/RGB"])
def test_every_format_matches_the_in_process_model(server, reference, xray, class_names, case):
    fmt, mode = case.split("/")
    data = encode(xray, fmt, mode)
    body = predict(server, data, f"film.{fmt.lower()}")
    np.testing.assert_allclose(probabilities(body, class_names), reference_probabilities(reference, [data])[0],
                               atol=TOL)


def test_lossless_formats_agree_with_each_other(server, xray, class_names):
    results = [probabilities(predict(server, encode(xray, fmt, mode)), class_names)
               for fmt, mode in (("PNG", "L"), ("TIFF", "L"), ("BMP", "L"), ("PNG", "RGB"), ("PNG", "I;16"))]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], atol=0.02)


def test_dicom_monochrome1_and_monochrome2_give_the_same_prediction(server, reference, xray, class_names):
    png = probabilities(predict(server, encode(xray, "PNG")), class_names)
    bodies = [predict(server, make_dicom(xray, photometric), "film.dcm")
              for photometric in ("MONOCHROME2", "MONOCHROME1")]
    assert bodies[0]["prediction"] == bodies[1]["prediction"]
    m2, m1 = (probabilities(b, class_names) for b in bodies)
    np.testing.assert_allclose(m1, m2, atol=0.02)
    np.testing.assert_allclose(m2, png, atol=0.02)  # the DICOM displays the same picture as the PNG
    np.testing.assert_allclose(m2, reference_probabilities(reference, [make_dicom(xray)])[0], atol=TOL)


def test_batch_endpoint_answers_each_file_in_order(server, reference, xray, class_names):
    good_png, good_jpeg, dicom = encode(xray, "PNG"), encode(xray, "JPEG"), make_dicom(xray, "MONOCHROME1")
    files = [("files", ("a.png", good_png)), ("files", ("notes.txt", b"not an image")),
             ("files", ("b.jpg", good_jpeg)), ("files", ("broken.png", good_png[:100])),
             ("files", ("c.dcm", dicom))]
    response = server.client.post("/predict/batch", files=files, headers={"X-Request-ID": "batch-1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == "batch-1"
    results = body["results"]
    assert [r["filename"] for r in results] == ["a.png", "notes.txt", "b.jpg", "broken.png", "c.dcm"]
    assert [r["status"] for r in results] == [200, 415, 200, 400, 200]
    assert results[1]["error"]["code"] == "unsupported_format" and results[1]["result"] is None
    assert results[3]["error"]["code"] == "undecodable_image"
    expected = reference_probabilities(reference, [good_png, good_jpeg, dicom])
    for result, want in zip((results[0], results[2], results[4]), expected, strict=True):
        assert result["error"] is None
        np.testing.assert_allclose(probabilities(result["result"], class_names), want, atol=TOL)


def test_batch_limits(server, xray):
    png = encode(xray, "PNG")
    too_many = [("files", (f"{i}.png", png)) for i in range(9)]  # the test server allows 8
    response = server.client.post("/predict/batch", files=too_many)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_many_files"
    assert server.client.post("/predict/batch", files=[]).status_code == 422
