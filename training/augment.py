"""Augmentation that suits radiographs: small rotations, shifts, zoom, brightness/contrast/gamma; no flips
(left/right anatomy matters). Works on the decoded grayscale image, before the shared preprocessing."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class AugmentConfig:
    max_rotation_deg: float = 7.0
    max_shift: float = 0.06  # fraction of width/height
    max_zoom: float = 0.08
    max_brightness: float = 0.08  # additive, fraction of full scale
    max_contrast: float = 0.12  # multiplicative around the mean
    # anisotropic stretch, width x (1 + a) and height / (1 + a): films reach the model stretched to a square
    # from whatever aspect ratio they had, so the network should not read anything into proportions
    max_aspect: float = 0.0
    # gamma = exp(U(-g, g)) on the [0, 1] scale: exposure and look-up-table differences between machines move
    # the fixed binarize threshold through different anatomy, which a linear brightness shift does not imitate
    max_log_gamma: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def scaled(self, factor: float) -> AugmentConfig:
        """Every range multiplied by ``factor`` (stronger or weaker augmentation)."""
        return AugmentConfig(**{k: v * factor for k, v in asdict(self).items()})

    def with_intensity(self, factor: float, max_log_gamma: float) -> AugmentConfig:
        """Brightness and contrast ranges multiplied by ``factor``, gamma range set; geometry unchanged."""
        return replace(self, max_brightness=self.max_brightness * factor, max_contrast=self.max_contrast * factor,
                       max_log_gamma=max_log_gamma)


def augment(image: np.ndarray, config: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random affine + intensity jitter of a uint8 2-D image; returns uint8 of the same shape."""
    h, w = image.shape
    angle = math.radians(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg))
    scale = 1.0 + rng.uniform(-config.max_zoom, config.max_zoom)
    tx, ty = rng.uniform(-config.max_shift, config.max_shift, size=2) * (w, h)
    # drawn only when enabled, so runs without it keep their random sequence (and v1 stays reproducible)
    aspect = 1.0 + rng.uniform(-config.max_aspect, config.max_aspect) if config.max_aspect else 1.0
    sx, sy = scale * aspect, scale / aspect
    # inverse map (output -> input) about the image centre, as Image.transform expects
    cos, sin = math.cos(angle), math.sin(angle)
    a, b, d, e = cos / sx, sin / sy, -sin / sx, cos / sy
    cx, cy = w / 2, h / 2
    coeffs = (a, b, cx - a * (cx + tx) - b * (cy + ty),
              d, e, cy - d * (cx + tx) - e * (cy + ty))
    moved = Image.fromarray(image).transform((w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)
    out = np.asarray(moved, dtype=np.float32)
    mean = out.mean()
    contrast = 1.0 + rng.uniform(-config.max_contrast, config.max_contrast)
    brightness = rng.uniform(-config.max_brightness, config.max_brightness) * 255.0
    out = (out - mean) * contrast + mean + brightness
    if config.max_log_gamma:  # drawn only when enabled, like the aspect
        gamma = math.exp(rng.uniform(-config.max_log_gamma, config.max_log_gamma))
        out = 255.0 * (np.clip(out, 0.0, 255.0) / 255.0) ** gamma
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
