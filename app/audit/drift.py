"""Population stability index of the calibrated P(positive) against the validation distribution stored in the
artifact (``metadata.metrics["validation_distribution"] = {"bin_edges": [11 edges], "counts": [10 ints]}``).

PSI = sum over bins of (a - e) * ln(a / e), with a and e the observed and expected shares; an empty bin counts
as a share of 1e-4 (the usual guard against ln 0). Bands: < 0.1 stable, 0.1-0.25 moderate, >= 0.25 significant.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from model_store.site_calibration import SiteCalibration

EMPTY_SHARE = 1e-4
MODERATE, SIGNIFICANT = 0.1, 0.25
MIN_ANSWERS = 50  # below this a PSI is noise, not drift


@dataclass(frozen=True)
class Reference:
    edges: list[float]
    counts: list[int]


def reference_of(metrics: dict[str, Any]) -> Reference | str:
    """The validation distribution from an artifact's metrics, or the reason it is unusable."""
    dist = metrics.get("validation_distribution")
    if not isinstance(dist, dict):
        return "the model artifact stores no validation distribution (metrics.validation_distribution)"
    edges, counts = dist.get("bin_edges"), dist.get("counts")
    if (not isinstance(edges, list) or not isinstance(counts, list) or len(edges) != len(counts) + 1
            or len(counts) < 2 or not all(isinstance(e, int | float) for e in edges)
            or not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) == 0
            or any(b <= a for a, b in itertools.pairwise(edges))):
        return "the artifact's validation distribution is malformed (need N+1 increasing edges, N counts)"
    return Reference([float(e) for e in edges], [int(c) for c in counts])


def on_served_scale(reference: Reference | str, site: SiteCalibration | None) -> Reference | str:
    """The validation distribution on the scale the service answers on: a site calibration is monotone, so
    mapping the bin edges through it keeps every film in its bin (the inner edges move, the counts do not)."""
    if site is None or isinstance(reference, str):
        return reference
    inner = site.apply(np.asarray(reference.edges[1:-1], dtype=np.float64))
    return Reference([reference.edges[0], *(float(e) for e in inner), reference.edges[-1]], reference.counts)


def bin_index(p: float, edges: list[float]) -> int:
    """Bins are [e_i, e_i+1), the last one closed (p = 1.0 falls in it); outside the edges: the end bins."""
    for i in range(1, len(edges) - 1):
        if p < edges[i]:
            return i - 1
    return len(edges) - 2


def psi(expected: list[int], observed: list[int]) -> float:
    e_total, o_total = sum(expected), sum(observed)
    value = 0.0
    for e, o in zip(expected, observed, strict=True):
        e_share = max(e / e_total, EMPTY_SHARE)
        o_share = max(o / o_total, EMPTY_SHARE)
        value += (o_share - e_share) * math.log(o_share / e_share)
    return value


def band(value: float) -> str:
    return "significant" if value >= SIGNIFICANT else "moderate" if value >= MODERATE else "stable"


def drift_report(reference: Reference | str, observed: list[int] | None) -> dict[str, Any]:
    if isinstance(reference, str):
        return {"available": False, "reason": reference}
    assert observed is not None
    n = sum(observed)
    report: dict[str, Any] = {
        "available": n >= MIN_ANSWERS, "n": n, "bands": {"moderate": MODERATE, "significant": SIGNIFICANT},
        "bins": [{"low": lo, "high": hi, "expected": e, "observed": o}
                 for lo, hi, e, o in zip(reference.edges, reference.edges[1:], reference.counts, observed,
                                         strict=False)],
    }
    if n < MIN_ANSWERS:
        report["reason"] = f"{n} answers in the window; PSI needs at least {MIN_ANSWERS}"
        return report
    value = psi(reference.counts, observed)
    report.update({"psi": round(value, 6), "band": band(value)})
    return report
