"""The heatmap as DICOM and DICOMweb in, against the real app (uvicorn, shipped model): /predict answering
SR + heatmap Secondary Capture as multipart/related, the STOW-RS receiver (PS3.18 response, refusals, 503 with
Retry-After when the queue is full, the API key), and the results reaching a C-STORE destination. dciodvfy
checks both objects; the SC's pixels are checked for the heatmap's colours over the lungs."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from app_harness import Running, free_port, serve
from chest_dicom import chest_dicom
from integration_support import GATE_SETTINGS, pick_films
from peers import SrSink, dciodvfy, sr_sink
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from app.dicomweb import decode_multipart, encode_multipart, read_auth
from app.renderers.dicom_sr import GRAD_CAM
from app.settings import Settings, SettingsError

REPO_ROOT = Path(__file__).resolve().parents[2]
API_KEY = "k" * 32
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'


@pytest.fixture(scope="module")
def sink() -> Iterator[SrSink]:
    with sr_sink() as destination:
        yield destination


@pytest.fixture(scope="module")
def service(shipped_model: Path, sink: SrSink) -> Iterator[Running]:
    """STOW-RS in only (no C-STORE port), C-STORE out to the sink, API keys on."""
    settings = Settings(model_store=REPO_ROOT / "model_store", access_log=False, runtime="keras",
                        api_keys=[API_KEY], dicomweb_receive=True, dicom_queue_size=4,
                        dicom_destination_host="127.0.0.1", dicom_destination_port=sink.port,
                        dicom_destination_ae_title=sink.ae_title, dicom_retry_delay_s=0.1, dicom_timeout_s=5,
                        **GATE_SETTINGS)
    with serve(settings) as running:
        running.client.headers["X-API-Key"] = API_KEY
        yield running


@pytest.fixture(scope="module")
def films(service: Running, fullres_images: list[Path]) -> dict[str, np.ndarray]:
    return pick_films(fullres_images, lambda data: service.client.post(
        "/predict", files={"file": ("film.dcm", data)}).status_code == 200)


def parts_of(response) -> list[Dataset]:
    parts = decode_multipart(response.content, response.headers["content-type"], max_parts=10,
                             max_part_bytes=50_000_000)
    return [dcmread(io.BytesIO(part)) for part in parts]


def coloured_fraction(rgb: np.ndarray) -> float:
    """Share of pixels whose channels differ strongly: a grey film has none, the jet heatmap many."""
    spread = rgb.max(axis=-1).astype(int) - rgb.min(axis=-1).astype(int)
    return float((spread > 80).mean())


def assert_heatmap_pair(sc: Dataset, sr: Dataset, source: Dataset, probability: float, folder: Path) -> None:
    """What the PACS must get: an RGB SC at the film's geometry in the film's study, its own series, coloured
    over the lungs, captioned; an SR in the same study that references it."""
    for obj in (sc, sr):
        buffer = io.BytesIO()
        obj.save_as(buffer, enforce_file_format=True)
        dciodvfy(buffer.getvalue(), folder)
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert (sc.Rows, sc.Columns, sc.SamplesPerPixel, sc.PhotometricInterpretation) == (
        source.Rows, source.Columns, 3, "RGB")
    assert sc.BurnedInAnnotation == "YES"
    assert sc.StudyInstanceUID == sr.StudyInstanceUID == source.StudyInstanceUID
    assert len({sc.SeriesInstanceUID, sr.SeriesInstanceUID, source.SeriesInstanceUID}) == 3
    assert sc.PatientID == source.PatientID and sc.SourceImageSequence[0].ReferencedSOPInstanceUID == \
        source.SOPInstanceUID
    assert f"P={probability:.2f}" in sc.ImageComments and "not for diagnosis" in sc.ImageComments
    pixels = sc.pixel_array
    height, width = pixels.shape[:2]
    lungs = pixels[height // 5 : 4 * height // 5, width // 8 : 7 * width // 8]
    assert coloured_fraction(lungs) > 0.05, "the heatmap is not visibly coloured over the lungs"  # grey: 0
    caption_band = pixels[: height // 30, : width // 3]
    assert (caption_band.max(axis=-1) > 200).any() and (caption_band.max(axis=-1) < 30).any(), "no caption"
    assert heatmap_references(sr) == [sc.SOPInstanceUID]
    [group] = hd.sr.srread(io.BytesIO(_encode(sr))).content.get_image_measurement_groups()
    assert float(group.get_measurements()[0].value) == pytest.approx(probability, abs=1e-5)


def heatmap_references(sr: Dataset) -> list[str]:
    """SOP Instance UIDs of the IMAGE items named Grad-CAM (DCM 130403) anywhere in the SR's content tree."""
    found: list[str] = []
    for item in sr.get("ContentSequence", []):
        if item.ValueType == "IMAGE" and item.ConceptNameCodeSequence[0].CodeValue == GRAD_CAM.value:
            found.append(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        found += heatmap_references(item)
    return found


def _encode(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_predict_answers_sr_and_heatmap_sc_as_multipart(service, films, tmp_path):
    source_bytes = chest_dicom(films["PNEUMONIA"])
    upload = {"file": ("film.dcm", source_bytes)}
    expected = service.client.post("/predict", files=upload).json()
    probability = expected["probabilities"][expected["positive_class"]]

    both = service.client.post("/predict?explain=true", files=upload, headers={"Accept": MULTIPART_DICOM})
    assert both.status_code == 200, both.text
    assert both.headers["content-type"].startswith(MULTIPART_DICOM)
    sc, sr = parts_of(both)
    assert_heatmap_pair(sc, sr, dcmread(io.BytesIO(source_bytes)), probability, tmp_path)

    # without explain=true: the SR alone in the multipart; Accept: application/dicom stays the SR alone
    [alone] = parts_of(service.client.post("/predict", files=upload, headers={"Accept": MULTIPART_DICOM}))
    plain = dcmread(io.BytesIO(service.client.post("/predict?explain=true", files=upload,
                                                   headers={"Accept": "application/dicom"}).content))
    for sr_only in (alone, plain):
        assert sr_only.Modality == "SR" and heatmap_references(sr_only) == []


def test_predict_multipart_of_other_types_and_non_dicom_uploads_are_refused(service, films):
    png = io.BytesIO()
    from PIL import Image

    Image.fromarray(films["NORMAL"]).save(png, format="PNG")
    wrong = service.client.post("/predict?explain=true", files={"file": ("film.dcm", chest_dicom(films["NORMAL"]))},
                                headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert wrong.status_code == 406 and wrong.json()["error"]["code"] == "not_acceptable"
    not_dicom = service.client.post("/predict?explain=true", files={"file": ("film.png", png.getvalue())},
                                    headers={"Accept": MULTIPART_DICOM})
    assert not_dicom.status_code == 415 and not_dicom.json()["error"]["code"] == "dicom_required"


def test_stow_rs_takes_films_refuses_the_rest_and_delivers_sc_then_sr(service, sink, films, tmp_path):
    film = chest_dicom(films["PNEUMONIA"])
    expected = service.client.post("/predict", files={"file": ("film.dcm", film)}).json()
    not_an_image = _encode(_sr_like(dcmread(io.BytesIO(film))))
    body, content_type = encode_multipart([film, b"not DICOM at all", not_an_image])
    before = len(sink.received)

    response = service.client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})

    assert response.status_code == 202, response.text  # some stored, some failed (PS3.18)
    assert response.headers["content-type"].startswith("application/dicom+json")
    answer = response.json()
    source = dcmread(io.BytesIO(film))
    [stored] = answer["00081199"]["Value"]
    assert stored["00081155"]["Value"] == [source.SOPInstanceUID]
    reasons = sorted(item["00081197"]["Value"][0] for item in answer["00081198"]["Value"])
    assert reasons == sorted([0xC000, 0x0122])  # cannot understand; SOP class not supported
    sc, sr = sink.wait_for(before + 2)[before:]  # the heatmap first, so the SR's reference resolves on arrival
    assert_heatmap_pair(sc, sr, source, expected["probabilities"][expected["positive_class"]], tmp_path)


def _sr_like(source: Dataset) -> Dataset:
    """A readable DICOM instance of a class the receiver does not take (not CR/DX)."""
    other = Dataset()
    other.file_meta = source.file_meta.copy()
    other.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    other.SOPClassUID, other.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.34", generate_uid()
    other.StudyInstanceUID = source.StudyInstanceUID
    return other


def test_stow_rs_full_queue_answers_503_with_retry_after(service, films):
    node = service.app.state.dicom_node
    size = service.app.state.settings.dicom_queue_size
    body, content_type = encode_multipart([chest_dicom(films["NORMAL"])])
    assert node.admit_many(size) == "accepted"  # the queue filled by others
    try:
        response = service.client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type},
                                       timeout=10)
    finally:
        for _ in range(size):
            node._release()
    assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["code"] == "overloaded"
    assert node.pending == 0


def test_stow_rs_needs_the_api_key_and_multipart_dicom(service, films):
    body, content_type = encode_multipart([chest_dicom(films["NORMAL"])])
    no_key = service.client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type,
                                                                              "X-API-Key": ""})
    assert no_key.status_code == 401
    wrong_type = service.client.post("/dicomweb/studies", content=body, headers={
        "Content-Type": content_type.replace("application/dicom", "application/dicom+xml")})
    assert wrong_type.status_code == 415 and wrong_type.json()["error"]["code"] == "unsupported_media_type"
    broken = service.client.post("/dicomweb/studies", content=b"--x\r\nbroken", headers={
        "Content-Type": 'multipart/related; type="application/dicom"'})
    assert broken.status_code == 422 and "boundary" in broken.json()["error"]["message"]


def test_stow_rs_is_off_unless_enabled(shipped_model):
    import asyncio

    import httpx

    from app.main import create_app

    app = create_app(Settings(model_store=REPO_ROOT / "model_store", access_log=False))

    async def post() -> httpx.Response:  # no lifespan, no model: the route answers before any work
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cxr") as client:
            return await client.post("/dicomweb/studies", content=b"", headers={"Content-Type": MULTIPART_DICOM})

    response = asyncio.run(post())
    assert response.status_code == 404 and response.json()["error"]["code"] == "dicomweb_disabled"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"dicom_heatmap": "pm"}, "Parametric Map is not implemented"),
    ({"dicom_heatmap": "both"}, "Parametric Map is not implemented"),
    ({"dicom_heatmap": "color"}, "use sc (Secondary Capture) or off"),
    ({"dicomweb_receive": True}, "CXR_DICOMWEB_DESTINATION_URL"),
    ({"dicom_port": free_port(), "dicom_destination_host": "pacs"}, "C-STORE destination is incomplete"),
    ({"dicomweb_destination_url": "pacs.hospital.org"}, "not a DICOMweb base URL"),
])
def test_settings_refuse_what_cannot_work(overrides, message):
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.load(model_store=REPO_ROOT / "model_store", **overrides)


def test_auth_file_bearer_basic_and_bad(tmp_path):
    path = tmp_path / "auth"
    path.write_text("Bearer abc.def\n")
    assert read_auth(path) == "Bearer abc.def"
    path.write_text("Basic cxr:s3cret")
    assert read_auth(path) == "Basic Y3hyOnMzY3JldA=="
    path.write_text("s3cret")
    with pytest.raises(ValueError, match="'Bearer <token>' or 'Basic <user>:<password>'") as info:
        read_auth(path)
    assert "s3cret" not in str(info.value)


def test_stow_sender_reports_an_unreachable_destination_without_raising(tmp_path):
    """One attempt of the STOW-RS sender (the node retries it like C-STORE): a reason string, never an
    exception, and no UID or patient data in it."""
    from app.dicomweb import StowSender

    auth = tmp_path / "auth"
    auth.write_text("Bearer not-a-real-token")
    sender = StowSender(f"http://127.0.0.1:{free_port()}/dicom-web", timeout=2, auth_file=auth)
    dataset = dcmread(io.BytesIO(chest_dicom(np.full((300, 300), 128, dtype=np.uint8))))
    try:
        reason = sender.send_once([dataset])
    finally:
        sender.close()
    assert reason is not None and reason.startswith("cannot reach the DICOMweb destination")
    assert dataset.SOPInstanceUID not in reason and "not-a-real-token" not in reason
