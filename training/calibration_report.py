"""Calibration figures for the run report: ECE/Brier before and after, the reliability diagram, the
validation score distribution (a drift-monitoring reference) and the patients/images in each split."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from model_store.calibration import brier_score, expected_calibration_error, reliability_bins
from training.data import ImageSet
from training.patients import patient_groups

ECE_BINS = 15
DISTRIBUTION_EDGES = [round(i / 10, 1) for i in range(11)]


def calibration_summary(labels: np.ndarray, raw: np.ndarray, calibrated: np.ndarray) -> dict[str, float]:
    """ECE (15 bins) and Brier score of P(positive) before and after temperature scaling."""
    return {"ece_before": expected_calibration_error(raw, labels, ECE_BINS),
            "ece_after": expected_calibration_error(calibrated, labels, ECE_BINS),
            "brier_before": brier_score(raw, labels), "brier_after": brier_score(calibrated, labels)}


def score_distribution(scores: np.ndarray) -> dict[str, list[Any]]:
    """Histogram of calibrated P(positive) over 10 equal bins of [0, 1] (the last bin includes 1.0)."""
    counts, _ = np.histogram(np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0), bins=DISTRIBUTION_EDGES)
    return {"bin_edges": list(DISTRIBUTION_EDGES), "counts": [int(c) for c in counts]}


def _describe(images: ImageSet) -> dict[str, Any]:
    groups = patient_groups(images.paths, len(images))
    return {"images": len(images), "patients": len(np.unique(groups)), **images.class_counts()}


def split_counts(splits: Any, test: ImageSet | None) -> dict[str, dict[str, Any]]:
    """Images, patients (unrecognised names count one each) and class counts of every split.
    ``train`` is after balancing (what the network saw)."""
    counts = {"train": _describe(splits.train), "val": _describe(splits.val)}
    if test is not None:
        counts["test"] = _describe(test)
    return counts


def write_reliability_diagram(out_dir: str | os.PathLike[str],
                              sets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> str:
    """reliability.png: observed positive rate against mean predicted P(positive) per bin, before and
    after calibration, one panel per split. ``sets``: name -> (labels, raw scores, calibrated scores)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 4.5), squeeze=False)
    for ax, (name, (labels, raw, calibrated)) in zip(axes[0], sets.items(), strict=True):
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        for label, scores in (("before", raw), ("after", calibrated)):
            predicted, observed, counts = reliability_bins(scores, labels, ECE_BINS)
            keep = counts > 0
            ece = expected_calibration_error(scores, labels, ECE_BINS)
            ax.plot(predicted[keep], observed[keep], "o-", label=f"{label} (ECE {ece:.3f})")
        ax.set_title(name)
        ax.set_xlabel("mean predicted P(PNEUMONIA)")
        ax.set_ylabel("observed share PNEUMONIA")
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "reliability.png", dpi=100)
    plt.close(fig)
    return "reliability.png"
