"""Fuzz target for the upload path before the model: ``imaging.decode`` + ``preprocess``.

The contract checked on every input: either a valid model input comes out, or one of OUR error types
(``DecodeError`` and its subclasses, ``PreprocessingError``) with a client-safe message. Any other exception,
a hang, or a crash is a bug. Used two ways:

* by the hypothesis tests (``check_one`` and ``seed_corpus``), in every test run;
* as an atheris (libFuzzer) harness, coverage-guided, for a bounded time:
  ``python tests/reliability/fuzz_decode.py CORPUS_DIR -max_total_time=60`` (CORPUS_DIR is seeded on first use).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # hostile.py, when run as a script

MAX_PIXELS = 4_000_000  # small, so a fuzzed header cannot make one example allocate gigabytes
# what a client must never see in a message: object reprs and addresses, file paths, tracebacks
LEAKS = re.compile(r"at 0x[0-9a-fA-F]+|<[a-zA-Z_.]+ object|Traceback|File \"|/[a-z]+/[a-z]+/|site-packages")


def _modules():  # imported late so that atheris can instrument them
    from model_store.imaging import DecodeError, decode
    from model_store.preprocessing import PreprocessingError, PreprocessingSpec, preprocess

    return DecodeError, decode, PreprocessingError, PreprocessingSpec(), preprocess


def check_one(data: bytes) -> np.ndarray | None:
    """Decode + preprocess one input under the contract; returns the model input, or None for a refusal."""
    decode_error, decode, preprocessing_error, spec, preprocess = _modules()
    try:
        image = decode(data, min_size=256, max_pixels=MAX_PIXELS)
    except decode_error as exc:
        message = str(exc)
        assert message and not LEAKS.search(message), f"error message leaks internals: {message!r}"
        return None
    assert isinstance(image, np.ndarray) and image.ndim == 2 and image.size > 0, (type(image), image.shape)
    assert image.dtype in (np.uint8, np.uint16, np.float32), image.dtype
    assert image.size <= MAX_PIXELS
    try:
        x = preprocess(image, spec)
    except preprocessing_error as exc:
        assert not LEAKS.search(str(exc))
        return None
    assert x.shape == spec.input_shape and x.dtype == np.float32
    assert np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0
    return x


def seed_corpus() -> dict[str, bytes]:
    """Small valid files of every accepted format and mode: where mutations start."""
    import io

    import hostile
    from PIL import Image

    gray = hostile.chest_like((48, 40), seed=7)
    seeds: dict[str, bytes] = {}
    for mode in ("L", "RGB", "RGBA", "P", "LA", "1"):
        seeds[f"png-{mode}"] = _save(Image.fromarray(gray).convert(mode), "PNG")
    seeds["png-16"] = hostile.encode(gray.astype(np.uint16) * 257, "PNG")
    seeds["jpeg-L"] = hostile.jpeg(gray)
    seeds["jpeg-RGB"] = hostile.encode(np.stack([gray] * 3, -1), "JPEG")
    seeds["jpeg-CMYK"] = hostile.cmyk_jpeg(gray)
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, "JPEG", progressive=True)
    seeds["jpeg-progressive"] = buffer.getvalue()
    seeds["tiff-raw"] = hostile.encode(gray, "TIFF")
    seeds["tiff-lzw"] = _save(Image.fromarray(gray), "TIFF", compression="tiff_lzw")
    seeds["tiff-16"] = hostile.tiff16(gray)
    seeds["tiff-float"] = hostile.tiff_float(gray)
    seeds["bmp"] = hostile.encode(gray, "BMP")
    seeds["gif"] = hostile.encode(gray, "GIF")
    seeds["gif-animated"] = hostile.animated("GIF", [gray, 255 - gray])
    seeds["apng"] = hostile.animated("PNG", [gray, 255 - gray])
    seeds["dicom-8"] = hostile.dicom(gray)
    seeds["dicom-bare"] = hostile.dicom(gray)[132:]
    seeds["dicom-nopixels"] = hostile.dicom_without_pixels()
    return seeds


def _save(image: object, fmt: str, **params: object) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)  # type: ignore[attr-defined]
    return buffer.getvalue()


def main() -> None:
    import atheris

    with atheris.instrument_imports(include=["model_store", "PIL", "pydicom"]):
        _modules()
    corpus = next((Path(arg) for arg in sys.argv[1:] if not arg.startswith("-")), None)
    if corpus is not None and not any(corpus.glob("*")):
        corpus.mkdir(parents=True, exist_ok=True)
        for name, data in seed_corpus().items():
            (corpus / name).write_bytes(data)
    atheris.Setup(sys.argv, check_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
