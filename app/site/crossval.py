"""What a site calibration buys, estimated out of sample on the site's own films: k folds grouped by patient
(a child's films never on both sides), stratified by class; in each, the calibration and the operating points
are fitted on the other folds and measured on this one. Compared with the version as shipped (its own
probabilities and threshold) on the same films."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from app.site.recalibrate import BALANCED, SCREENING, fit_site, with_site
from app.site.stats import confusion_at
from model_store.calibration import brier_score, expected_calibration_error
from model_store.site_calibration import final_probabilities
from training.patients import patient_groups


def _rates(scores: np.ndarray, labels: np.ndarray, threshold: float | np.ndarray) -> dict[str, float]:
    called = scores >= threshold
    pos, neg = labels == 1, labels == 0
    return {"sensitivity": float(called[pos].mean()), "specificity": float((~called[neg]).mean()),
            "accuracy": float((called == pos).mean())}


def crossval(raw: np.ndarray, labels: np.ndarray, paths: list[str], metadata: Any, *, shipped: np.ndarray,
             shipped_threshold: float, folds: int = 5, target_sensitivity: float = 0.95, seed: int = 0
             ) -> dict[str, Any]:
    """Out-of-fold figures of the site calibration against the shipped version's, pooled over the folds (the
    thresholds differ per fold, so each film is decided by its own fold's threshold), plus each fold's."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.asarray(labels, dtype=np.int64)
    groups = patient_groups([Path(p) for p in paths], len(labels))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    oof = np.zeros(len(labels))
    cut = {SCREENING: np.zeros(len(labels)), BALANCED: np.zeros(len(labels))}
    per_fold = []
    for number, (fit_idx, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups), start=1):
        site = fit_site(raw[fit_idx], labels[fit_idx], metadata, target_sensitivity)
        served = final_probabilities(raw[test_idx], with_site(metadata, site.calibration))[:, metadata.positive_index]
        oof[test_idx] = served
        for name, thresholds in cut.items():
            thresholds[test_idx] = site.points[name]
        y = labels[test_idx]
        per_fold.append({"fold": number, "n": len(test_idx), "calibration": site.calibration.to_dict(),
                         "screening_threshold": site.points[SCREENING],
                         "ece": expected_calibration_error(served, y), "brier": brier_score(served, y),
                         SCREENING: _rates(served, y, site.points[SCREENING]),
                         BALANCED: _rates(served, y, site.points[BALANCED])})
    as_shipped = {"ece": expected_calibration_error(shipped, labels), "brier": brier_score(shipped, labels),
                  "threshold": shipped_threshold, **_rates(shipped, labels, shipped_threshold),
                  "operating_point": confusion_at(shipped, labels, shipped_threshold)}
    site_calibrated = {"ece": expected_calibration_error(oof, labels), "brier": brier_score(oof, labels),
                       SCREENING: _rates(oof, labels, cut[SCREENING]), BALANCED: _rates(oof, labels, cut[BALANCED])}
    return {"folds": folds, "grouped_by": "patient (training.patients.patient_key)", "seed": seed,
            "patients": len(np.unique(groups)), "target_sensitivity": target_sensitivity,
            "as_shipped": as_shipped, "site_calibrated_out_of_fold": site_calibrated, "per_fold": per_fold}
