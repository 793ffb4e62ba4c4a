"""The report's statistics against independent computations: direct formulas, textbook values, a bootstrap,
and synthetic data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from app.site.recalibrate import fit_calibration
from app.site.stats import calibration_fit, confusion_at, delong_auc, logit, screening_threshold, wilson


def _sample(rng: np.random.Generator, n_pos: int, n_neg: int, shift: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    scores = np.concatenate([rng.normal(shift, 1, n_pos), rng.normal(0, 1, n_neg)])
    return np.round(scores, 1), np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]  # rounding makes ties


def _delong_direct(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """DeLong (1988) as written in the paper: the m x n kernel, its row and column means, their variances."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return psi.mean(), v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)


def test_delong_matches_the_direct_formula_and_scikit_learn():
    scores, labels = _sample(np.random.default_rng(1), 40, 55)
    interval, variance = delong_auc(scores, labels)
    auc, direct_variance = _delong_direct(scores, labels)
    assert interval.value == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert interval.value == pytest.approx(auc, abs=1e-12)
    assert variance == pytest.approx(direct_variance, rel=1e-10)
    half = 1.959964 * np.sqrt(variance)
    assert (interval.low, interval.high) == pytest.approx((auc - half, auc + half), abs=1e-6)


def test_delong_variance_agrees_with_a_stratified_bootstrap():
    rng = np.random.default_rng(7)
    scores, labels = _sample(rng, 80, 80, shift=1.0)
    _, variance = delong_auc(scores, labels)
    pos, neg = scores[labels == 1], scores[labels == 0]
    # resample within each class (stratified), AUC by the kernel: fast enough for 2000 draws
    boot = [_delong_direct(np.r_[rng.choice(pos, 80), rng.choice(neg, 80)], labels)[0] for _ in range(2000)]
    assert np.var(boot) == pytest.approx(variance, rel=0.15)


def test_delong_interval_is_clipped_and_needs_both_classes():
    interval, _ = delong_auc(np.array([0.9, 0.8, 0.7, 0.1, 0.2, 0.3]), np.array([1, 1, 1, 0, 0, 0]))
    assert interval.value == 1.0 and interval.high == 1.0
    with pytest.raises(ValueError, match="two films of each class"):
        delong_auc(np.array([0.9, 0.1, 0.2]), np.array([1, 0, 0]))


def test_wilson_matches_newcombes_textbook_example():
    # Newcombe (1998), Statistics in Medicine 17:857, table I: 81/263 -> Wilson 0.2553 to 0.3662
    interval = wilson(81, 263)
    assert interval.value == pytest.approx(81 / 263)
    assert (round(interval.low, 4), round(interval.high, 4)) == (0.2553, 0.3662)
    # and at the boundary, where the Wald interval collapses: 0/10 -> 0 to 0.2775 (Newcombe, same table)
    assert round(wilson(0, 10).high, 4) == 0.2775
    assert np.isnan(wilson(0, 0).value)


def test_confusion_at_counts_a_small_fixed_sample_by_hand():
    scores = np.array([0.95, 0.7, 0.5, 0.3, 0.6, 0.4, 0.2, 0.1])
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    out = confusion_at(scores, labels, 0.5)  # P >= 0.5 is positive, as the service decides
    assert (out["tp"], out["fn"], out["fp"], out["tn"]) == (3, 1, 1, 3)
    assert out["sensitivity"]["value"] == 0.75 and out["specificity"]["value"] == 0.75
    assert out["ppv"]["value"] == 0.75 and out["npv"]["value"] == 0.75
    assert out["sensitivity"]["low"] == pytest.approx(wilson(3, 4).low, abs=1e-6)


def test_recalibration_recovers_a_known_intercept_and_slope():
    rng = np.random.default_rng(3)
    p = 1 / (1 + np.exp(-rng.normal(0, 2.0, 20000)))
    true_intercept, true_slope = -0.8, 0.6
    y = rng.random(20000) < 1 / (1 + np.exp(-(true_intercept + true_slope * logit(p))))
    calibration, fit = fit_calibration(p, y.astype(int))
    assert calibration.method == "logistic"
    assert calibration.slope == pytest.approx(true_slope, abs=0.05)
    assert calibration.intercept == pytest.approx(true_intercept, abs=0.06)
    assert fit.slope.low < true_slope < fit.slope.high and fit.intercept.low < true_intercept < fit.intercept.high


def test_recalibration_falls_back_to_intercept_only_when_the_slope_is_not_supported():
    rng = np.random.default_rng(5)
    p = 1 / (1 + np.exp(-rng.normal(0, 2.0, 400)))
    y = (rng.random(400) < 1 / (1 + np.exp(-(0.9 + logit(p))))).astype(int)  # slope 1: only the intercept is off
    calibration, fit = fit_calibration(p, y)
    assert fit.lr_p >= 0.05
    assert calibration.method == "intercept" and calibration.slope == 1.0
    assert calibration.intercept == pytest.approx(fit.intercept_in_the_large.value)
    assert calibration.intercept == pytest.approx(0.9, abs=0.35)


def test_perfectly_separated_sample_keeps_the_slope_at_one():
    p = np.r_[np.linspace(0.6, 0.99, 40), np.linspace(0.01, 0.5, 40)]
    labels = np.r_[np.ones(40, int), np.zeros(40, int)]
    calibration, fit = fit_calibration(p, labels)
    assert fit.separated and calibration.method == "intercept" and calibration.slope == 1.0
    assert abs(calibration.intercept) < 1


def test_calibration_of_calibrated_scores_is_ideal():
    rng = np.random.default_rng(11)
    p = 1 / (1 + np.exp(-rng.normal(0, 1.5, 20000)))
    fit = calibration_fit(p, (rng.random(20000) < p).astype(int))
    assert fit.slope.low < 1 < fit.slope.high
    assert fit.intercept_in_the_large.low < 0 < fit.intercept_in_the_large.high


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 0.97, 1.0])
def test_screening_point_is_the_highest_threshold_meeting_the_target(target):
    rng = np.random.default_rng(int(target * 100))
    scores, labels = rng.random(300), (rng.random(300) < 0.6).astype(int)
    threshold = screening_threshold(scores, labels, target)
    positives = scores[labels == 1]
    assert (positives >= threshold).mean() >= target
    higher = positives[positives > threshold]
    if len(higher):  # the next threshold up loses a positive and falls below the target
        assert (positives >= higher.min()).mean() < target
