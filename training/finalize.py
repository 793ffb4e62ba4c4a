"""The last steps every trained model goes through, whoever made it (``cxr-train``, ``training.recalibrate``,
``training.ensemble``): score the validation (and test) split, fit the temperature and choose the threshold on
validation only, write the report and plots, then export the artifact with its golden set."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model_store.preprocessing import PreprocessingSpec
from model_store.registry import ModelRegistry
from training.data import CLASS_NAMES, ImageSet

if TYPE_CHECKING:
    from model_store.artifact import ModelMetadata

GOLDEN_CANDIDATES = 128  # validation inputs offered to the golden-set selection


def predict_probabilities(model: Any, spec: PreprocessingSpec, images: ImageSet, batch_size: int = 64,
                          temperature: float = 1.0) -> np.ndarray:
    """Class probabilities (N, classes) of every image, through the shared preprocessing and calibration."""
    from model_store.calibration import apply_temperature
    from training.batches import ImageBatches

    inputs = ImageBatches(images, spec, batch_size).all_inputs()
    return apply_temperature(model.predict(inputs, batch_size=batch_size, verbose=0), temperature)


def threshold_rule(target_sensitivity: float | None) -> str:
    return f"sensitivity >= {target_sensitivity}" if target_sensitivity else "Youden's J on validation"


def target_from_rule(rule: str) -> float | None:
    """The inverse of :func:`threshold_rule` (a stored artifact's rule -> its target sensitivity)."""
    return float(rule.split(">=")[1]) if rule.startswith("sensitivity >=") else None


@dataclass
class Calibrated:
    """A model's figures on each split at the threshold chosen on validation, on the calibrated scale."""

    temperature: float
    threshold: float
    rule: str
    results: dict[str, dict[str, Any]]  # split -> binary metrics (cxr-evaluate's shape)
    calibration: dict[str, dict[str, float]]  # split -> ECE / Brier before and after
    plots: list[str]
    val_scores: np.ndarray  # calibrated P(positive) on validation (the drift reference)


def calibrate_and_report(model: Any, spec: PreprocessingSpec, sets: dict[str, ImageSet], out: str | Path, *,
                         target_sensitivity: float | None, calibrate: bool = True,
                         history: dict[str, list[float]] | None = None) -> Calibrated:
    """``sets`` must hold "val" (everything is chosen on it) and may hold "test" (reported only)."""
    from model_store.calibration import apply_temperature, fit_temperature
    from training.calibration_report import calibration_summary, write_reliability_diagram
    from training.evaluate import binary_metrics, choose_threshold, write_plots

    val = sets["val"]
    raw = {name: predict_probabilities(model, spec, images) for name, images in sets.items()}
    temperature = fit_temperature(raw["val"], val.labels) if calibrate else 1.0
    scores = {name: apply_temperature(probs, temperature)[:, 1] for name, probs in raw.items()}
    threshold = choose_threshold(val.labels, scores["val"], target_sensitivity)
    results = {name: binary_metrics(images.labels, scores[name], threshold) for name, images in sets.items()}
    calibration = {name: calibration_summary(images.labels, raw[name][:, 1], scores[name])
                   for name, images in sets.items()}
    out = Path(out)
    plots = write_plots(out, results, {n: (sets[n].labels, scores[n]) for n in sets}, history, CLASS_NAMES)
    plots.append(write_reliability_diagram(out, {n: (sets[n].labels, raw[n][:, 1], scores[n]) for n in sets}))
    return Calibrated(temperature, threshold, threshold_rule(target_sensitivity), results, calibration, plots,
                      scores["val"])


def export(model: Any, metadata: ModelMetadata, calibrated: Calibrated, val: ImageSet, *, store: str | Path,
           version: int | None, out: str | Path, extra_metrics: dict[str, Any] | None = None,
           files: tuple[str, ...] = ("report.json",)) -> tuple[Path, str]:
    """Write ``model`` as a new version with the calibration in its metadata, then its golden set (real
    validation inputs and the float32 reference outputs, for runtime verification at every load); copy the
    run's plots and ``files`` beside it. Returns (artifact path, its sha256)."""
    from model_store.artifact import save_artifact
    from model_store.golden import store_golden
    from training.batches import ImageBatches
    from training.calibration_report import score_distribution

    registry = ModelRegistry(store)
    number = version or registry.next_version(metadata.name)
    metadata.version = str(number)
    metadata.decision_threshold = calibrated.threshold
    metadata.temperature = calibrated.temperature
    metadata.metrics = {"threshold_rule": calibrated.rule, **calibrated.results,
                        "calibration": calibrated.calibration,
                        "validation_distribution": score_distribution(calibrated.val_scores),
                        **(extra_metrics or {})}
    target = registry.path_for(metadata.name, number)
    save_artifact(model, metadata, target)
    first = np.sort(np.random.default_rng(0).permutation(len(val))[:GOLDEN_CANDIDATES])
    candidates = ImageBatches(val.subset(first), metadata.preprocessing).all_inputs()
    sha = store_golden(target, model, candidates, metadata)
    for name in [*calibrated.plots, *files]:
        if (Path(out) / name).exists():
            shutil.copy2(Path(out) / name, target.parent / name)
    return target, sha
