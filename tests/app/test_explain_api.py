"""Explanations over HTTP (/predict?explain=true, /predict/batch?explain=true) and the review page's routes, against
the real app behind uvicorn: the shipped model, and a model without a convolution behind API keys."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from app_harness import SERVER_SETTINGS, Running, serve
from image_factory import make_dicom
from PIL import Image

from app.dataplane import NOTICE
from app.explain import GRID_SIZE, branch_target_layers
from app.settings import Settings
from model_store.artifact import ModelMetadata, save_artifact
from model_store.preprocessing import PreprocessingSpec

KEY = "explain-test-key-0123456789"


def settings(**overrides: object) -> Settings:
    # the input gate and the audit trail have their own tests; these isolate the explanation path
    wanted = {**SERVER_SETTINGS, "gate": "off", "audit_enabled": False, **overrides}
    return Settings(**{name: value for name, value in wanted.items() if name in Settings.model_fields})


@pytest.fixture(scope="module")
def explaining(shipped_model: Path) -> Iterator[Running]:
    with serve(settings()) as running:
        yield running


@pytest.fixture(scope="module")
def no_conv_keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A dense-only model (nothing for Grad-CAM to explain), with API keys configured."""
    store = tmp_path_factory.mktemp("store")
    model = keras.Sequential([keras.Input((32, 32, 1), name="image"), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax", name="probabilities")], name="mlp")
    meta = ModelMetadata(name="pneumonia", version="1", class_names=["NORMAL", "PNEUMONIA"],
                         preprocessing=PreprocessingSpec(input_size=32))
    save_artifact(model, meta, store / "pneumonia" / "1" / "model.h5", include_optimizer=False)
    with serve(settings(model_store=store, api_keys=[KEY])) as running:
        yield running


def upload(path: Path) -> dict[str, tuple[str, bytes]]:
    return {"file": (path.name, path.read_bytes())}


def test_opening_the_review_page_traces_the_gradient_function_ahead_of_the_first_explanation(explaining):
    # first in this file: the module's server has not explained anything yet
    dataplane, current = explaining.app.state.dataplane, explaining.app.state.manager.current
    assert not dataplane.explainers.ready_for(current)
    assert explaining.client.get("/ui").status_code == 200
    deadline = time.monotonic() + 60
    while not dataplane.explainers.ready_for(current):
        assert time.monotonic() < deadline, "the explainer was not warmed within 60 s of opening the page"
        time.sleep(0.1)


def test_explain_true_adds_a_grid_and_an_overlay_on_the_upload_geometry(explaining, reference, fullres_images):
    film = fullres_images[-1]
    plain = explaining.client.post("/predict", files=upload(film))
    explained = explaining.client.post("/predict?explain=true", files=upload(film))
    assert plain.status_code == explained.status_code == 200, explained.text
    assert "explanation" not in plain.json()  # plain predictions are unchanged
    body = explained.json()
    assert body["probabilities"] == pytest.approx(plain.json()["probabilities"], abs=1e-6)
    assert body["prediction"] == plain.json()["prediction"]
    explanation = body["explanation"]
    assert explanation["method"] == "grad-cam"
    # the last convolution of every branch: one for a single network, one per member of an ensemble (v2)
    assert explanation["layer"] == "+".join(layer.name for layer in branch_target_layers(reference.model))
    grid = np.array(explanation["grid"])
    assert grid.shape == (GRID_SIZE, GRID_SIZE) and grid.min() >= 0 and 0.5 < grid.max() <= 1
    overlay = Image.open(io.BytesIO(base64.b64decode(explanation["overlay_png"])))
    assert overlay.format == "PNG" and overlay.mode == "RGBA"
    assert overlay.size == (explanation["width"], explanation["height"]) and max(overlay.size) == 512
    with Image.open(film) as original:
        assert overlay.size[0] / overlay.size[1] == pytest.approx(original.size[0] / original.size[1], rel=0.01)
    assert np.asarray(overlay)[..., 3].max() > 100  # something is highlighted


def test_the_same_upload_gets_the_same_map(explaining, fullres_images):
    film = fullres_images[0]
    first, second = (explaining.client.post("/predict?explain=true", files=upload(film)).json()["explanation"]
                     for _ in range(2))
    np.testing.assert_allclose(first["grid"], second["grid"], atol=1e-3)


def test_batch_explains_each_good_file_and_refused_files_get_no_map(explaining, fullres_images):
    files = [("files", (p.name, p.read_bytes())) for p in fullres_images[:2]]
    files.append(("files", ("notes.txt", b"not an x-ray at all, just some text")))
    response = explaining.client.post("/predict/batch?explain=true", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 200, 415]
    for good in results[:2]:
        assert good["result"]["explanation"]["method"] == "grad-cam"
    assert results[2].get("result") is None and results[2]["error"]["code"] == "unsupported_format"
    plain = explaining.client.post("/predict/batch", files=files[:1]).json()["results"][0]["result"]
    assert "explanation" not in plain


def test_dicom_uploads_are_explained_and_previewed(explaining, fullres_images):
    with Image.open(fullres_images[3]) as film:
        gray = np.asarray(film.convert("L").resize((300, 240)))
    dicom = make_dicom(gray)
    response = explaining.client.post("/predict?explain=true", files={"file": ("film.dcm", dicom)})
    assert response.status_code == 200, response.text
    assert (response.json()["explanation"]["width"], response.json()["explanation"]["height"]) == (300, 240)
    preview = explaining.client.post("/ui/preview", files={"file": ("film.dcm", dicom)})
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    shown = np.asarray(Image.open(io.BytesIO(preview.content)))
    assert shown.shape == gray.shape and np.abs(shown.astype(int) - gray).mean() < 2  # what the server decoded


def test_the_review_page_and_its_assets_are_served_with_a_strict_policy(explaining):
    client = explaining.client
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "ui"
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert NOTICE in page.text and "{{" not in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: everything from this service
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = client.get(f"/ui/assets/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
    assert client.get("/ui/assets/index.html").status_code == 404
    assert client.get("/ui/assets/..%2F..%2Fsettings.py").status_code == 404
    # the names of the active version's operating points (the shipped version has one), never their thresholds
    assert client.get("/ui/config").json() == {"notice": NOTICE, "api_key_required": False,
                                               "max_upload_bytes": SERVER_SETTINGS["max_upload_bytes"],
                                               "operating_points": ["default"], "default_operating_point": "default"}


def test_preview_refuses_what_is_not_an_image(explaining):
    response = explaining.client.post("/ui/preview", files={"file": ("a.txt", b"hello, not an image")})
    assert response.status_code == 415 and response.json()["error"]["code"] == "unsupported_format"


def test_openapi_documents_the_explanation(explaining):
    spec = explaining.client.get("/openapi.json").json()
    for path in ("/predict", "/predict/batch"):
        names = [p["name"] for p in spec["paths"][path]["post"].get("parameters", [])]
        assert "explain" in names, path
    schema = spec["components"]["schemas"]["ExplanationInfo"]
    assert {"method", "layer", "grid", "overlay_png", "width", "height"} <= set(schema["required"])
    assert "image/png" in spec["paths"]["/ui/preview"]["post"]["responses"]["200"]["content"]
    assert "/ui" not in spec["paths"]  # the page itself is not API


def test_a_model_without_a_convolution_answers_plainly_and_refuses_to_explain(no_conv_keyed, fullres_images):
    client, key = no_conv_keyed.client, {"X-API-Key": KEY}
    film = upload(fullres_images[0])
    assert client.post("/predict", files=film, headers=key).status_code == 200
    refused = client.post("/predict?explain=true", files=film, headers=key)
    assert refused.status_code == 422
    error = refused.json()["error"]
    assert error["code"] == "explanation_unavailable" and "no convolutional layer" in error["message"]


def test_with_keys_the_page_stays_open_but_the_preview_needs_a_key(no_conv_keyed, fullres_images):
    client = no_conv_keyed.client
    assert client.get("/ui").status_code == 200
    assert client.get("/ui/config").json()["api_key_required"] is True
    film = upload(fullres_images[0])
    assert client.post("/ui/preview", files=film).status_code == 401
    assert client.post("/ui/preview", files=film, headers={"X-API-Key": KEY}).status_code == 200
