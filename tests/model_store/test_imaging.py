"""model_store.imaging.decode: sniffing by magic bytes, limits before decoding, and every format giving the
same pixels (DICOM through the standard modality LUT -> VOI LUT -> MONOCHROME1 order)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from image_factory import encode, make_dicom, real_xray
from PIL import Image
from pydicom.uid import JPEGLosslessSV1, RLELossless

from model_store.imaging import (
    DecodeError,
    ImageTooLargeError,
    UnsupportedFormatError,
    decode,
    decode_with_pillow,
    load_file,
    sniff_format,
)

LIMIT = 50_000_000


@pytest.fixture(scope="module")
def xray(fullres_images) -> np.ndarray:
    """A real radiograph, made small so the format round trips stay fast."""
    return real_xray(fullres_images[0], size=96)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP", "GIF"])
def test_lossless_formats_give_the_original_pixels(xray, fmt):
    data = encode(xray, fmt)
    assert sniff_format(data) == fmt
    out = decode(data, max_pixels=LIMIT)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, xray)


def test_jpeg_decodes_close_to_the_original(xray):
    data = encode(xray, "JPEG")
    assert sniff_format(data) == "JPEG"
    out = decode(data, max_pixels=LIMIT)
    assert out.shape == xray.shape
    assert np.abs(out.astype(int) - xray.astype(int)).mean() < 3


def test_sixteen_bit_png_keeps_its_depth(xray):
    out = decode(encode(xray, "PNG", mode="I;16"), max_pixels=LIMIT)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, xray.astype(np.uint16) * 257)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P"])
def test_colour_alpha_and_palette_become_the_same_grayscale(xray, mode):
    out = decode(encode(xray, "PNG", mode=mode), max_pixels=LIMIT)
    assert out.ndim == 2
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - xray.astype(int)).max() <= 1


def test_exif_orientation_is_applied(xray):
    image = Image.fromarray(xray[:, :60])  # not square, so a rotation shows in the shape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif, quality=95)
    out = decode(buffer.getvalue(), max_pixels=LIMIT)
    assert out.shape == (60, 96)


def test_serving_decode_equals_the_training_decoder_on_real_uploads(fullres_images):
    for path in fullres_images[:4]:
        data = path.read_bytes()
        np.testing.assert_array_equal(decode(data, min_size=256, max_pixels=LIMIT),
                                      load_file(path, min_size=256))


def test_full_resolution_jpeg_is_decoded_at_reduced_scale(fullres_images):
    largest = max(fullres_images, key=lambda p: p.stat().st_size)
    full = decode(largest.read_bytes(), max_pixels=LIMIT)
    reduced = decode(largest.read_bytes(), min_size=256, max_pixels=LIMIT)
    assert min(reduced.shape) >= 256
    assert reduced.size * 4 <= full.size  # at least one DCT scale step smaller


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height: a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    with pytest.raises(ImageTooLargeError, match="9000x9000 = 81,000,000 pixels"):
        decode(_png_header_only(9000, 9000), max_pixels=LIMIT)
    with pytest.raises(ImageTooLargeError):  # past Pillow's own hard limit too
        decode(_png_header_only(100_000, 100_000), max_pixels=LIMIT)
    with pytest.raises(ImageTooLargeError):
        decode(_png_header_only(300, 300), max_pixels=300 * 300 - 1)


@pytest.mark.parametrize(("data", "named"), [
    (b"hello, this is text", "unrecognised"), (b"%PDF-1.7\n...", "PDF"), (b"PK\x03\x04zipzip", "ZIP"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WebP"),
])
def test_unknown_formats_are_unsupported_with_a_useful_message(data, named):
    with pytest.raises(UnsupportedFormatError, match=named) as caught:
        decode(data, max_pixels=LIMIT)
    assert "PNG, JPEG" in str(caught.value)


def test_empty_and_corrupt_files_are_decode_errors(xray):
    with pytest.raises(DecodeError, match="empty"):
        decode(b"", max_pixels=LIMIT)
    png = encode(xray, "PNG")
    for broken in (png[:60], png[:33] + b"\x00" * 200, b"\xff\xd8\xff\xe0" + b"\x00" * 50, b"BM" + b"\x01" * 40):
        with pytest.raises(DecodeError) as caught:
            decode(broken, max_pixels=LIMIT)
        assert type(caught.value) is DecodeError  # a 400, not a 413/415


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"GIF89a",
                               b"\x00" * 128 + b"DICM", b"\x02\x00\x00\x00UL", b""]),
       body=st.binary(max_size=300))
def test_hostile_bytes_only_ever_raise_decode_errors(prefix, body):
    try:
        out = decode(prefix + body, max_pixels=LIMIT)
    except DecodeError:
        return
    assert out.ndim == 2


def test_training_decoder_is_unchanged_for_training_files(fullres_images):
    data = fullres_images[0].read_bytes()
    np.testing.assert_array_equal(decode_with_pillow(data, min_size=256), load_file(fullres_images[0], min_size=256))


# -- DICOM --------------------------------------------------------------------------------------------------

def test_dicom_monochrome1_and_monochrome2_display_the_same_image(xray):
    expected = xray / 255.0
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        data = make_dicom(xray, photometric)
        assert sniff_format(data) == "DICOM"
        out = decode(data, max_pixels=LIMIT)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, expected, atol=1e-3)


@pytest.mark.parametrize(("bits", "rescale"), [(8, False), (12, True), (16, False), (16, True)])
def test_dicom_bit_depths_and_rescale_with_a_window(xray, bits, rescale):
    out = decode(make_dicom(xray, bits=bits, rescale=rescale), max_pixels=LIMIT)
    np.testing.assert_allclose(out, xray / 255.0, atol=2e-3)


def test_dicom_without_a_window_uses_the_image_range(xray):
    out = decode(make_dicom(xray, "MONOCHROME1", window=False), max_pixels=LIMIT)
    span = (xray.astype(float) - xray.min()) / (xray.max() - xray.min())
    np.testing.assert_allclose(out, span, atol=1e-3)


def test_dicom_window_is_applied_after_the_modality_lut(xray):
    """A narrow window (in rescaled units) clips: values below it are black, above it white."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(make_dicom(xray, bits=12, rescale=True)))
    ds.WindowCenter, ds.WindowWidth = 3095.0 - 1000 + 0.5, 1001.0  # rescaled units: around stored 2048 * 2 - 1000
    buffer = io.BytesIO()
    ds.save_as(buffer)
    out = decode(buffer.getvalue(), max_pixels=LIMIT)
    rescaled = np.rint(xray / 255.0 * 4095) * 2 - 1000
    assert (out[rescaled <= 1595] == 0).all()
    assert (out[rescaled > 2595] == 1).all()


def test_dicom_voi_lut_sequence_is_used(xray):
    import pydicom
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(io.BytesIO(make_dicom(xray, bits=12, rescale=False, window=False)))
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    item.add_new(0x00283006, "US", [255 - v // 16 for v in range(4096)])  # LUTData: an inverting 8-bit LUT
    ds.VOILUTSequence = [item]
    buffer = io.BytesIO()
    ds.save_as(buffer)
    out = decode(buffer.getvalue(), max_pixels=LIMIT)
    np.testing.assert_allclose(out, 1.0 - xray / 255.0, atol=1 / 255 + 1e-3)


def test_dicom_without_preamble_and_multiframe(xray):
    np.testing.assert_allclose(decode(make_dicom(xray, preamble=False), max_pixels=LIMIT), xray / 255.0, atol=1e-3)
    np.testing.assert_allclose(decode(make_dicom(xray, frames=3), max_pixels=LIMIT), xray / 255.0, atol=1e-3)


def test_dicom_rle_compressed_decodes(xray):
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(make_dicom(xray)))
    ds.compress(RLELossless)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    np.testing.assert_allclose(decode(buffer.getvalue(), max_pixels=LIMIT), xray / 255.0, atol=1e-3)


def test_dicom_compressed_without_a_plugin_is_unsupported(xray):
    import pydicom
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG lossless plug-in is installed here")
    ds = pydicom.dcmread(io.BytesIO(make_dicom(xray)))
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xc3" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(UnsupportedFormatError, match=r"JPEG Lossless.*plug-in"):
        decode(buffer.getvalue(), max_pixels=LIMIT)


def test_dicom_limits_and_non_images(xray):
    import pydicom

    data = make_dicom(xray)
    with pytest.raises(ImageTooLargeError):
        decode(data, max_pixels=xray.size - 1)
    ds = pydicom.dcmread(io.BytesIO(data))
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    with pytest.raises(UnsupportedFormatError, match="no pixel data"):
        decode(buffer.getvalue(), max_pixels=LIMIT)
    with pytest.raises(DecodeError):
        decode(data[: len(data) // 2], max_pixels=LIMIT)  # truncated pixel data


def test_dicom_rgb_becomes_grayscale(xray):
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(make_dicom(xray)))
    rgb = np.repeat(xray[..., None], 3, axis=2)
    ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "RGB", 3, 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    for tag in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        delattr(ds, tag)
    ds.PixelData = rgb.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer)
    np.testing.assert_allclose(decode(buffer.getvalue(), max_pixels=LIMIT), xray / 255.0, atol=1e-3)


# Found by the coverage-guided fuzzer (tests/reliability): a DICM stream whose file-meta group length element
# swallows a Patient's Name; pydicom's message quoted the raw bytes (and a chained traceback) into the error.
FUZZED_DICOM_WITH_A_NAME = bytes.fromhex(
    "000000000000000000000000000000000000000000000000000040000000000000000000000000000000000000e300000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000004449434d0200000053510400ce000000020000000000"
    "000000000000000000000000000000000000e300000000000000000000000000000000000000000000000000000000000000"
    "000000004449434d0200000053510400ce000000020000000000000000000001000000000000000000000000000000104c4f"
    "12006e000000000000000000000000000065726510001000504e0c00546573745e486f7374696c65"
)


def test_dicom_parse_errors_quote_no_element_bytes():
    with pytest.raises(DecodeError) as caught:
        decode(FUZZED_DICOM_WITH_A_NAME, max_pixels=10_000_000)
    message = str(caught.value)
    assert message.startswith("cannot decode DICOM: ")
    assert "Hostile" not in message and "Traceback" not in message and "\n" not in message
    assert len(message) < 300
