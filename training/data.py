"""Datasets: the Kermany folder layout and MedMNIST ``.npz`` files, stratified splits, class balancing.

Images are decoded on demand (by index), never held as a float64 tensor: a folder dataset keeps only
paths, an ``.npz`` dataset keeps its small uint8 array.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from model_store.imaging import DecodeError, load_file

log = logging.getLogger(__name__)

CLASS_NAMES = ["NORMAL", "PNEUMONIA"]
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff"}
Balance = Literal["undersample", "class-weight", "none"]


@dataclass
class ImageSet:
    """A labelled set of grayscale images, decoded lazily. ``paths`` or ``arrays`` holds the images."""

    labels: np.ndarray
    paths: list[Path] | None = None
    arrays: np.ndarray | None = None
    description: str = ""
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int, min_size: int | None = None) -> np.ndarray:
        if self.arrays is not None:
            return self.arrays[index]
        assert self.paths is not None
        return load_file(self.paths[index], min_size=min_size)

    def subset(self, indices: Sequence[int] | np.ndarray, description: str | None = None) -> ImageSet:
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            labels=self.labels[indices],
            paths=[self.paths[i] for i in indices] if self.paths is not None else None,
            arrays=self.arrays[indices] if self.arrays is not None else None,
            description=description or self.description,
        )

    def class_counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(CLASS_NAMES)}


def load_folder_split(root: str | os.PathLike[str], split: str, check: bool = True) -> ImageSet:
    """``root/split/{NORMAL,PNEUMONIA}/*`` -> ImageSet. Non-images (.DS_Store, ...) are ignored; with
    ``check`` every image is opened once and unreadable ones are reported and left out, not fatal."""
    base = Path(root) / split
    if not base.is_dir():
        raise FileNotFoundError(f"no split folder {base} (expected {base}/NORMAL and {base}/PNEUMONIA)")
    paths: list[Path] = []
    labels: list[int] = []
    skipped: list[str] = []
    for label, name in enumerate(CLASS_NAMES):
        folder = base / name
        if not folder.is_dir():
            raise FileNotFoundError(f"missing class folder {folder}")
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if check:
                try:
                    load_file(path, min_size=8)
                except (DecodeError, OSError) as exc:
                    skipped.append(f"{path}: {exc}")
                    continue
            paths.append(path)
            labels.append(label)
    for line in skipped:
        log.warning("skipping unreadable image %s", line)
    if not paths:
        raise ValueError(f"no readable images under {base}")
    return ImageSet(labels=np.asarray(labels, dtype=np.int64), paths=paths,
                    description=f"{base} ({len(paths)} images)", skipped=skipped)


def load_npz_split(path: str | os.PathLike[str], split: str) -> ImageSet:
    """MedMNIST ``.npz``: ``{split}_images`` (N, H, W) uint8 and ``{split}_labels`` (N, 1)."""
    with np.load(path) as data:
        key = f"{split}_images"
        if key not in data:
            raise KeyError(f"{path} has no {key!r}; keys: {sorted(data.keys())}")
        images = data[key]
        labels = data[f"{split}_labels"].reshape(-1).astype(np.int64)
    if images.ndim == 4:  # RGB MedMNIST variants
        images = images.mean(axis=-1).astype(np.uint8)
    return ImageSet(labels=labels, arrays=images, description=f"{path}:{split} ({len(labels)} images)")


def load_split(source: str | os.PathLike[str], split: str) -> ImageSet:
    source = Path(source)
    return load_npz_split(source, split) if source.suffix == ".npz" else load_folder_split(source, split)


def has_split(source: str | os.PathLike[str], split: str) -> bool:
    source = Path(source)
    if source.suffix == ".npz":
        with np.load(source) as data:
            return f"{split}_images" in data
    return (source / split).is_dir()


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held_out) index arrays; held_out has ``fraction`` of each class, shuffled with ``seed``."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    keep, held = train_test_split(indices, test_size=fraction, stratify=labels, random_state=seed, shuffle=True)
    return np.sort(keep), np.sort(held)


def undersample(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices with every class cut to the smallest class's count, drawn without replacement."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    smallest = int(counts.min())
    chosen = [rng.choice(np.flatnonzero(labels == c), size=smallest, replace=False) for c in classes]
    return np.sort(np.concatenate(chosen))


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """'balanced' weights: n_samples / (n_classes * count)."""
    classes, counts = np.unique(labels, return_counts=True)
    return {int(c): float(len(labels) / (len(classes) * n)) for c, n in zip(classes, counts, strict=True)}
