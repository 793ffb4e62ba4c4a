"""The figures of a local validation report: AUC with a DeLong interval, Wilson intervals for the rates,
the calibration intercept and slope with their intervals, and the confusion figures at a threshold.

DeLong's variance is written here by hand: no maintained Python library offers it (scikit-learn and statsmodels
give the AUC without an interval; the PyPI ports of pROC are unmaintained single-file copies). It is the fast
form of Sun & Xu (2014), checked in the tests against a direct O(m*n) evaluation and against a bootstrap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata

Z95 = float(norm.ppf(0.975))
_EPS = 1e-7


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


@dataclass(frozen=True)
class Interval:
    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {k: (None if not np.isfinite(v) else round(float(v), 6)) for k, v in asdict(self).items()}


def delong_auc(scores: np.ndarray, labels: np.ndarray, level: float = 0.95) -> tuple[Interval, float]:
    """ROC AUC with its DeLong (1988) confidence interval (normal, clipped to [0, 1], as pROC), and the
    variance. Ties count one half, as in the Mann-Whitney statistic."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        raise ValueError(f"an AUC interval needs two films of each class, got {m} positive and {n} negative")
    # midranks within each class and overall give every placement value in O((m + n) log(m + n))
    all_ranks = rankdata(np.concatenate([pos, neg]))
    v10 = (all_ranks[:m] - rankdata(pos)) / n  # share of negatives each positive beats
    v01 = 1.0 - (all_ranks[m:] - rankdata(neg)) / m  # share of positives that beat each negative
    auc = float(v10.mean())
    variance = float(v10.var(ddof=1) / m + v01.var(ddof=1) / n)
    half = float(norm.ppf(0.5 + level / 2)) * np.sqrt(variance)
    return Interval(auc, max(0.0, auc - half), min(1.0, auc + half)), variance


def wilson(successes: int, total: int, level: float = 0.95) -> Interval:
    """A proportion with its Wilson score interval (statsmodels); NaN when there is nothing to divide by."""
    from statsmodels.stats.proportion import proportion_confint

    if total == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    low, high = proportion_confint(successes, total, alpha=1 - level, method="wilson")
    return Interval(successes / total, float(low), float(high))


def confusion_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV (Wilson intervals) and accuracy when ``P >= threshold`` is positive,
    as the service decides."""
    scores = np.asarray(scores).reshape(-1)
    labels = np.asarray(labels).reshape(-1).astype(bool)
    called = scores >= threshold
    tp, fp = int((called & labels).sum()), int((called & ~labels).sum())
    fn, tn = int((~called & labels).sum()), int((~called & ~labels).sum())
    return {
        "threshold": float(threshold), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "sensitivity": wilson(tp, tp + fn).to_dict(), "specificity": wilson(tn, tn + fp).to_dict(),
        "ppv": wilson(tp, tp + fp).to_dict(), "npv": wilson(tn, tn + fn).to_dict(),
        "accuracy": wilson(tp + tn, len(labels)).to_dict(),
    }


def _binomial_fit(labels: np.ndarray, exog: np.ndarray, offset: np.ndarray | None = None) -> tuple[Any, bool]:
    """(fit, separated): ``separated`` when the scores split the classes perfectly, so the slope is not
    identified (statsmodels warns and the estimate runs off to a huge number)."""
    import warnings

    import statsmodels.api as sm
    from statsmodels.tools.sm_exceptions import PerfectSeparationWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PerfectSeparationWarning)
        fit = sm.GLM(np.asarray(labels, dtype=np.float64), exog, family=sm.families.Binomial(), offset=offset).fit()
    return fit, any(issubclass(w.category, PerfectSeparationWarning) for w in caught)


@dataclass(frozen=True)
class CalibrationFit:
    """Logistic recalibration of the logit: ``logit P(y=1) = intercept + slope * logit(p)`` (full fit), and the
    calibration-in-the-large (the intercept with the slope held at 1), with 95% intervals; ``lr_p`` is the
    likelihood-ratio test of the slope against 1."""

    slope: Interval
    intercept: Interval  # of the full (intercept + slope) model
    intercept_in_the_large: Interval  # slope fixed at 1: how far the mean prediction is off, on the logit scale
    lr_statistic: float
    lr_p: float
    separated: bool = False  # the classes separate perfectly: the slope is not identified

    def to_dict(self) -> dict[str, Any]:
        return {"slope": self.slope.to_dict(), "intercept": self.intercept.to_dict(),
                "intercept_in_the_large": self.intercept_in_the_large.to_dict(),
                "lr_statistic": round(self.lr_statistic, 6), "lr_p": round(self.lr_p, 6), "separated": self.separated}


def calibration_fit(scores: np.ndarray, labels: np.ndarray) -> CalibrationFit:
    """Fit both recalibration models with statsmodels (binomial GLM with the logit link: logistic regression)."""
    from scipy.stats import chi2

    x = logit(scores)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    full, separated = _binomial_fit(labels, np.column_stack([np.ones_like(x), x]))
    large, _ = _binomial_fit(labels, np.ones((len(x), 1)), offset=x)
    (a, b), ci = full.params, full.conf_int(0.05)
    (a1,), ci1 = large.params, large.conf_int(0.05)
    statistic = max(0.0, 2.0 * (full.llf - large.llf))
    return CalibrationFit(slope=Interval(float(b), float(ci[1][0]), float(ci[1][1])),
                          intercept=Interval(float(a), float(ci[0][0]), float(ci[0][1])),
                          intercept_in_the_large=Interval(float(a1), float(ci1[0][0]), float(ci1[0][1])),
                          lr_statistic=float(statistic), lr_p=float(chi2.sf(statistic, 1)), separated=separated)


def screening_threshold(scores: np.ndarray, labels: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity on this sample is at least ``target``: the k-th highest score
    among the positives, k = ceil(target * positives) (every positive at or above it is called positive)."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], e.g. 0.95, got {target!r}")
    positives = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1)[np.asarray(labels).reshape(-1) == 1])[::-1]
    if len(positives) == 0:
        raise ValueError("no positive films: a sensitivity target cannot be met")
    k = int(np.ceil(target * len(positives) - 1e-9))
    return float(positives[max(k, 1) - 1])
