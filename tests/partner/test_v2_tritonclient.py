"""The Open Inference Protocol, driven by the unmodified tritonclient against a live server process."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from model_store.artifact import read_metadata
from model_store.imaging import decode
from model_store.preprocessing import preprocess
from tests.partner.conftest import API_KEY, SHIPPED

pytestmark = pytest.mark.slow


def auth() -> dict[str, str]:
    """A fresh dict per call: tritonclient adds its own headers into the dict it is given."""
    return {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def client(server):
    return triton.InferenceServerClient(server.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def images(fullres_dir) -> list[bytes]:
    paths = sorted(fullres_dir.glob("NORMAL/*.jpeg"))[:2] + sorted(fullres_dir.glob("PNEUMONIA/*.jpeg"))[:2]
    return [p.read_bytes() for p in paths]


def predict_json(server, data: bytes) -> dict:
    response = httpx.post(f"{server.url}/predict", files={"file": ("x.jpeg", data)}, headers=auth(), timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_server_and_model_metadata_and_readiness(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "cxr-serve" and "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("pneumonia", headers=auth())
    assert client.is_model_ready("pneumonia", "1", headers=auth())
    model = client.get_model_metadata("pneumonia", headers=auth())
    size = read_metadata(SHIPPED).preprocessing.input_size
    assert model["versions"] == ["1"]
    assert {(i["name"], i["datatype"]) for i in model["inputs"]} == {("image", "BYTES"), ("input", "FP32")}
    assert {"name": "input", "datatype": "FP32", "shape": [-1, size, size, 1]} in model["inputs"]
    assert {(o["name"], o["datatype"]) for o in model["outputs"]} == {("probabilities", "FP32"), ("label", "BYTES"),
                                                                      ("heatmap", "FP32")}


@pytest.mark.parametrize("binary", [True, False])
def test_infer_encoded_images_equals_predict(client, server, images, binary):
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    elements = images if binary else [base64.b64encode(d) for d in images]  # JSON carries base64 strings
    tensor.set_data_from_numpy(np.array(elements, dtype=object), binary_data=binary)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary),
               triton.InferRequestedOutput("label", binary_data=binary)]
    result = client.infer("pneumonia", [tensor], outputs=outputs, request_id="req-42", headers=auth())
    probabilities = result.as_numpy("probabilities")
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label")]
    assert result.get_response()["id"] == "req-42"
    assert probabilities.shape == (len(images), 2) and probabilities.dtype == np.float32
    for i, data in enumerate(images):
        expected = predict_json(server, data)
        np.testing.assert_allclose(probabilities[i], list(expected["probabilities"].values()), rtol=1e-5, atol=1e-6)
        assert labels[i] == expected["prediction"]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_preprocessed_fp32_tensor_equals_encoded_path(client, images, binary):
    spec = read_metadata(SHIPPED).preprocessing
    batch = np.stack([preprocess(decode(d, min_size=2 * spec.input_size, max_pixels=50_000_000), spec) for d in images])
    tensor = triton.InferInput("input", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=binary)
    from_tensor = client.infer("pneumonia", [tensor], headers=auth()).as_numpy("probabilities")
    encoded = triton.InferInput("image", [len(images)], "BYTES")
    encoded.set_data_from_numpy(np.array(images, dtype=object))
    from_bytes = client.infer("pneumonia", [encoded], headers=auth()).as_numpy("probabilities")
    np.testing.assert_allclose(from_tensor, from_bytes, rtol=1e-5, atol=1e-6)


def test_output_selection_returns_only_what_was_asked(client, images):
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(images[:1], dtype=object))
    result = client.infer("pneumonia", [tensor], outputs=[triton.InferRequestedOutput("label")], headers=auth())
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None


@pytest.mark.parametrize("binary", [True, False])
def test_heatmap_output_by_name_equals_the_json_explanation(client, server, images, binary):
    """The Grad-CAM grid as an optional output tensor: only when asked for, equal to /predict?explain=true's."""
    tensor = triton.InferInput("image", [2], "BYTES")
    elements = images[1:3] if binary else [base64.b64encode(d) for d in images[1:3]]  # JSON carries base64
    tensor.set_data_from_numpy(np.array(elements, dtype=object), binary_data=binary)
    outputs = [triton.InferRequestedOutput("heatmap", binary_data=binary),
               triton.InferRequestedOutput("label", binary_data=binary)]
    result = client.infer("pneumonia", [tensor], outputs=outputs, headers=auth())
    heatmap = result.as_numpy("heatmap")
    assert heatmap.shape == (2, 14, 14) and heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0, abs=1e-3)  # normalised per image
    for i, data in enumerate(images[1:3]):
        response = httpx.post(f"{server.url}/predict?explain=true", files={"file": ("x.jpeg", data)},
                              headers=auth(), timeout=60)
        np.testing.assert_allclose(heatmap[i], response.json()["explanation"]["grid"], atol=2e-4)
    default = client.infer("pneumonia", [tensor], headers=auth())  # not asked for: not computed, not sent
    assert [o["name"] for o in default.get_response()["outputs"]] == ["probabilities", "label"]


def test_version_pinning(client, images):
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(images[:1], dtype=object))
    assert client.infer("pneumonia", [tensor], model_version="1", headers=auth()).get_response()["model_version"] == "1"
    with pytest.raises(InferenceServerException, match="version '7'") as err:
        client.infer("pneumonia", [tensor], model_version="7", headers=auth())
    assert err.value.status() == "404"


def test_unknown_model_is_404(client, images):
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array(images[:1], dtype=object))
    with pytest.raises(InferenceServerException, match="unknown model") as err:
        client.infer("not-a-model", [tensor], headers=auth())
    assert err.value.status() == "404"
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("not-a-model", headers=auth())


@pytest.mark.parametrize(("body", "needle"), [
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2, 2, 1], "data": [0, 0, 0, 0]}]}, "shape must be"),
    ({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 128, 128, 1], "data": [1, 2]}]}, "values"),
    ({"inputs": [{"name": "input", "datatype": "INT8", "shape": [1, 128, 128, 1], "data": [1]}]}, "must be FP32"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%not base64"]}]}, "base64"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aGVsbG8="]}]}, "elements"),
    ({"inputs": [{"name": "foo", "datatype": "FP32", "shape": [1], "data": [1]}]}, "unknown input"),
    ({"inputs": []}, "exactly one input"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": "x", "data": []}]}, "shape must be"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGVsbG8="]}],
      "outputs": [{"name": "nope"}]}, "unknown output"),
])
def test_malformed_tensors_are_400_with_a_message(server, body, needle):
    if body["inputs"] and body["inputs"][0].get("name") == "input" and body["inputs"][0]["shape"][1:] == [128, 128, 1]:
        size = read_metadata(SHIPPED).preprocessing.input_size
        body["inputs"][0]["shape"] = [1, size, size, 1]
    response = httpx.post(f"{server.url}/v2/models/pneumonia/infer", json=body, headers=auth(), timeout=30)
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]


def test_undecodable_image_element_keeps_its_status(server):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(b"plain text, not an image").decode()]}]}
    response = httpx.post(f"{server.url}/v2/models/pneumonia/infer", json=body, headers=auth(), timeout=30)
    assert response.status_code == 415
    assert "element 0" in response.json()["error"]


def test_binary_header_length_beyond_body_is_400(server):
    response = httpx.post(f"{server.url}/v2/models/pneumonia/infer", content=b'{"inputs": []}',
                          headers={**auth(), "Inference-Header-Content-Length": "999"}, timeout=30)
    assert response.status_code == 400
    assert "Inference-Header-Content-Length" in response.json()["error"]
    assert httpx.get(f"{server.url}/health/ready").status_code == 200
