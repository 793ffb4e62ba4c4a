"""Errors of decoding untrusted image bytes, and the pixel-count guard every decoder runs before decoding.

Their own module so the decoders depend on them one way: ``imaging`` (Pillow formats, and the dispatcher) and
``dicom`` both import from here, ``imaging`` imports ``dicom``, nothing imports back. ``model_store.imaging``
re-exports these names, so ``from model_store.imaging import DecodeError`` keeps working.
"""

from __future__ import annotations


class DecodeError(ValueError):
    """The bytes are not a decodable image (HTTP 400). Subclasses say why more precisely."""


class UnsupportedFormatError(DecodeError):
    """The bytes are not one of the accepted formats, or use a feature we cannot decode (HTTP 415)."""


class ImageTooLargeError(DecodeError):
    """The image declares more pixels than allowed (HTTP 413): refused before its pixels are decoded."""


def check_pixel_count(width: int, height: int, max_pixels: int) -> None:
    """Refuse a declared size before any pixel is decoded (decompression bombs) or an image with no pixels."""
    if width <= 0 or height <= 0:
        raise DecodeError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} = {width * height:,} pixels; the limit is "
                                 f"{max_pixels:,}")
