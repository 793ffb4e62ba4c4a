"""Which named operating point decides an answer, and the calibration its probabilities went through.

The thresholds and calibrations live in the model artifact (model_store.site_calibration, shared with
``cxr-site``); this module only chooses among them: the request's ``operating_point``, else CXR_OPERATING_POINT,
else the version's own default. Every answer then names the point and the threshold it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.errors import OperatingPointUnavailableError, UnknownOperatingPointError
from model_store.site_calibration import (
    CalibratedMetadata,
    default_point_name,
    effective_operating_points,
    site_calibration_of,
)

_SHOWN = 40  # characters of an unknown name quoted back: a caller's typo, not an essay


@dataclass(frozen=True)
class OperatingPoint:
    name: str
    threshold: float


def choose(metadata: CalibratedMetadata, requested: str | None = None, configured: str | None = None
           ) -> OperatingPoint:
    """The point for one answer; UnknownOperatingPointError (422, with the available names) for a request's
    unknown name. ``configured`` (CXR_OPERATING_POINT) is checked at load, so it exists here."""
    points = effective_operating_points(metadata)
    if requested is not None:
        if requested not in points:
            raise UnknownOperatingPointError(
                f"unknown operating point {requested[:_SHOWN]!r}; this model version has {', '.join(sorted(points))}",
                details={"available": sorted(points)})
        return OperatingPoint(requested, points[requested])
    name = configured if configured in points else default_point_name(metadata)
    return OperatingPoint(name, points[name])


def check_configured(metadata: CalibratedMetadata, configured: str | None, version: int | str) -> None:
    """Refuse (409) a version that lacks the configured default point: it could not answer as configured."""
    points = effective_operating_points(metadata)
    if configured is not None and configured not in points:
        raise OperatingPointUnavailableError(
            f"CXR_OPERATING_POINT={configured!r} is not an operating point of {getattr(metadata, 'name', 'model')} "
            f"version {version} (it has "
            f"{', '.join(sorted(points))}); unset CXR_OPERATING_POINT or choose one of those",
            details={"available": sorted(points)})


def calibration_of(metadata: CalibratedMetadata) -> dict[str, Any]:
    """What turned the model's output into the answered probabilities: the artifact's temperature, then its
    site calibration (null when the version has none)."""
    site = site_calibration_of(metadata)
    return {"temperature": float(metadata.temperature), "site_calibration": site.to_dict() if site else None}


def describe(metadata: CalibratedMetadata, configured: str | None = None) -> dict[str, Any]:
    """A version's points and calibration, as /models lists them; ``default_operating_point`` is the one an
    answer uses when the request names none (CXR_OPERATING_POINT where this version has it)."""
    return {"operating_points": effective_operating_points(metadata),
            "default_operating_point": choose(metadata, None, configured).name,
            "calibration": calibration_of(metadata)}
