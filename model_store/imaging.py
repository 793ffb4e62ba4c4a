"""Image file bytes -> 2-D grayscale array. The one decoder used by training loaders and by serving.

Kept beside the preprocessing so that a model sees the same pixels whether an X-ray came from a training
folder or from an upload (same RGB->L conversion, same EXIF handling, same reduced JPEG decoding).
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps


class DecodeError(ValueError):
    """The bytes are not a decodable image."""


def decode_with_pillow(data: bytes, min_size: int | None = None) -> np.ndarray:
    """Decode PNG/JPEG/TIFF/BMP/... bytes to a uint8 (or uint16 for 16-bit grayscale) 2-D array.

    ``min_size``: JPEGs may be decoded at a reduced scale (1/2, 1/4, 1/8, done in the DCT domain, which
    averages like an area resize) as long as both sides stay >= min_size. Cheap for full-resolution uploads.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if min_size is not None and image.format == "JPEG":
                image.draft("L", (min_size, min_size))
            return pillow_to_gray(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
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
