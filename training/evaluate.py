"""Evaluation: threshold choice on validation data, binary metrics, JSON report and PNG plots.

Sensitivity is the recall of the positive class (PNEUMONIA); specificity the recall of NORMAL.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def choose_threshold(labels: np.ndarray, scores: np.ndarray, target_sensitivity: float | None = None) -> float:
    """Threshold on P(positive): Youden's J maximum, or the highest threshold whose sensitivity reaches
    ``target_sensitivity``. Use validation data only."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise ValueError("threshold choice needs both classes in the labels")
    fpr, tpr, thresholds = roc_curve(labels, scores)
    finite = np.isfinite(thresholds)
    fpr, tpr, thresholds = fpr[finite], tpr[finite], thresholds[finite]
    if target_sensitivity is not None:
        reaching = np.flatnonzero(tpr >= target_sensitivity)
        return float(np.clip(thresholds[reaching[0]], 0.0, 1.0))
    return float(np.clip(thresholds[int(np.argmax(tpr - fpr))], 0.0, 1.0))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Confusion matrix ([[TN, FP], [FN, TP]], rows = truth) and the usual figures at ``threshold``."""
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    predicted = (scores >= threshold).astype(int)
    tp = int(((predicted == 1) & (labels == 1)).sum())
    tn = int(((predicted == 0) & (labels == 0)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())

    def ratio(num: int, den: int) -> float | None:
        return num / den if den else None

    precision = ratio(tp, tp + fp)
    sensitivity = ratio(tp, tp + fn)
    f1 = (2 * precision * sensitivity / (precision + sensitivity)
          if precision is not None and sensitivity is not None and precision + sensitivity > 0 else None)
    both_classes = len(np.unique(labels)) == 2
    return {
        "n": len(labels),
        "threshold": float(threshold),
        "confusion_matrix": [[tn, fp], [fn, tp]],
        "accuracy": ratio(tp + tn, len(labels)),
        "sensitivity": sensitivity,
        "specificity": ratio(tn, tn + fp),
        "precision": precision,
        "f1": f1,
        "roc_auc": float(roc_auc_score(labels, scores)) if both_classes else None,
    }


def write_plots(out_dir: str | os.PathLike[str], results: dict[str, dict[str, Any]],
                curves: dict[str, tuple[np.ndarray, np.ndarray]], history: dict[str, list[float]] | None,
                class_names: list[str]) -> list[str]:
    """Confusion matrices, ROC curves and learning curves as PNGs; returns the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for split, metrics in results.items():
        matrix = np.asarray(metrics["confusion_matrix"])
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.imshow(matrix, cmap="Blues")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if value > matrix.max() / 2 else "black")
        ax.set_xticks([0, 1], class_names)
        ax.set_yticks([0, 1], class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{split} (threshold {metrics['threshold']:.3f})")
        fig.tight_layout()
        name = f"confusion_{split}.png"
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(name)
    fig, ax = plt.subplots(figsize=(5, 5))
    for split, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{split} AUC {results[split]['roc_auc']:.3f}")
    ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=100)
    plt.close(fig)
    written.append("roc.png")
    if history:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
            for prefix in ("", "val_"):
                if prefix + key in history:
                    ax.plot(history[prefix + key], label=prefix + key)
            ax.set_xlabel("epoch")
            if ax.lines:
                ax.legend()
        fig.tight_layout()
        fig.savefig(out / "learning_curves.png", dpi=100)
        plt.close(fig)
        written.append("learning_curves.png")
    return written


def write_report(out_dir: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    path = Path(out_dir) / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path
