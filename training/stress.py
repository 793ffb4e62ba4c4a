"""Validation under simulated acquisition shift: the same validation films, each re-rendered as another
machine might have (exposure, contrast, gamma, blur, aspect), scored through the shared preprocessing.

Why: with the fixed binarize threshold the model input depends strongly on exposure and processing, and on
this data plain validation AUC is saturated (0.98-0.997 for every candidate, 134 normal films) and did not rank
round 3's networks as the test split did. A stressed figure asks the question that matters for another
hospital without touching any test split. The perturbations are generic and fixed here; they were not derived
from test images. (In round 4 it ranked the candidates much as plain validation did: docs/training.md.)

    python -m training.stress --models runs/a/checkpoint_best.h5 runs/b/model.h5 --data ../shared/data/chest_xray_224
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

Perturbation = Callable[[np.ndarray], np.ndarray]


def _levels(image: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.clip(np.rint(fn(image.astype(np.float32) / 255.0) * 255.0), 0, 255).astype(np.uint8)


def gamma(value: float) -> Perturbation:
    return lambda image: _levels(image, lambda x: x**value)


def brightness(shift: float) -> Perturbation:
    return lambda image: _levels(image, lambda x: x + shift)


def contrast(factor: float) -> Perturbation:
    return lambda image: _levels(image, lambda x: (x - x.mean()) * factor + x.mean())


def blur(radius: float) -> Perturbation:
    return lambda image: np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def aspect(factor: float) -> Perturbation:
    """Anatomy stretched horizontally by ``factor`` (squeezed vertically by it), centred, same canvas: a film
    of another aspect ratio stretched to a square."""
    def apply(image: np.ndarray) -> np.ndarray:
        h, w = image.shape
        sx, sy = math.sqrt(factor), 1 / math.sqrt(factor)
        coeffs = (1 / sx, 0, w / 2 - w / 2 / sx, 0, 1 / sy, h / 2 - h / 2 / sy)
        return np.asarray(Image.fromarray(image).transform((w, h), Image.Transform.AFFINE, coeffs,
                                                           Image.Resampling.BILINEAR))
    return apply


# fixed before any figure was computed (2026-11-30, round 4); moderate shifts a second hospital could show
PERTURBATIONS: dict[str, Perturbation] = {
    "gamma 0.75": gamma(0.75), "gamma 1.33": gamma(1.33),
    "brighter 0.08": brightness(0.08), "darker 0.08": brightness(-0.08),
    "contrast 0.8": contrast(0.8), "contrast 1.25": contrast(1.25),
    "blur 1 px": blur(1.0), "wider 1.15": aspect(1.15), "taller 1.15": aspect(1 / 1.15),
}


def perturbed(images: Any, perturb: Perturbation) -> Any:
    """A copy of an ImageSet with every image perturbed (uint8 2-D arrays in, uint8 out)."""
    from training.data import ImageSet

    arrays = [perturb(np.asarray(images.image(i), dtype=np.uint8)) for i in range(len(images))]
    shapes = {a.shape for a in arrays}
    stacked = np.stack(arrays) if len(shapes) == 1 else np.array(arrays, dtype=object)
    return ImageSet(labels=images.labels, arrays=stacked, description=f"{images.description} (perturbed)")


def stress_report(model: Any, spec: Any, images: Any, *, temperature: float, threshold: float,
                  positive_index: int = 1) -> dict[str, Any]:
    """Per perturbation: ROC AUC and specificity/sensitivity at the stored threshold; plus their means."""
    from training.evaluate import binary_metrics
    from training.finalize import predict_probabilities

    rows: dict[str, dict[str, float]] = {}
    for name, perturb in {"none": None, **PERTURBATIONS}.items():
        subset = images if perturb is None else perturbed(images, perturb)
        scores = predict_probabilities(model, spec, subset, temperature=temperature)[:, positive_index]
        m = binary_metrics(images.labels, scores, threshold)
        rows[name] = {k: round(float(m[k]), 4) for k in ("roc_auc", "sensitivity", "specificity")}
    shifted = [rows[name] for name in PERTURBATIONS]
    summary = {f"mean_{k}": round(float(np.mean([r[k] for r in shifted])), 4)
               for k in ("roc_auc", "sensitivity", "specificity")}
    summary["worst_roc_auc"] = min(r["roc_auc"] for r in shifted)
    return {"perturbations": rows, "stressed": summary}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.stress", description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="artifacts (model.h5 or checkpoints)")
    p.add_argument("--data", required=True, help="the Kermany folder the models were trained on")
    p.add_argument("--cache", help="decoded image cache folder (as for training)")
    p.add_argument("--out", help="write all reports to this JSON file")
    args = p.parse_args(argv)

    from model_store.artifact import load_artifact
    from training.recalibrate import validation_and_test

    reports = {}
    for path in args.models:
        loaded = load_artifact(path)
        meta = loaded.metadata
        _, sets = validation_and_test(meta, args.data, args.cache)
        report = stress_report(loaded.model, meta.preprocessing, sets["val"], temperature=meta.temperature,
                               threshold=meta.decision_threshold, positive_index=meta.positive_index)
        reports[path] = report
        print(path, json.dumps(report["stressed"]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
