"""Decode a folder dataset once into a uint8 array at the model's input size, cached on disk.

Epochs then cost only augmentation, binarization and the network. The cache holds the grey image resized
(without crop, as the preprocessing does) to the input size, before binarization; when the files already have
that size (``chest_xray_224`` at input 224) it is exactly what serving would compute from the same file.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from model_store.preprocessing import PreprocessingSpec, center_crop_square, resize_area, to_unit_float
from training.data import ImageSet

log = logging.getLogger(__name__)


def _key(images: ImageSet, spec: PreprocessingSpec) -> str:
    digest = hashlib.sha256(f"{spec.input_size}|{spec.crop}".encode())
    assert images.paths is not None
    for path in images.paths:
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def grey_at_input_size(image: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    unit = to_unit_float(image[..., 0] if image.ndim == 3 else image)
    if spec.crop == "center":
        unit = center_crop_square(unit)
    return np.clip(np.rint(resize_area(unit, spec.input_size) * 255), 0, 255).astype(np.uint8)


def cached(images: ImageSet, spec: PreprocessingSpec, cache_dir: str | Path) -> ImageSet:
    """The same set with ``arrays`` filled (paths kept for patient keys); arrays sets pass through."""
    if images.arrays is not None or images.paths is None:
        return images
    path = Path(cache_dir) / f"images_{_key(images, spec)}.npy"
    if path.is_file():
        arrays = np.load(path)
        log.info("image cache hit %s (%d images)", path, len(arrays))
    else:
        arrays = np.stack([grey_at_input_size(images.image(i, min_size=2 * spec.input_size), spec)
                           for i in range(len(images))])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arrays)
        tmp.replace(path)
        log.info("image cache written %s (%d images)", path, len(arrays))
    return ImageSet(labels=images.labels, paths=images.paths, arrays=arrays, description=images.description,
                    skipped=images.skipped)
