"""Site calibration and named operating points: what a hospital's local sample changes about a model version.

A site calibration is a logistic recalibration of the model's logit (Cox 1958; Steyerberg's "recalibration in
the large" when only the intercept is supported): ``logit(p_site) = intercept + slope * logit(p)``, where ``p``
is P(positive) after the artifact's temperature. It is monotone (slope > 0), so it never changes the ranking
(ROC AUC); it moves the probabilities, and so what a threshold means. Operating points are named thresholds on
the served scale (after both calibrations), each tied to one model version because they live in its artifact.

Serving and the site tools share these functions so that a report describes exactly what the service answers.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from model_store.calibration import apply_temperature

_EPS = 1e-7
# the one operating point an artifact without named points has: its validation threshold
DEFAULT_POINT = "default"
POINT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
METHODS = ("logistic", "intercept")


class CalibratedMetadata(Protocol):
    """The fields of model_store.artifact.ModelMetadata these functions read (a Protocol, not an import:
    the artifact module validates its fields with this one, so importing it back would be a cycle)."""

    decision_threshold: float
    temperature: float
    site_calibration: dict[str, Any] | None
    operating_points: dict[str, float]
    default_operating_point: str | None

    @property
    def positive_index(self) -> int: ...


@dataclass(frozen=True)
class SiteCalibration:
    """``logit(p_site) = intercept + slope * logit(p)``; ``method`` says whether the slope was fitted
    (``logistic``) or held at 1 because the site sample did not support it (``intercept``)."""

    intercept: float
    slope: float
    method: str

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"site calibration method must be one of {METHODS}, got {self.method!r}")
        for name in ("intercept", "slope"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not np.isfinite(value):
                raise ValueError(f"site calibration {name} must be a finite number, got {value!r}")
        if not self.slope > 0:
            raise ValueError(f"site calibration slope must be > 0 (a recalibration keeps the ranking), "
                             f"got {self.slope!r}")
        if self.method == "intercept" and self.slope != 1.0:
            raise ValueError(f"an intercept-only site calibration has slope 1, got {self.slope!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SiteCalibration:
        try:
            return cls(intercept=float(data["intercept"]), slope=float(data["slope"]), method=str(data["method"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"invalid site calibration {data!r}: {exc}") from exc

    def apply(self, positive: np.ndarray) -> np.ndarray:
        """P(positive) at the site, from P(positive) after the artifact's temperature."""
        p = np.clip(np.asarray(positive, dtype=np.float64), _EPS, 1 - _EPS)
        logit = self.intercept + self.slope * np.log(p / (1 - p))
        return 1.0 / (1.0 + np.exp(-logit))


def validate_operating_points(points: dict[str, float], default: str | None) -> None:
    """Raise ValueError unless every name is a short lower-case identifier, every threshold is in [0, 1] and
    ``default`` (when given) names one of them."""
    for name, threshold in points.items():
        if not isinstance(name, str) or not POINT_NAME.match(name):
            raise ValueError(f"operating point name {name!r} must match {POINT_NAME.pattern}")
        if not isinstance(threshold, int | float) or not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"operating point {name!r} threshold must be in [0, 1], got {threshold!r}")
    if default is not None and default not in points:
        raise ValueError(f"default_operating_point {default!r} is not one of the operating points "
                         f"{sorted(points)}")


def site_calibration_of(metadata: CalibratedMetadata) -> SiteCalibration | None:
    return None if metadata.site_calibration is None else SiteCalibration.from_dict(metadata.site_calibration)


def final_probabilities(probabilities: np.ndarray, metadata: CalibratedMetadata) -> np.ndarray:
    """Class probabilities as the service answers them (rows sum to 1): the model's output, then the
    artifact's temperature, then its site calibration when it has one (two classes only)."""
    calibrated = apply_temperature(probabilities, metadata.temperature)
    site = site_calibration_of(metadata)
    if site is None:
        return calibrated
    if calibrated.shape[-1] != 2:
        raise ValueError("a site calibration needs a two-class model")
    positive = site.apply(calibrated[..., metadata.positive_index])
    out = np.empty(calibrated.shape, dtype=np.float32)
    out[..., metadata.positive_index] = positive
    out[..., 1 - metadata.positive_index] = 1.0 - positive
    return out


def effective_operating_points(metadata: CalibratedMetadata) -> dict[str, float]:
    """The named thresholds on the served P(positive) scale; an artifact without named points has one,
    ``default``, its validation threshold."""
    if metadata.operating_points:
        return {name: float(t) for name, t in metadata.operating_points.items()}
    return {DEFAULT_POINT: float(metadata.decision_threshold)}


def default_point_name(metadata: CalibratedMetadata) -> str:
    """The operating point an answer uses when the caller and the configuration name none."""
    if metadata.operating_points:
        return metadata.default_operating_point or sorted(metadata.operating_points)[0]
    return DEFAULT_POINT
