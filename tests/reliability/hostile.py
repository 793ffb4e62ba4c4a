"""Hostile and odd inputs, built in memory: what a hospital integration may send on a bad day.

Importable from the reliability tests (their conftest puts this folder on sys.path; pytest runs in importlib
mode) and from benchmarks/soak.py. Every builder returns file bytes; nothing touches the disk.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def chest_like(size: tuple[int, int] = (256, 256), seed: int = 0) -> np.ndarray:
    """A uint8 grayscale picture with the rough layout of a chest film (two dark lungs in a bright body)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    body = 200 - 60 * ((xx - w / 2) ** 2 / (w / 2) ** 2 + (yy - h / 2) ** 2 / (h / 1.5) ** 2)
    for cx in (0.3 * w, 0.7 * w):
        lung = ((xx - cx) / (0.16 * w)) ** 2 + ((yy - 0.5 * h) / (0.32 * h)) ** 2 < 1
        body = np.where(lung, 60, body)
    noise = np.random.default_rng(seed).normal(0, 12, size)
    return np.clip(body + noise, 0, 255).astype(np.uint8)


def encode(array: np.ndarray, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png(array: np.ndarray | None = None) -> bytes:
    return encode(chest_like() if array is None else array, "PNG")


def jpeg(array: np.ndarray | None = None, quality: int = 90) -> bytes:
    return encode(chest_like() if array is None else array, "JPEG", quality=quality)


# -- hand-built PNG chunks --------------------------------------------------------------------------------
def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring ``width x height`` 8-bit gray pixels, with a few KB of zlib data that would
    inflate to gigabytes: the decompression bomb. Refusal must come from the header, before any inflation."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * width
    compressor = zlib.compressobj(9)
    data = compressor.compress(row * 64) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def gif_bomb(width: int = 12000, height: int = 14000, stray: bytes = b"") -> bytes:
    """A GIF of under a kilobyte whose first frame (disposal: restore to background) is ``width x height``:
    Pillow allocates that area while merely opening the file. ``stray`` bytes before the frame are skipped by
    Pillow (a fuzzer found that)."""
    screen = struct.pack("<HHBBB", width, height, 0xF7, 0, 0) + bytes(range(256)) * 3
    control = b"\x21\xf9\x04\x09\x00\x00\x00\x00"  # disposal 2, transparent index 0
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x08\x02\x4c\x01\x00"
    return b"GIF89a" + screen + stray + control + frame + b"\x3b"


def truncated(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * fraction))]


def png_corrupt_idat(data: bytes | None = None) -> bytes:
    """A PNG whose IDAT payload is garbage but whose chunk CRCs are right, so the damage reaches zlib."""
    data = bytearray(data or png())
    offset = 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = bytes(data[offset + 4 : offset + 8])
        if kind == b"IDAT":
            start = offset + 8
            rng = np.random.default_rng(1)
            data[start + 2 : start + length] = rng.integers(0, 256, length - 2, dtype=np.uint8).tobytes()
            crc = zlib.crc32(bytes(data[offset + 4 : start + length]))
            data[start + length : start + length + 4] = struct.pack(">I", crc)
            break
        offset += 12 + length
    return bytes(data)


def png_bad_crc(data: bytes | None = None) -> bytes:
    """A PNG with one flipped byte inside IHDR: the chunk CRC no longer matches."""
    data = bytearray(data or png())
    data[20] ^= 0xFF
    return bytes(data)


# -- other formats and modes ------------------------------------------------------------------------------
def tiff16(array: np.ndarray | None = None) -> bytes:
    gray = chest_like() if array is None else array
    return encode(gray.astype(np.uint16) * 257, "TIFF")


def tiff_float(array: np.ndarray | None = None) -> bytes:
    gray = chest_like() if array is None else array
    return encode(gray.astype(np.float32) / 255.0, "TIFF")


def cmyk_jpeg(array: np.ndarray | None = None) -> bytes:
    gray = chest_like() if array is None else array
    buffer = io.BytesIO()
    Image.fromarray(gray).convert("CMYK").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def animated(fmt: str, frames: list[np.ndarray]) -> bytes:
    """An animated GIF or APNG; frame 0 first."""
    images = [Image.fromarray(frame) for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format=fmt, save_all=True, append_images=images[1:], duration=100, loop=0)
    return buffer.getvalue()


# -- DICOM ------------------------------------------------------------------------------------------------
def _dataset(syntax: UID = ExplicitVRLittleEndian) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientName = "Test^Hostile"
    return ds


def _save(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom(array: np.ndarray | None = None) -> bytes:
    gray = chest_like() if array is None else array
    ds = _dataset()
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = gray.tobytes()
    return _save(ds)


def dicom_without_pixels() -> bytes:
    """A structured-report-like object: valid DICOM, no image in it."""
    ds = _dataset()
    ds.Modality = "SR"
    ds.StudyDescription = "no pixel data here"
    return _save(ds)


def dicom_unsupported_syntax(uid: str = "1.2.840.10008.1.2.4.80") -> bytes:
    """Encapsulated pixel data in a transfer syntax we cannot decode (default: JPEG-LS lossless, which needs a
    plug-in that is not installed). The fragment itself is junk: refusal must come from the syntax."""
    from pydicom.encaps import encapsulate

    ds = _dataset(UID(uid))
    ds.Rows, ds.Columns = 64, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True, implicit_vr=False, little_endian=True)
    return buffer.getvalue()


def dicom_bomb(rows: int = 60_000, columns: int = 60_000) -> bytes:
    """Header says 3.6 G pixels; the pixel data holds a few bytes."""
    ds = _dataset()
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = b"\x00" * 16
    return _save(ds)


def fake_dicm_preamble() -> bytes:
    """128 bytes, the 'DICM' magic, then text: sniffed as DICOM, but not a DICOM stream."""
    return b"\x00" * 128 + b"DICM" + b"this is not a DICOM data set, only its magic number " * 20


# -- not images at all ------------------------------------------------------------------------------------
NOT_IMAGES: dict[str, bytes] = {
    "text": b"Patient: Doe, John\nFindings: none\n" * 10,
    "html": b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
    "pdf": b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
    "zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 64,
    "elf": b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56 + b"\x90" * 64,
    "windows_exe": b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff" + b"\x00" * 48 + b"This program cannot be run",
    "json": b'{"image": "not really"}',
    "gzip": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\x00" * 20,
}


def multipart(parts: list[tuple[bytes, bytes, bytes]], boundary: bytes = b"cxr-boundary-7f3a") -> tuple[bytes, str]:
    """A multipart/form-data body from raw (field name, filename, content) triples: lets a test send bytes an
    HTTP client library would refuse to produce (e.g. a filename that is not UTF-8)."""
    out = io.BytesIO()
    for name, filename, content in parts:
        out.write(b"--" + boundary + b"\r\n")
        out.write(b'Content-Disposition: form-data; name="' + name + b'"; filename="' + filename + b'"\r\n')
        out.write(b"Content-Type: application/octet-stream\r\n\r\n")
        out.write(content + b"\r\n")
    out.write(b"--" + boundary + b"--\r\n")
    return out.getvalue(), f"multipart/form-data; boundary={boundary.decode()}"
