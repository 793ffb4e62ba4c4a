"""The golden set: a few dozen model inputs plus the float32 reference probabilities, stored in the artifact.

Serving runs whichever runtime it chose (int8, bf16, ...) on these inputs at every load and accepts it only if
it agrees with the reference (``app.runtimes.verify``). The trainer stores real validation inputs at export
(:func:`store_golden`); for an artifact without a set (e.g. v1) :func:`synthetic_inputs` gives deterministic
binarized patterns and the reference model computes the probabilities at load.

Storage: an HDF5 group ``cxr_golden`` beside Keras' groups in the same file (numeric datasets only, so the
artifact loader's "no object datasets" rule holds). The model's inputs are binary (0/1) after preprocessing,
so they are packed 8 per byte (``np.packbits``): 32 inputs of 224x224 take 200 kB instead of 6.4 MB.
Other inputs are stored as uint8 levels (x * 255) where that is exact, else as float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

if TYPE_CHECKING:
    from model_store.artifact import ModelMetadata

GROUP = "cxr_golden"
DEFAULT_SIZE = 32
# Inputs whose reference probability lies this close to the threshold test rounding, not the runtime: a
# correct runtime may legitimately land on either side. They are left out when a set is chosen.
MIN_MARGIN = 1e-3


@dataclass(frozen=True)
class GoldenSet:
    inputs: np.ndarray  # (n, H, W, C) float32, exactly what the model saw
    probabilities: np.ndarray  # (n, classes) float32: plain model(x, training=False), float32
    source: str  # "artifact" (stored at export) or "synthetic" (computed at load)

    def __len__(self) -> int:
        return len(self.inputs)


def calibrated(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities on the scale the stored threshold is on (the artifact's temperature; 1.0 = as is)."""
    if temperature == 1.0:
        return np.asarray(probabilities, dtype=np.float32)
    from model_store.calibration import apply_temperature  # only models trained with calibration need it

    return apply_temperature(probabilities, temperature)


def _encode(inputs: np.ndarray) -> tuple[str, np.ndarray]:
    """The most compact exact form: bits (binarized inputs), 8-bit levels, else float32 (gzip still applies)."""
    if np.isin(inputs, (0.0, 1.0)).all():
        return "packbits", np.packbits(inputs.astype(np.uint8).reshape(-1))
    levels = np.round(inputs * 255.0)
    if inputs.min() >= 0 and inputs.max() <= 1 and np.array_equal(levels / 255.0, inputs.astype(np.float64)):
        return "uint8", levels.astype(np.uint8).reshape(-1)
    return "float32", inputs.astype(np.float32).reshape(-1)


def _decode(encoding: str, data: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape))
    if encoding == "packbits":
        return np.unpackbits(data, count=count).reshape(shape).astype(np.float32)
    if encoding == "uint8":
        return (data[:count].astype(np.float64) / 255.0).astype(np.float32).reshape(shape)
    if encoding == "float32":
        return data[:count].astype(np.float32).reshape(shape)
    raise ValueError(f"unknown golden encoding {encoding!r}")


def select(inputs: np.ndarray, probabilities: np.ndarray, *, positive_index: int, threshold: float,
           temperature: float = 1.0, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``size`` inputs spread over the positive-probability range, nearest the threshold first (where a
    runtime's error would change a decision), leaving out those within MIN_MARGIN of it. The threshold is on
    the calibrated scale (``temperature``), as the service decides."""
    positive = calibrated(probabilities, temperature)[:, positive_index]
    keep = np.flatnonzero(np.abs(positive - threshold) >= MIN_MARGIN)
    # half nearest the threshold, half spread evenly over the rest by probability
    by_margin = keep[np.argsort(np.abs(positive[keep] - threshold), kind="stable")]
    near = list(by_margin[: size // 2])
    rest = np.array([i for i in keep if i not in set(near)], dtype=int)
    rest = rest[np.argsort(positive[rest], kind="stable")]
    spread = rest[np.linspace(0, len(rest) - 1, min(size - len(near), len(rest))).astype(int)] if len(rest) else []
    chosen = np.array(sorted({*near, *(int(i) for i in spread)}), dtype=int)
    return inputs[chosen], probabilities[chosen]


def write_golden(path: str | os.PathLike[str], inputs: np.ndarray, probabilities: np.ndarray) -> None:
    """Store (replace) the golden set in an existing artifact file."""
    inputs = np.asarray(inputs, dtype=np.float32)
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if inputs.ndim != 4 or len(inputs) != len(probabilities) or len(inputs) == 0:
        raise ValueError(f"golden set needs (n, H, W, C) inputs and (n, classes) probabilities, got "
                         f"{inputs.shape} and {probabilities.shape}")
    encoding, data = _encode(inputs)
    with h5py.File(path, "a") as handle:
        if GROUP in handle:
            del handle[GROUP]
        group = handle.create_group(GROUP)
        group.create_dataset("inputs", data=data, compression="gzip")
        group.create_dataset("probabilities", data=probabilities)
        group.attrs["encoding"] = encoding
        group.attrs["shape"] = np.asarray(inputs.shape, dtype=np.int64)


def read_golden(path: str | os.PathLike[str]) -> GoldenSet | None:
    """The stored golden set, or None when the artifact has none."""
    with h5py.File(path, "r") as handle:
        if GROUP not in handle:
            return None
        group = handle[GROUP]
        shape = tuple(int(v) for v in group.attrs["shape"])
        encoding = group.attrs["encoding"]
        encoding = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
        inputs = _decode(encoding, np.asarray(group["inputs"]), shape)
        probabilities = np.asarray(group["probabilities"], dtype=np.float32)
    if len(probabilities) != shape[0]:
        raise ValueError(f"{path}: golden set has {shape[0]} inputs but {len(probabilities)} probabilities")
    return GoldenSet(inputs, probabilities, "artifact")


def reference_probabilities(model: object, inputs: np.ndarray, chunk: int = 16) -> np.ndarray:
    """The definition of "right": the Keras model called directly, float32, inference mode."""
    outputs = [np.asarray(model(inputs[i : i + chunk], training=False))  # type: ignore[operator]
               for i in range(0, len(inputs), chunk)]
    return np.concatenate(outputs).astype(np.float32)


def store_golden(path: str | os.PathLike[str], model: object, candidates: np.ndarray, metadata: ModelMetadata,
                 size: int = DEFAULT_SIZE) -> str:
    """At export: run the reference on real (validation) inputs, preprocessed, keep up to ``size``, store them
    in the artifact at ``path``. The file changes: returns its new sha256."""
    from model_store.artifact import file_sha256

    candidates = np.asarray(candidates, dtype=np.float32)
    inputs, probabilities = select(candidates, reference_probabilities(model, candidates), size=size,
                                   **_decision(metadata))
    write_golden(Path(path), inputs, probabilities)
    return file_sha256(path)


def synthetic_inputs(shape: tuple[int, ...], count: int = 64, seed: int = 20261130) -> np.ndarray:
    """Deterministic binarized patterns for artifacts without a stored set: smooth random fields (blobs of
    several sizes) thresholded at several fill levels, plus bands and a border, so the model's outputs spread
    over its range rather than all sitting at one saturated extreme."""
    rng = np.random.default_rng(seed)
    height, width = shape[0], shape[1]
    out = np.empty((count, *shape), dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    for i in range(count):
        scale = (4, 8, 16, 32)[i % 4]
        coarse = rng.standard_normal((scale, scale))
        field = np.kron(coarse, np.ones((height // scale + 1, width // scale + 1)))[:height, :width]
        field += 0.8 * np.sin(2 * np.pi * (xx * rng.uniform(0.5, 3) + yy * rng.uniform(0.5, 3)))
        fill = 0.15 + 0.7 * ((i * 0.618) % 1.0)  # fraction of foreground pixels, spread by the golden ratio
        image = (field > np.quantile(field, 1.0 - fill)).astype(np.float32)
        out[i] = image.reshape(shape[:2] + (1,) * (len(shape) - 2)).astype(np.float32) * np.ones(shape, np.float32)
    return out


def _decision(metadata: ModelMetadata) -> dict[str, Any]:
    return {"positive_index": metadata.positive_index, "threshold": metadata.decision_threshold,
            "temperature": float(getattr(metadata, "temperature", 1.0))}


def load_or_compute(path: str | os.PathLike[str], model: object, metadata: ModelMetadata) -> GoldenSet:
    """The artifact's stored set; without one, synthetic inputs scored by the reference model now."""
    input_shape = metadata.preprocessing.input_shape
    stored = read_golden(path)
    if stored is not None:
        if stored.inputs.shape[1:] != tuple(input_shape):
            raise ValueError(f"golden inputs {stored.inputs.shape[1:]} do not match the model input {input_shape}")
        return stored
    candidates = synthetic_inputs(tuple(input_shape))
    inputs, probabilities = select(candidates, reference_probabilities(model, candidates), **_decision(metadata))
    return GoldenSet(inputs, probabilities, "synthetic")
