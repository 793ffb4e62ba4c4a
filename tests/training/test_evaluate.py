from __future__ import annotations

import json

import numpy as np
import pytest

from training.evaluate import binary_metrics, choose_threshold, write_plots, write_report

LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
SCORES = np.array([0.1, 0.3, 0.6, 0.2, 0.9, 0.8, 0.4, 0.7, 0.95, 0.55])


def test_metrics_match_hand_computed_values():
    m = binary_metrics(LABELS, SCORES, threshold=0.5)
    # predicted positive: 0.6 (FP), 0.9 0.8 0.7 0.95 0.55 (TP); 0.4 is a FN; 0.1 0.3 0.2 are TN
    assert m["confusion_matrix"] == [[3, 1], [1, 5]]
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["sensitivity"] == pytest.approx(5 / 6)  # recall of PNEUMONIA
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(5 / 6)
    assert m["f1"] == pytest.approx(5 / 6)
    # AUC: of the 24 (positive, negative) pairs, only (0.4 < 0.6) and (0.55 < 0.6) are misordered
    assert m["roc_auc"] == pytest.approx(22 / 24)


def test_threshold_at_score_boundary_counts_as_positive():
    m = binary_metrics(np.array([0, 1]), np.array([0.5, 0.5]), threshold=0.5)
    assert m["confusion_matrix"] == [[0, 1], [0, 1]]


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    threshold = choose_threshold(LABELS, SCORES)
    best = max(binary_metrics(LABELS, SCORES, t)["sensitivity"] + binary_metrics(LABELS, SCORES, t)["specificity"]
               for t in SCORES)
    m = binary_metrics(LABELS, SCORES, threshold)
    assert m["sensitivity"] + m["specificity"] == pytest.approx(best)


def test_target_sensitivity_threshold_reaches_the_target():
    threshold = choose_threshold(LABELS, SCORES, target_sensitivity=1.0)
    assert threshold == pytest.approx(0.4)
    assert binary_metrics(LABELS, SCORES, threshold)["sensitivity"] == 1.0


def test_one_class_labels_cannot_choose_a_threshold():
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.ones(5), np.linspace(0, 1, 5))


def test_report_and_plots_are_written(tmp_path):
    metrics = {"val": binary_metrics(LABELS, SCORES, 0.5)}
    names = write_plots(tmp_path, metrics, {"val": (LABELS, SCORES)}, {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]},
                        ["NORMAL", "PNEUMONIA"])
    assert names == ["confusion_val.png", "roc.png", "learning_curves.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    path = write_report(tmp_path, {"metrics": metrics})
    assert json.loads(path.read_text())["metrics"]["val"]["confusion_matrix"] == [[3, 1], [1, 5]]
