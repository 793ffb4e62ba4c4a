"""The local validation report's figures, as one JSON-ready dict, from scored films (P(positive) as served and
the confirmed labels). The HTML page (app.site.html) only renders this dict."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from app.audit.drift import bin_index, drift_report, reference_of
from app.site.stats import calibration_fit, confusion_at, delong_auc
from model_store.calibration import brier_score, expected_calibration_error, reliability_bins

MIN_PER_CLASS = 100  # Collins 2016, Riley 2021: about 100 events and 100 non-events for a usable estimate
RELIABILITY_BINS = 10


def counts(labels: np.ndarray) -> dict[str, Any]:
    labels = np.asarray(labels)
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    total = n_pos + n_neg
    return {"NORMAL": n_neg, "PNEUMONIA": n_pos, "total": total,
            "prevalence": round(n_pos / total, 6) if total else None}


def small_sample_warnings(labels: np.ndarray) -> list[str]:
    found = counts(labels)
    return [f"only {found[name]} {name} films (fewer than {MIN_PER_CLASS}): every figure below is imprecise, "
            f"the intervals say how much; collect at least {MIN_PER_CLASS} of each class"
            for name in ("NORMAL", "PNEUMONIA") if found[name] < MIN_PER_CLASS]


def observed_distribution(scores: np.ndarray, edges: list[float]) -> list[int]:
    observed = [0] * (len(edges) - 1)
    for p in np.asarray(scores, dtype=np.float64):
        observed[bin_index(float(p), edges)] += 1
    return observed


def drift(scores: np.ndarray, metrics: dict[str, Any]) -> dict[str, Any]:
    """PSI of the served P(positive) against the artifact's validation distribution (app.audit.drift, the same
    figure the monitoring view shows), or why it is unavailable."""
    reference = reference_of(metrics)
    if isinstance(reference, str):
        return drift_report(reference, None)
    return drift_report(reference, observed_distribution(scores, reference.edges))


def figures(scores: np.ndarray, labels: np.ndarray, points: dict[str, float]) -> dict[str, Any]:
    """Everything measured on one set of served probabilities: discrimination, calibration, and the confusion
    figures at each named threshold."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    out: dict[str, Any] = {"counts": counts(labels)}
    both = len(set(labels.tolist())) == 2
    if both and min(out["counts"]["NORMAL"], out["counts"]["PNEUMONIA"]) >= 2:
        auc, variance = delong_auc(scores, labels)
        fpr, tpr, _ = roc_curve(labels, scores)
        out["auc"] = {**auc.to_dict(), "method": "DeLong", "variance": variance}
        out["roc"] = {"fpr": [round(float(v), 5) for v in fpr], "tpr": [round(float(v), 5) for v in tpr]}
        out["calibration"] = calibration_fit(scores, labels).to_dict()
    out["ece"] = expected_calibration_error(scores, labels)
    out["brier"] = brier_score(scores, labels)
    predicted, observed, bin_counts = reliability_bins(scores, labels, RELIABILITY_BINS)
    out["reliability"] = [{"predicted": None if np.isnan(p) else round(float(p), 5),
                           "observed": None if np.isnan(o) else round(float(o), 5), "n": int(c)}
                          for p, o, c in zip(predicted, observed, bin_counts, strict=True)]
    out["operating_points"] = {name: confusion_at(scores, labels, t) for name, t in points.items()}
    return out


def refusals_summary(refused: list[Any]) -> dict[str, Any]:
    by_code: dict[str, int] = {}
    for r in refused:
        by_code[r.code] = by_code.get(r.code, 0) + 1
    return {"count": len(refused), "by_code": by_code,
            "files": [{"path": r.path, "label": ["NORMAL", "PNEUMONIA"][r.label], "code": r.code,
                       "message": r.message} for r in refused]}


def validation_report(scored: Any, metadata: Any, *, source: str, tool_version: str,
                      target_sensitivity: float = 0.95) -> dict[str, Any]:
    """The whole report for one scored sample and one model version: the figures as served (at the version's
    own operating points), and, when both classes are there, the site calibration ``cxr-site calibrate``
    would fit with the figures it gives on the same films (in sample, so optimistic)."""
    from app.site.recalibrate import fit_site, with_site
    from model_store.site_calibration import default_point_name, effective_operating_points, final_probabilities

    report: dict[str, Any] = {
        "kind": "local validation", "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool_version": tool_version, "source": source, "model": scored.model, "settings": scored.settings,
        "default_operating_point": default_point_name(metadata), "warnings": small_sample_warnings(scored.labels),
        "refused": refusals_summary(scored.refused), "drift": drift(scored.served, metadata.metrics),
        "as_served": figures(scored.served, scored.labels, effective_operating_points(metadata)),
    }
    found = report["as_served"]["counts"]
    if min(found["NORMAL"], found["PNEUMONIA"]) >= 2 and scored.raw is not None:
        site = fit_site(scored.raw, scored.labels, metadata, target_sensitivity)
        served = final_probabilities(scored.raw, with_site(metadata, site.calibration))[:, metadata.positive_index]
        report["site_fit"] = site.describe()
        report["site_calibrated"] = figures(served, scored.labels, site.points)
    return report
