"""Test images made from real X-rays: the same pixels encoded as every accepted format, and DICOM files
written with pydicom the way modalities write them (12-bit stored values, rescale, window, MONOCHROME1/2).

Importable from any test (tests/conftest.py puts this folder on sys.path; pytest runs in importlib mode).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from model_store.imaging import load_file


def real_xray(path: Path, size: int | None = None) -> np.ndarray:
    """A real radiograph as uint8 grayscale, optionally resized (kept small so tests stay fast)."""
    gray = load_file(path)
    if size is not None:
        gray = np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR))
    return gray


def encode(gray: np.ndarray, fmt: str, mode: str = "L") -> bytes:
    """uint8 grayscale -> file bytes in ``fmt`` (PNG, JPEG, TIFF, BMP, GIF); ``mode`` RGB/RGBA/P/I;16 re-encodes
    the same picture as colour, with alpha, palette or 16-bit."""
    image = Image.fromarray(gray)
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)  # Pillow picks I;16 for uint16
    elif mode != "L":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def make_dicom(gray: np.ndarray, photometric: str = "MONOCHROME2", *, bits: int = 12, rescale: bool = True,
               window: bool = True, preamble: bool = True, syntax: UID = ExplicitVRLittleEndian,
               frames: int = 1) -> bytes:
    """uint8 grayscale (as displayed) -> a DICOM file that displays the same picture.

    Stored values span ``bits`` bits; MONOCHROME1 stores them inverted. With ``rescale`` the modality LUT is
    slope 2 / intercept -1000; with ``window`` the VOI window covers exactly the stored range, so the displayed
    image equals ``gray`` up to rounding.
    """
    unit = gray.astype(np.float64) / 255.0
    top = 2**bits - 1
    stored = np.rint((unit if photometric == "MONOCHROME2" else 1.0 - unit) * top).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    lo, hi = 0.0, float(top)
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
        lo, hi = -1000.0, top * 2 - 1000.0
    if window:  # LINEAR: centre - 0.5 and width - 1 per PS3.3 C.11.2.1.2
        ds.WindowCenter, ds.WindowWidth = (lo + hi) / 2 + 0.5, hi - lo + 1
    if frames > 1:
        ds.NumberOfFrames = frames
        stored = np.stack([stored] + [np.full_like(stored, top)] * (frames - 1))
    ds.PixelData = stored.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    return data if preamble else data[132:]
