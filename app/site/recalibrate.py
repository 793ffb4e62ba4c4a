"""Fit a site calibration and the named operating points on a scored local sample.

- Calibration: logistic recalibration of the logit after the artifact's temperature (intercept and slope);
  intercept only (slope held at 1) when a likelihood-ratio test does not support the slope (p >= 0.05), or
  when the fitted slope is not positive (it would reverse the ranking), or when the sample's classes separate
  perfectly (the slope is then not identified: its estimate runs off to a huge number).
- ``screening``: the highest threshold whose sensitivity on the site sample is at least the target.
- ``balanced``: calibrated P >= 0.5. Once the probabilities are calibrated to the site, 0.5 is the threshold
  that minimises the expected number of errors at the site's prevalence (the Bayes decision for equal costs);
  it needs no second search on the same films, so it carries none of a searched threshold's optimism
  (a maximal Youden index would).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.site.stats import CalibrationFit, calibration_fit, screening_threshold
from model_store.calibration import apply_temperature
from model_store.site_calibration import SiteCalibration, final_probabilities

LR_ALPHA = 0.05
BALANCED_THRESHOLD = 0.5
SCREENING, BALANCED = "screening", "balanced"


@dataclass(frozen=True)
class SiteFit:
    calibration: SiteCalibration
    fit: CalibrationFit  # the full fit and the test that chose the method
    points: dict[str, float]
    target_sensitivity: float

    def describe(self) -> dict[str, Any]:
        return {"calibration": self.calibration.to_dict(), "fit": self.fit.to_dict(), "lr_alpha": LR_ALPHA,
                "operating_points": self.points, "target_sensitivity": self.target_sensitivity,
                "rules": {SCREENING: f"highest threshold with site sensitivity >= {self.target_sensitivity:g}",
                          BALANCED: f"site-calibrated P >= {BALANCED_THRESHOLD:g}"}}


def temperature_scaled(raw: np.ndarray, metadata: Any) -> np.ndarray:
    """P(positive) after the artifact's temperature only: what a site calibration is fitted on and applied to."""
    return np.asarray(apply_temperature(raw, metadata.temperature)[:, metadata.positive_index], np.float64)


def fit_calibration(p: np.ndarray, labels: np.ndarray) -> tuple[SiteCalibration, CalibrationFit]:
    fit = calibration_fit(p, labels)
    if fit.lr_p < LR_ALPHA and fit.slope.value > 0 and not fit.separated:
        return SiteCalibration(fit.intercept.value, fit.slope.value, "logistic"), fit
    return SiteCalibration(fit.intercept_in_the_large.value, 1.0, "intercept"), fit


def with_site(metadata: Any, calibration: SiteCalibration) -> Any:
    """The metadata with this calibration and no named points yet (to score on the new scale)."""
    return dataclasses.replace(metadata, site_calibration=calibration.to_dict(), operating_points={},
                               default_operating_point=None)


def fit_site(raw: np.ndarray, labels: np.ndarray, metadata: Any, target_sensitivity: float = 0.95) -> SiteFit:
    calibration, fit = fit_calibration(temperature_scaled(raw, metadata), labels)
    served = final_probabilities(raw, with_site(metadata, calibration))[:, metadata.positive_index]
    points = {SCREENING: screening_threshold(served, labels, target_sensitivity), BALANCED: BALANCED_THRESHOLD}
    return SiteFit(calibration, fit, points, target_sensitivity)


def site_metadata(metadata: Any, site: SiteFit, default_point: str, version: int, **fields: Any) -> Any:
    """The new version's metadata: the base's, plus the calibration, the points, and ``fields``
    (provenance, metrics, created_at, code_version)."""
    if default_point not in site.points:
        raise ValueError(f"default operating point {default_point!r} is not one of {sorted(site.points)}")
    return dataclasses.replace(metadata, version=str(version), site_calibration=site.calibration.to_dict(),
                               operating_points=dict(site.points), default_operating_point=default_point,
                               decision_threshold=site.points[default_point], **fields)
