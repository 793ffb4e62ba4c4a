"""Image file bytes -> 2-D grayscale array. The one decoder used by training loaders and by serving.

Kept beside the preprocessing so that a model sees the same pixels whether an X-ray came from a training
folder or from an upload (same RGB->L conversion, same EXIF handling, same reduced JPEG decoding).

Serving calls :func:`decode`, which trusts the bytes, never the file name or the client's content type: the
format is sniffed from magic bytes, only the matching Pillow plug-in may parse them, and the pixel count from
the header is checked before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from model_store.dicom import decode_dicom

# The error types live in model_store.errors (imaging -> dicom -> errors, no way back); re-exported here because
# callers catch them where they call the decoder.
from model_store.errors import DecodeError, ImageTooLargeError, UnsupportedFormatError, check_pixel_count

SUPPORTED_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "DICOM")

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
)
# Formats people do send, named in the 415 message so the fix is obvious.
_KNOWN_OTHERS: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "PDF"), (b"RIFF", "RIFF/WebP"), (b"\x00\x00\x00\x0cjP", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"), (b"PK\x03\x04", "ZIP"), (b"\x1f\x8b", "gzip"),
)
_DICOM_VRS = frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"OB", b"OD", b"OF",
    b"OL", b"OV", b"OW", b"PN", b"SH", b"SL", b"SQ", b"SS", b"ST", b"SV", b"TM", b"UC", b"UI", b"UL", b"UN",
    b"UR", b"US", b"UT", b"UV",
})


def sniff_format(data: bytes) -> str | None:
    """One of :data:`SUPPORTED_FORMATS` from the leading bytes, or None."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "DICOM"
    if _looks_like_bare_dicom(data):
        return "DICOM"
    return None


def _looks_like_bare_dicom(data: bytes) -> bool:
    """A DICOM stream without the 128-byte preamble (some PACS exports): it starts with a group 0002 or
    0008 element in little-endian order, explicit VR (two known letters) or implicit (a plausible length)."""
    if len(data) < 8 or data[0:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    if data[4:6] in _DICOM_VRS:
        return True
    return int.from_bytes(data[4:8], "little") < len(data)


def decode(data: bytes, *, min_size: int | None = None, max_pixels: int) -> np.ndarray:
    """Untrusted upload bytes -> 2-D grayscale array (uint8, uint16, or float32 in [0, 1] for DICOM).

    Raises :class:`UnsupportedFormatError`, :class:`ImageTooLargeError` or :class:`DecodeError`.
    ``min_size``: see :func:`decode_with_pillow` (serving passes twice the model input size, as training does).
    """
    if not data:
        raise DecodeError("the upload is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedFormatError(_unsupported_message(data))
    if fmt == "DICOM":
        return decode_dicom(data, max_pixels=max_pixels)
    try:
        return _decode_pillow(data, min_size=min_size, max_pixels=max_pixels, formats=(fmt,))
    except (DecodeError, MemoryError):
        raise
    except Exception as exc:  # a hostile file can make a Pillow plug-in raise almost anything
        raise DecodeError(f"cannot decode {fmt} image: {type(exc).__name__}: {exc}") from exc


def _unsupported_message(data: bytes) -> str:
    accepted = ", ".join(SUPPORTED_FORMATS)
    for magic, name in _KNOWN_OTHERS:
        if data.startswith(magic):
            return f"{name} files are not supported; send one of {accepted}"
    return f"unrecognised image format (first bytes {data[:8].hex()}); send one of {accepted}"


def decode_with_pillow(data: bytes, min_size: int | None = None) -> np.ndarray:
    """Decode PNG/JPEG/TIFF/BMP/... bytes to a uint8 (or uint16 for 16-bit grayscale) 2-D array.

    ``min_size``: JPEGs may be decoded at a reduced scale (1/2, 1/4, 1/8, done in the DCT domain, which
    averages like an area resize) as long as both sides stay >= min_size. Cheap for full-resolution uploads.
    """
    return _decode_pillow(data, min_size=min_size, max_pixels=None, formats=None)


def gif_first_frame_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a GIF's first frame, read from its image descriptor; None if there is none.

    Pillow allocates the first frame's disposal area while *opening* a GIF, before any size check of ours can
    run (a 40-byte file can ask for 179 M pixels): so this is read from the bytes first."""
    if len(data) < 13:
        return None
    flags = data[10]
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # skip the global colour table
    while pos < len(data):  # the way Pillow walks it: extensions skipped, stray bytes ignored, ";" ends
        if data[pos] == 0x3B:
            return None
        if data[pos] == 0x2C:  # image descriptor: left, top, width, height
            if pos + 9 > len(data):
                return None
            width, height = int.from_bytes(data[pos + 5 : pos + 7], "little"), int.from_bytes(
                data[pos + 7 : pos + 9], "little")
            return width, height
        if data[pos] == 0x21:  # introducer and label, then data sub-blocks up to an empty one
            pos += 2
            while pos < len(data) and data[pos]:
                pos += data[pos] + 1
        pos += 1
    return None


def _decode_pillow(data: bytes, *, min_size: int | None, max_pixels: int | None,
                   formats: tuple[str, ...] | None) -> np.ndarray:
    if max_pixels is not None and formats == ("GIF",):
        frame = gif_first_frame_size(data)
        if frame is not None and frame[0] * frame[1] > max_pixels:
            check_pixel_count(*frame, max_pixels)
    try:
        with Image.open(io.BytesIO(data), formats=formats) as image:
            if max_pixels is not None:
                check_pixel_count(*image.size, max_pixels)
            if min_size is not None and image.format == "JPEG":
                image.draft("L", (min_size, min_size))
            ImageOps.exif_transpose(image, in_place=True)  # not a copy of every upload without an orientation
            return pillow_to_gray(image)
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit, should ours be set higher
        raise ImageTooLargeError(str(exc)) from exc
    except DecodeError:
        raise
    except UnidentifiedImageError as exc:  # its message holds the stream's repr (a memory address)
        kind = formats[0] if formats else "image"
        raise DecodeError(f"cannot decode image: not a valid {kind} file (damaged header)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DecodeError(f"cannot decode image: {exc}") from exc


def pillow_to_gray(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> 2-D grayscale array (uint8, or uint16 for 16-bit grayscale, float32 for 'F')."""
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image, dtype=np.uint16)
    if image.mode == "I":
        array = np.asarray(image)
        return np.clip(array, 0, 65535).astype(np.uint16)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float32)
        lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
        return ((array - lo) / (hi - lo)).astype(np.float32) if hi > lo else np.zeros_like(array)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.uint8)


def load_file(path: str | os.PathLike[str], min_size: int | None = None) -> np.ndarray:
    with open(path, "rb") as handle:
        return decode_with_pillow(handle.read(), min_size=min_size)
