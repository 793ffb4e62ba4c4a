"""Temperature scaling: one scalar that softens (T > 1) or sharpens (T < 1) a model's probabilities.

Training fits T on validation; the artifact stores it; serving applies :func:`apply_temperature` to the
model's output before a decision is made. The stored decision threshold is on this calibrated scale.
With a softmax output the log-probabilities serve as logits (they differ from the logits by a constant per
image, which softmax ignores), so calibrated = softmax(log(p) / T). For each image this is a monotone map of
P(positive) in a two-class model, so it never changes the ranking (ROC AUC) nor which class wins at the
matching threshold (:func:`raw_threshold`).
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def _log_probs(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated class probabilities (same shape, rows sum to 1); T = 1 returns the input as float32."""
    probabilities = np.asarray(probabilities)
    if temperature == 1.0:
        return probabilities.astype(np.float32, copy=False)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return _softmax(_log_probs(probabilities) / temperature).astype(np.float32)


def nll(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    return float(-_log_probs(probabilities)[np.arange(len(labels)), labels].mean())


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
                    ) -> float:
    """The T minimising validation NLL of softmax(log(p) / T) (bounded scalar search over log T)."""
    from scipy.optimize import minimize_scalar

    logits = _log_probs(probabilities)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    rows = np.arange(len(labels))

    def loss(log_t: float) -> float:
        scaled = logits / np.exp(log_t)
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(scaled).sum(axis=1))
        return float((log_z - scaled[rows, labels]).mean())

    result = minimize_scalar(loss, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                             options={"xatol": 1e-6})
    return float(np.exp(result.x))


def raw_threshold(calibrated_threshold: float, temperature: float) -> float:
    """The P(positive) threshold on the uncalibrated scale that decides exactly as ``calibrated_threshold``
    does after calibration (two classes: logit(p_cal) = logit(p_raw) / T)."""
    t = float(np.clip(calibrated_threshold, _EPS, 1 - _EPS))
    logit = np.log(t / (1 - t)) * temperature
    return float(1 / (1 + np.exp(-logit)))


def expected_calibration_error(scores: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of the positive-class probability: equal-width bins on [0, 1], |accuracy - confidence| weighted
    by bin size, where confidence is the winning class's probability (the usual top-label ECE)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    confidence = np.maximum(scores, 1 - scores)
    correct = ((scores >= 0.5).astype(np.int64) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)


def brier_score(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error of P(positive) against the 0/1 label."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    return float(np.mean((scores - np.asarray(labels, dtype=np.float64).reshape(-1)) ** 2))


def reliability_bins(scores: np.ndarray, labels: np.ndarray, bins: int = 15
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of P(positive): (mean predicted, observed positive rate, count); empty bins NaN."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore"):
        predicted = np.bincount(which, weights=scores, minlength=bins) / counts
        observed = np.bincount(which, weights=labels, minlength=bins) / counts
    return predicted, observed, counts
