"""The input gate: DICOM header rules, refusals on every image route, flag/off modes, and the shipped gate
model on real images (chest films pass, what is not a chest film is refused)."""

from __future__ import annotations

import asyncio
import io
import json

import numpy as np
import pydicom
import pytest
from app_harness import started
from image_factory import encode, make_dicom, real_xray
from PIL import Image
from pydicom.dataset import Dataset

from app.errors import NotAChestXrayError
from app.gate import ADULT_WARNING, check_header, colourfulness
from app.main import create_app
from app.settings import Settings, SettingsError
from model_store.imaging import sniff_format

ALL_RULES = frozenset({"modality", "body_part", "view_position"})


def header(**tags: str) -> Dataset:
    ds = Dataset()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def with_tags(dicom: bytes, **tags: str | None) -> bytes:
    """The same DICOM file with header elements set (or removed, for None)."""
    ds = pydicom.dcmread(io.BytesIO(dicom))
    for keyword, value in tags.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def blank_page() -> bytes:
    """The issue's example: a blank white 1024x1024 PNG was answered PNEUMONIA 0.98."""
    return encode(np.full((1024, 1024), 255, np.uint8), "PNG")


@pytest.fixture(scope="module")
def chest(fullres_images) -> np.ndarray:
    return real_xray(fullres_images[0], size=320)


@pytest.fixture(scope="module")
def fundus(gate_dir) -> bytes:
    return sorted((gate_dir / "not_cxr" / "fundus").glob("*.png"))[0].read_bytes()


# -- header rules (no model) -------------------------------------------------------------------------------
@pytest.mark.parametrize(("tags", "rule", "shown"), [
    ({"Modality": "CT"}, "modality", "'CT'"),
    ({"Modality": "MR", "BodyPartExamined": "CHEST"}, "modality", "'MR'"),
    ({}, "modality", "missing"),
    ({"Modality": "CR", "BodyPartExamined": "KNEE"}, "body_part", "'KNEE'"),
    ({"Modality": "DX", "ViewPosition": "LL"}, "view_position", "'LL'"),
    ({"Modality": "DX", "ViewPosition": "LATERAL"}, "view_position", "'LATERAL'"),
    ({"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "RL"}, "view_position", "'RL'"),
])
def test_header_rule_refuses_with_tag_and_value(tags, rule, shown):
    with pytest.raises(NotAChestXrayError) as caught:
        check_header(header(**tags), ALL_RULES)
    assert caught.value.rule == rule
    assert caught.value.status == 422 and caught.value.code == "not_a_chest_xray"
    assert shown in caught.value.message
    assert {"modality": "(0008,0060)", "body_part": "(0018,0015)", "view_position": "(0018,5101)"}[rule] \
        in caught.value.message


@pytest.mark.parametrize("tags", [
    {"Modality": "CR"}, {"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA"},
    {"Modality": "dx", "ViewPosition": "ap"}, {"Modality": "CR", "BodyPartExamined": "", "ViewPosition": ""},
])
def test_header_rules_accept_frontal_chest_radiographs(tags):
    assert check_header(header(**tags), ALL_RULES) == []


@pytest.mark.parametrize(("relaxed", "tags"), [
    ("modality", {"Modality": "OT"}),
    ("body_part", {"Modality": "CR", "BodyPartExamined": "THORAX"}),
    ("view_position", {"Modality": "CR", "ViewPosition": "LL"}),
])
def test_each_rule_can_be_relaxed(relaxed, tags):
    with pytest.raises(NotAChestXrayError):
        check_header(header(**tags), ALL_RULES)
    assert check_header(header(**tags), ALL_RULES - {relaxed}) == []


@pytest.mark.parametrize(("age", "warned"), [("034Y", True), ("018Y", True), ("017Y", False), ("003Y", False),
                                              ("030M", False), ("300M", True), ("", False), ("junk", False)])
def test_adult_age_adds_a_warning_not_a_refusal(age, warned):
    assert check_header(header(Modality="DX", PatientAge=age), ALL_RULES) == ([ADULT_WARNING] if warned else [])


def test_rules_setting_is_validated():
    assert Settings.load(gate_header_rules="modality, view_position").gate_header_rules == ["modality",
                                                                                            "view_position"]
    assert Settings.load(gate_header_rules="").gate_header_rules == []
    with pytest.raises(SettingsError, match=r"CXR_GATE_HEADER_RULES.*unknown gate header rules"):
        Settings.load(gate_header_rules="modality,laterality")
    with pytest.raises(SettingsError, match="CXR_GATE="):
        Settings.load(gate="maybe")


# -- the service (default: refuse) ------------------------------------------------------------------------
def assert_refusal(body: dict, *, rule_text: str) -> None:
    error = body["error"]
    assert error["code"] == "not_a_chest_xray"
    assert "does not look like a frontal chest radiograph" in error["message"]
    assert rule_text in error["message"]
    assert error["request_id"]


def test_success_carries_the_gate_verdict(server, chest):
    body = server.client.post("/predict", files={"file": ("c.png", encode(chest, "PNG"))}).json()
    gate = body["gate"]
    assert gate["passed"] is True and gate["score"] >= gate["threshold"]
    assert gate["model"]["name"] == "gate" and len(gate["model"]["sha256"]) == 64
    assert body["warnings"] == []


def test_blank_page_is_refused_by_the_gate_model(server):
    response = server.client.post("/predict", files={"file": ("x.png", blank_page())})
    assert response.status_code == 422, response.text
    body = response.json()
    assert_refusal(body, rule_text="gate score")
    details = body["error"]["details"]
    assert 0.0 <= details["score"] < details["threshold"]
    assert server.client.get("/health/ready").status_code == 200


def test_colour_fundus_photo_is_refused_as_colour(server, fundus):
    response = server.client.post("/predict", files={"file": ("x.png", fundus)})
    assert response.status_code == 422, response.text
    body = response.json()
    assert_refusal(body, rule_text="it is a colour image")
    assert body["error"]["details"]["colourfulness"] > body["error"]["details"]["limit"]


def test_colourfulness_is_zero_for_grey_pictures_in_any_container(chest):
    for data in (encode(chest, "PNG"), encode(chest, "PNG", mode="RGB"), encode(chest, "JPEG", mode="RGB"),
                 encode(chest, "PNG", mode="P")):
        assert colourfulness(data, sniff_format(data)) < 0.01
    tinted = np.stack([chest, (chest * 0.6).astype(np.uint8), (chest * 0.3).astype(np.uint8)], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(tinted).save(buffer, format="PNG")
    assert colourfulness(buffer.getvalue(), "PNG") > 0.08
    assert colourfulness(make_dicom(chest), "DICOM") == 0.0


def test_dicom_header_refusal_on_predict(server, chest):
    ct = with_tags(make_dicom(chest), Modality="CT")
    response = server.client.post("/predict", files={"file": ("ct.dcm", ct)})
    assert response.status_code == 422
    assert_refusal(response.json(), rule_text="Modality (0008,0060) is 'CT'")
    lateral = with_tags(make_dicom(chest), ViewPosition="LL", BodyPartExamined="CHEST")
    response = server.client.post("/predict", files={"file": ("ll.dcm", lateral)})
    assert_refusal(response.json(), rule_text="ViewPosition (0018,5101) is 'LL'")


def test_adult_dicom_is_answered_with_a_warning(server, chest):
    adult = with_tags(make_dicom(chest), PatientAge="045Y", BodyPartExamined="CHEST", ViewPosition="PA")
    response = server.client.post("/predict", files={"file": ("a.dcm", adult)})
    assert response.status_code == 200, response.text
    assert response.json()["warnings"] == [ADULT_WARNING]  # a fixed sentence: the age itself is not echoed


def test_batch_refuses_per_file(server, chest, fundus):
    files = [("files", ("ok.png", encode(chest, "PNG"))), ("files", ("blank.png", blank_page())),
             ("files", ("fundus.png", fundus)), ("files", ("ct.dcm", with_tags(make_dicom(chest), Modality="CT")))]
    response = server.client.post("/predict/batch", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 422, 422, 422]
    assert results[0]["result"]["gate"]["passed"] is True
    for item in results[1:]:
        assert item["error"]["code"] == "not_a_chest_xray"
    assert "score" in results[1]["error"]["details"]


def v2_bytes(server, data: bytes):
    request = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                           "parameters": {"binary_data_size": len(data) + 4}}]}
    header_bytes = json.dumps(request).encode()
    body = header_bytes + len(data).to_bytes(4, "little") + data
    return server.client.post("/v2/models/pneumonia/infer", content=body, headers={
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header_bytes))})


def test_v2_bytes_input_is_gated(server, chest):
    accepted = v2_bytes(server, encode(chest, "PNG"))
    assert accepted.status_code == 200
    header_length = int(accepted.headers.get("Inference-Header-Content-Length", len(accepted.content)))
    parameters = json.loads(accepted.content[:header_length])["parameters"]
    assert parameters["gate_score"][0] > 0 and parameters["warnings"] == [[]]
    refused = v2_bytes(server, blank_page())
    assert refused.status_code == 422, refused.text
    assert "does not look like a frontal chest radiograph" in refused.text


def test_refusals_are_counted_by_reason(server, chest, fundus):
    server.client.post("/predict", files={"file": ("x.png", blank_page())})
    server.client.post("/predict", files={"file": ("ct.dcm", with_tags(make_dicom(chest), Modality="CT"))})
    server.client.post("/predict", files={"file": ("f.png", fundus)})
    text = server.client.get("/metrics").text
    counts = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("cxr_gate_refusals_total{")}
    assert counts['reason="gate_model"'] >= 1 and counts['reason="modality"'] >= 1
    assert counts['reason="colour"'] >= 1


def test_models_shows_the_gate_and_its_validation(server):
    gate = server.client.get("/models").json()["gate"]
    assert gate["mode"] == "refuse"
    assert gate["model"]["name"] == "gate"
    assert gate["validation"]["pediatric_refused_rate"] <= 0.01


# -- flag and off modes -----------------------------------------------------------------------------------
def test_flag_mode_answers_and_marks(chest):
    async def scenario() -> None:
        async with started(create_app(Settings(gate="flag", access_log=False))) as client:
            body = (await client.post("/predict", files={"file": ("x.png", blank_page())})).json()
            assert body["gate"]["passed"] is False
            assert any("flagged by the input gate" in w for w in body["warnings"])
            ct = with_tags(make_dicom(chest), Modality="CT")
            body = (await client.post("/predict", files={"file": ("ct.dcm", ct)})).json()
            assert any("DICOM header" in w for w in body["warnings"])

    asyncio.run(scenario())


def test_off_mode_answers_without_a_gate():
    async def scenario() -> None:
        async with started(create_app(Settings(gate="off", access_log=False))) as client:
            response = await client.post("/predict", files={"file": ("x.png", blank_page())})
            assert response.status_code == 200
            assert response.json()["gate"] is None
            assert (await client.get("/models")).json()["gate"]["mode"] == "off"

    asyncio.run(scenario())


def test_a_gray_photo_is_not_a_chest(server):
    rng = np.random.default_rng(0)
    noise = (rng.uniform(size=(400, 400)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert server.client.post("/predict", files={"file": ("n.png", buffer.getvalue())}).status_code == 422
