"""DICOM bytes -> 2-D grayscale float32 in [0, 1], the way a viewer would display the image.

The standard order (PS3.3 C.11 / PS3.4 N.2): stored values -> Modality LUT (Rescale Slope/Intercept or a
Modality LUT Sequence) -> VOI LUT (a VOI LUT Sequence, else Window Center/Width) -> MONOCHROME1 inversion.
The result is scaled by the VOI's output range (or the image's own range when there is no VOI), so the same
radiograph stored as MONOCHROME1 or MONOCHROME2, 8 or 16 bits, rescaled or not, gives the same array.
Compressed transfer syntaxes decode where pydicom has a plug-in (Pillow: JPEG baseline/extended, JPEG 2000;
pydicom: RLE; the optional pylibjpeg plug-ins: JPEG lossless, JPEG-LS...), otherwise a clear 415.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing, get_decoder, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from model_store.errors import DecodeError, UnsupportedFormatError, check_pixel_count

_COLOR = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"})


def decode_dicom(data: bytes, *, max_pixels: int) -> np.ndarray:
    try:
        return _decode(data, max_pixels)
    except (DecodeError, MemoryError):
        raise
    except Exception as exc:  # pydicom parses lazily, and it and its plug-ins raise many types for bad data
        raise DecodeError(f"cannot decode DICOM: {type(exc).__name__}: {_safe_reason(exc)}") from exc


def _safe_reason(exc: Exception) -> str:
    """The first line of a parser's message, without the raw element bytes pydicom quotes in it (they can be
    a patient's name) and without the tracebacks it chains into it; bounded in length."""
    first = str(exc).splitlines()[0] if str(exc) else "malformed data"
    first = re.sub(r"""b(['"]).*?(?<!\\)\1""", "<bytes>", first)
    return first[:200]


def _decode(data: bytes, max_pixels: int) -> np.ndarray:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except InvalidDicomError as exc:
        raise DecodeError(f"cannot parse DICOM: {exc}") from exc
    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise UnsupportedFormatError("the DICOM object has no pixel data (not an image)")
    if ds.get("Rows") is None or ds.get("Columns") is None:
        raise DecodeError("the DICOM image has no Rows/Columns")
    check_pixel_count(int(ds.Columns), int(ds.Rows), max_pixels)  # before any pixel is decoded
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    _check_decoder(ds)
    stored = _first_frame(ds)
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        return _monochrome(stored, ds, invert=photometric == "MONOCHROME1")
    if photometric == "PALETTE COLOR":
        return _rgb_to_gray(apply_color_lut(stored, ds), bits=16)
    if photometric in _COLOR:
        return _rgb_to_gray(stored, bits=int(ds.get("BitsStored", 8)))
    raise UnsupportedFormatError(f"DICOM PhotometricInterpretation {photometric!r} is not supported")


def _check_decoder(ds: Dataset) -> None:
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    syntax: UID | None = ds.file_meta.get("TransferSyntaxUID", None)
    if syntax is None:
        # A bare dataset without file meta: pydicom has already told implicit from explicit VR while reading.
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        ds.file_meta.TransferSyntaxUID = syntax
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise UnsupportedFormatError(f"DICOM transfer syntax {syntax.name} ({syntax}) is not supported") from exc
    if not decoder.is_available:
        raise UnsupportedFormatError(
            f"DICOM transfer syntax {syntax.name} ({syntax}) needs a decoder plug-in that is not installed "
            "(install the 'dicom-codecs' extra: pylibjpeg with its libjpeg/openjpeg plug-ins), or send an "
            "uncompressed DICOM, PNG or TIFF")


def _first_frame(ds: Dataset) -> np.ndarray:
    """Only frame 0 is decoded: a multi-frame object is never expanded in full."""
    return np.asarray(pixel_array(ds, index=0))


def _monochrome(stored: np.ndarray, ds: Dataset, *, invert: bool) -> np.ndarray:
    values = apply_modality_lut(stored, ds)
    voi_seq = ds.get("VOILUTSequence")
    if voi_seq and voi_seq[0].get("LUTDescriptor") is not None and voi_seq[0].get("LUTData") is not None:
        values, lo, hi = _apply_voi_lut(values, voi_seq[0], ds)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        values = apply_windowing(values, ds, 0)
        lo, hi = _window_output_range(ds)
    else:
        values = np.asarray(values, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise DecodeError("DICOM pixel data contains NaN or infinite values")
    unit = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(values)
    if invert:  # MONOCHROME1: the minimum value is displayed white
        unit = 1.0 - unit
    return unit.astype(np.float32)


def _apply_voi_lut(values: np.ndarray, item: Dataset, ds: Dataset) -> tuple[np.ndarray, float, float]:
    """VOI LUT Sequence item -> (mapped values, output range). Done here rather than by pydicom's
    ``apply_voi``, which builds its index array in the LUT's output dtype and so wraps around for an 8-bit
    LUT with more than 256 entries (e.g. 12-bit input)."""
    entries, first_mapped, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    data = item.LUTData
    if isinstance(data, bytes):  # OW: 16-bit words in the dataset's byte order
        big = ds.file_meta.get("TransferSyntaxUID") == ExplicitVRBigEndian
        lut = np.frombuffer(data, dtype=">u2" if big else "<u2")[:entries]
    else:
        lut = np.atleast_1d(np.asarray(data, dtype=np.float64))  # US: pydicom gives a sequence of ints
    if lut.size < entries:
        raise DecodeError(f"VOI LUT has {lut.size} entries; its descriptor says {entries}")
    # rescaled values are floats holding integers; the LUT indexes by integer value
    index = np.clip(np.rint(values).astype(np.int64) - first_mapped, 0, entries - 1)
    return lut[index].astype(np.float64), 0.0, float(2**bits - 1)


def _window_output_range(ds: Dataset) -> tuple[float, float]:
    """The output range pydicom's ``apply_windowing`` maps a window onto (its own rule, mirrored)."""
    bits = int(ds.BitsStored)
    modality_seq = ds.get("ModalityLUTSequence")
    if modality_seq:
        lo, hi = 0.0, float(2 ** int(modality_seq[0].LUTDescriptor[2]) - 1)
    elif int(ds.PixelRepresentation) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    return min(lo, hi), max(lo, hi)


def _rgb_to_gray(rgb: np.ndarray, *, bits: int) -> np.ndarray:
    """ITU-R 601 luma, the weights Pillow's RGB->L uses, scaled to [0, 1]."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise DecodeError(f"expected a 3-channel colour image, got shape {rgb.shape}")
    luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(luma / float(2**bits - 1), 0.0, 1.0).astype(np.float32)

