"""Every class of bad input a hospital integration can send: a precise status and error code in the one error
shape, and the service still ready afterwards. Odd-but-valid inputs get a prediction, not a crash."""

from __future__ import annotations

import struct

import hostile
import numpy as np
import pytest
from pydicom.pixels import get_decoder
from pydicom.uid import JPEGLSLossless
from reliability_support import assert_error, assert_prediction, assert_ready


def post_file(client, data: bytes, content_type: str = "application/octet-stream", filename: str = "upload",
              path: str = "/predict"):
    return client.post(path, files={"file": (filename, data, content_type)})


def jpeg_with_header_size(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF0 header is rewritten to declare width x height."""
    data = bytearray(hostile.jpeg(hostile.chest_like((64, 64))))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# (name, bytes, status, code): each must be refused with exactly this status and code
REFUSED = [
    ("zero-byte file", b"", 400, "undecodable_image"),
    *[(f"{kind} bytes", data, 415, "unsupported_format") for kind, data in hostile.NOT_IMAGES.items()],
    ("PNG, valid header, truncated body", hostile.truncated(hostile.png()), 400, "undecodable_image"),
    ("PNG, corrupt IDAT with valid CRCs", hostile.png_corrupt_idat(), 400, "undecodable_image"),
    ("PNG, header chunk CRC mismatch", hostile.png_bad_crc(), 400, "undecodable_image"),
    ("JPEG cut in half", hostile.truncated(hostile.jpeg()), 400, "undecodable_image"),
    ("JPEG header only", hostile.jpeg()[:200], 400, "undecodable_image"),
    ("PNG decompression bomb 100k x 100k", hostile.png_bomb(), 413, "image_too_large"),
    ("PNG 8k x 8k, just over the pixel limit", hostile.png_bomb(8000, 8000), 413, "image_too_large"),
    ("JPEG header declaring 60k x 60k", jpeg_with_header_size(60000, 60000), 413, "image_too_large"),
    ("DICOM header declaring 60k x 60k", hostile.dicom_bomb(), 413, "image_too_large"),
    ("GIF of 800 bytes with a 168 Mpx first frame", hostile.gif_bomb(), 413, "image_too_large"),
    ("GIF bomb behind stray bytes", hostile.gif_bomb(stray=b"\x00\x07junk"), 413, "image_too_large"),
    ("1x1 image", hostile.png(np.zeros((1, 1), np.uint8)), 400, "unusable_image"),
    ("31x400 image (a side under the minimum)", hostile.png(np.full((31, 400), 90, np.uint8)), 400,
     "unusable_image"),
    ("4000x2 strip", hostile.png(np.full((2, 4000), 128, np.uint8)), 400, "unusable_image"),
    ("1000x100 (aspect 10:1)", hostile.png(hostile.chest_like((100, 1000))), 400, "unusable_image"),
    ("100x1000 (aspect 1:10)", hostile.png(hostile.chest_like((1000, 100))), 400, "unusable_image"),
    ("DICOM without pixel data", hostile.dicom_without_pixels(), 415, "unsupported_format"),
    ("DICOM with a private transfer syntax", hostile.dicom_unsupported_syntax("1.2.3.4.5.6"), 415,
     "unsupported_format"),
    ("non-DICOM bytes behind a DICM preamble", hostile.fake_dicm_preamble(), 415, "unsupported_format"),
]


@pytest.mark.parametrize(("name", "data", "status", "code"), REFUSED, ids=[case[0] for case in REFUSED])
def test_bad_upload_gets_precise_error_and_service_stays_ready(client, name, data, status, code):
    assert_error(post_file(client, data), status, code)
    assert_ready(client)


@pytest.mark.parametrize(("name", "data", "status", "code"), REFUSED[:8], ids=[case[0] for case in REFUSED[:8]])
def test_bad_file_in_a_batch_fails_only_itself(ungated_client, name, data, status, code):
    client = ungated_client  # the good files are synthetic pictures, which the gate rightly refuses
    files = [("files", ("good.png", hostile.png(), "image/png")), ("files", (name, data, "image/png")),
             ("files", ("good.jpg", hostile.jpeg(), "image/jpeg"))]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    good, bad, good_too = response.json()["results"]
    assert good["status"] == good_too["status"] == 200
    assert (bad["status"], bad["error"]["code"]) == (status, code)
    assert bad["result"] is None
    assert_ready(client)


def test_dicom_with_a_compressed_syntax_we_cannot_decode(client):
    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS plug-in is installed here, so this syntax is decodable")
    error = assert_error(post_file(client, hostile.dicom_unsupported_syntax()), 415, "unsupported_format")
    assert "JPEG-LS" in error["message"] and "plug-in" in error["message"]
    assert_ready(client)


def test_empty_body(client):
    assert_error(client.post("/predict"), 422, "invalid_request")
    assert_error(client.post("/predict", content=b"", headers={"content-type": "multipart/form-data; boundary=x"}),
                 422, "invalid_request")
    assert_ready(client)


def test_missing_file_field(client):
    error = assert_error(client.post("/predict", files={"image": ("x.png", hostile.png(), "image/png")}), 422,
                         "invalid_request")
    assert "file" in error["message"]
    assert_error(client.post("/predict", data={"file": "not a file"}), 422, "invalid_request")
    assert_error(client.post("/predict", json={"file": "aGVsbG8="}), 422, "invalid_request")
    assert_error(client.post("/predict/batch", files={"file": ("x.png", hostile.png(), "image/png")}), 422,
                 "invalid_request")
    assert_ready(client)


def test_garbled_multipart_body(client):
    body = b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\n\r\nno closing boundary"
    response = client.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(response, 422, "invalid_request")  # the unterminated part is dropped: no file arrived
    response = client.post("/predict", content=b"junk", headers={"content-type": "multipart/form-data"})
    assert_error(response, 400, "malformed_body")  # no boundary: the body cannot be parsed at all
    assert_ready(client)


def test_wrong_declared_content_type_is_ignored_bytes_decide(ungated_client):
    client = ungated_client  # synthetic pictures: the input gate (rightly) refuses them
    """The format comes from the bytes: a PNG declared as a PDF (or named .exe) is still a PNG, and a text
    file declared image/png is still refused."""
    reference = assert_prediction(post_file(client, hostile.png(), "image/png", "xray.png"))
    for content_type, filename in [("application/pdf", "xray.pdf"), ("text/plain", "xray.exe"),
                                   ("image/jpeg", "xray.jpg"), ("application/dicom", "xray.dcm")]:
        body = assert_prediction(post_file(client, hostile.png(), content_type, filename))
        assert body["probabilities"] == reference["probabilities"]
    assert_error(post_file(client, hostile.NOT_IMAGES["text"], "image/png", "xray.png"), 415,
                 "unsupported_format")
    assert_ready(client)


def test_upload_over_the_limit_declared_is_refused_before_reading(client):
    body = b"x" * (21 * 1024 * 1024)
    response = client.post("/predict", content=body, headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(response, 413, "upload_too_large")
    assert_ready(client)


def test_upload_over_the_limit_streamed_without_length_is_refused(client):
    sent = []

    def chunks():
        for _ in range(400):  # 25 MiB, over the 20 MiB limit
            sent.append(1)
            yield b"y" * 65536

    response = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert_error(response, 413, "upload_too_large")
    assert_ready(client)


def test_one_file_over_the_per_file_limit_in_a_batch(ungated_client):
    client = ungated_client  # synthetic pictures: the input gate (rightly) refuses them
    from app.settings import Settings

    limit = Settings().max_upload_bytes
    big = hostile.png() + b"\x00" * limit  # trailing junk past IEND: only the size matters here
    response = client.post("/predict/batch", files=[("files", ("ok.png", hostile.png(), "image/png")),
                                                    ("files", ("big.png", big, "image/png"))])
    ok, too_big = response.json()["results"]
    assert ok["status"] == 200
    assert (too_big["status"], too_big["error"]["code"]) == (413, "upload_too_large")
    assert_ready(client)


@pytest.mark.parametrize("name", ["16-bit TIFF", "float TIFF", "CMYK JPEG", "8-bit DICOM", "RGB PNG"])
def test_other_bit_depths_and_colour_models_give_the_same_prediction(ungated_client, name):
    client = ungated_client  # synthetic pictures: the input gate (rightly) refuses them
    gray = hostile.chest_like()
    data = {"16-bit TIFF": hostile.tiff16(gray), "float TIFF": hostile.tiff_float(gray),
            "CMYK JPEG": hostile.cmyk_jpeg(gray), "8-bit DICOM": hostile.dicom(gray),
            "RGB PNG": hostile.encode(np.stack([gray] * 3, axis=-1), "PNG")}[name]
    reference = assert_prediction(post_file(client, hostile.png(gray)))
    body = assert_prediction(post_file(client, data))
    assert body["prediction"] == reference["prediction"]
    assert abs(body["probabilities"]["PNEUMONIA"] - reference["probabilities"]["PNEUMONIA"]) < 0.05
    assert_ready(client)


@pytest.mark.parametrize("fmt", ["GIF", "PNG"])
def test_animated_gif_and_apng_are_read_as_their_first_frame(ungated_client, fmt):
    """Decision: an animated file is read as its first frame (as multi-frame DICOM is), never expanded."""
    client = ungated_client  # synthetic frames: the input gate would (rightly) refuse them
    first, other = hostile.chest_like(seed=1), np.full((256, 256), 255, np.uint8)
    animated = hostile.animated(fmt, [first, other, other])
    still = hostile.encode(first, fmt)
    body = assert_prediction(post_file(client, animated))
    assert body["probabilities"] == assert_prediction(post_file(client, still))["probabilities"]
    assert body["probabilities"] != assert_prediction(post_file(client, hostile.png(other)))["probabilities"]
    assert_ready(client)


@pytest.mark.parametrize("value", [0, 255])
def test_all_black_and_all_white_images_are_refused_by_the_gate(client, value):
    """They decode fine, but they are no radiograph: the input gate refuses them (a blank white page used to
    be answered PNEUMONIA 0.98)."""
    for data in (hostile.png(np.full((300, 300), value, np.uint8)), hostile.jpeg(np.full((300, 300), value, np.uint8))):
        error = assert_error(post_file(client, data), 422, "not_a_chest_xray")
        assert "does not look like a frontal chest radiograph" in error["message"]
    assert_ready(client)


def test_several_files_sent_to_the_single_file_route_are_refused(client):
    body, content_type = hostile.multipart([(b"file", b"a.png", hostile.png()), (b"file", b"b.png", hostile.jpeg())])
    error = assert_error(client.post("/predict", content=body, headers={"content-type": content_type}), 422,
                         "invalid_input")
    assert "/predict/batch" in error["message"]
    assert_ready(client)


def test_multipart_with_many_parts(client):
    many = [(b"files", b"f%d.png" % i, b"x") for i in range(40)]
    body, content_type = hostile.multipart(many)
    assert_error(client.post("/predict/batch", content=body, headers={"content-type": content_type}), 413,
                 "too_many_files")
    flood = [(b"file", b"f%d" % i, b"x") for i in range(1500)]  # beyond the multipart parser's own cap
    body, content_type = hostile.multipart(flood)
    for path in ("/predict", "/predict/batch"):
        assert_error(client.post(path, content=body, headers={"content-type": content_type}), 400, "malformed_body")
    assert_ready(client)


def test_extra_form_fields_are_ignored(ungated_client):
    client = ungated_client  # synthetic pictures: the input gate (rightly) refuses them
    files = {"file": ("x.png", hostile.png(), "image/png")}
    reference = assert_prediction(client.post("/predict", files=files))
    body = assert_prediction(client.post("/predict", files=files, data={f"junk{i}": "v" * 100 for i in range(200)}))
    assert body["probabilities"] == reference["probabilities"]
    assert_ready(client)


@pytest.mark.parametrize("filename", ["r\xe9sum\xe9\xff.png".encode("latin-1"), b"\xff\xfe\x00evil.png",
                                      b"../../etc/passwd", "\u75c5\u4f8b.png".encode()])
def test_odd_filenames(ungated_client, filename):
    client = ungated_client  # synthetic pictures: the input gate (rightly) refuses them
    body, content_type = hostile.multipart([(b"file", filename, hostile.png())])
    assert_prediction(client.post("/predict", content=body, headers={"content-type": content_type}))
    body, content_type = hostile.multipart([(b"files", filename, hostile.png())])
    response = client.post("/predict/batch", content=body, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    (item,) = response.json()["results"]
    assert item["status"] == 200 and isinstance(item["filename"], str)
    assert_ready(client)


def test_unknown_query_parameters_are_ignored(ungated_client):
    client = ungated_client  # synthetic pictures: the input gate (rightly) refuses them
    files = {"file": ("x.png", hostile.png(), "image/png")}
    reference = assert_prediction(client.post("/predict", files=files))
    body = assert_prediction(client.post("/predict?debug=1&model=other&threshold=0&%ff=%00", files=files))
    assert body["probabilities"] == reference["probabilities"]
    assert body["threshold"] == reference["threshold"]
    assert client.get("/health/ready?verbose=true").status_code == 200
    assert_ready(client)


def test_unknown_routes_and_methods(client):
    assert_error(client.get("/predict/../../etc/passwd"), 404, "not_found")
    assert_error(client.get("/predict"), 405, "method_not_allowed")
    assert_error(client.delete("/models"), 405, "method_not_allowed")
    assert_ready(client)
