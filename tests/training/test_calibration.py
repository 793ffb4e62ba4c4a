"""Temperature scaling: fitting, ECE/Brier arithmetic, and that calibration never changes a decision."""

from __future__ import annotations

import numpy as np
import pytest

from model_store.calibration import (
    apply_temperature,
    brier_score,
    expected_calibration_error,
    fit_temperature,
    nll,
    raw_threshold,
    reliability_bins,
)
from training.calibration_report import score_distribution


def _two_class(logit: np.ndarray) -> np.ndarray:
    p = 1 / (1 + np.exp(-logit))
    return np.stack([1 - p, p], axis=1)


@pytest.mark.parametrize("true_temperature", [0.5, 2.5])
def test_fit_recovers_a_known_temperature(true_temperature):
    rng = np.random.default_rng(0)
    calibrated_logit = rng.normal(0.0, 2.5, size=20_000)
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-calibrated_logit))).astype(np.int64)
    model_output = _two_class(calibrated_logit * true_temperature)  # over- (T > 1) or under-confident
    fitted = fit_temperature(model_output, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.06)
    assert nll(apply_temperature(model_output, fitted), labels) < nll(model_output, labels)


def test_apply_temperature_softens_sharpens_and_keeps_rows_normalised():
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.5, 0.5]], dtype=np.float32)
    softer, sharper = apply_temperature(probs, 2.0), apply_temperature(probs, 0.5)
    np.testing.assert_allclose(softer.sum(axis=1), 1.0, rtol=1e-6)
    assert softer[0, 0] == pytest.approx(0.75)  # odds 9:1 -> 3:1
    assert sharper[1, 1] == pytest.approx(0.49 / 0.58)  # odds 7:3 -> 49:9
    np.testing.assert_allclose(softer[2], [0.5, 0.5])
    np.testing.assert_array_equal(apply_temperature(probs, 1.0), probs)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(probs, 0.0)


@pytest.mark.parametrize("temperature", [0.4, 1.0, 1.7, 6.0])
def test_calibration_never_changes_which_class_wins_at_an_operating_point(temperature):
    rng = np.random.default_rng(1)
    raw = _two_class(rng.normal(0, 4, size=5000))
    calibrated = apply_temperature(raw, temperature)
    order = np.argsort(raw[:, 1], kind="stable")
    assert np.all(np.diff(calibrated[order, 1]) >= 0)  # monotone: ranking and ROC AUC unchanged
    np.testing.assert_array_equal(raw.argmax(axis=1), calibrated.argmax(axis=1))  # 0.5 maps to 0.5
    for threshold in (0.05, 0.3, 0.5, 0.62, 0.9):
        raw_cut = raw_threshold(threshold, temperature)
        away = np.abs(raw[:, 1] - raw_cut) > 1e-5  # float32 rounding right at the cut is not a decision
        np.testing.assert_array_equal((calibrated[away, 1] >= threshold), (raw[away, 1] >= raw_cut))


def test_ece_and_brier_arithmetic():
    scores = np.array([0.9, 0.9, 0.9, 0.9, 0.2, 0.2])
    labels = np.array([1, 1, 1, 0, 0, 1])
    # bin of confidence 0.9: 4 images, 3 right -> |0.75 - 0.9|; bin of confidence 0.8: 2 images, 1 right
    expected = 4 / 6 * 0.15 + 2 / 6 * abs(0.5 - 0.8)
    assert expected_calibration_error(scores, labels, bins=15) == pytest.approx(expected)
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1, 0])) == 0.0
    assert brier_score(scores, labels) == pytest.approx((3 * 0.01 + 0.81 + 0.04 + 0.64) / 6)
    predicted, observed, counts = reliability_bins(scores, labels, bins=10)
    assert counts.sum() == 6 and counts[1] == 2 and counts[8] == 4
    assert observed[8] == pytest.approx(0.75) and predicted[1] == pytest.approx(0.2)


def test_validation_distribution_has_the_shape_drift_monitoring_reads():
    dist = score_distribution(np.array([0.0, 0.05, 0.1, 0.55, 0.99, 1.0]))
    assert dist["bin_edges"] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert dist["counts"] == [2, 1, 0, 0, 0, 1, 0, 0, 0, 2]
    assert all(type(c) is int for c in dist["counts"])
