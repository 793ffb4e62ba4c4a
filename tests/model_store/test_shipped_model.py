"""The default model we ship: loadable, documented, reproducible, and free of train/serve skew."""

from __future__ import annotations

import numpy as np
import pytest

from model_store.artifact import load_artifact
from model_store.imaging import load_file
from model_store.preprocessing import preprocess
from model_store.registry import DEFAULT_STORE, ModelRegistry
from training.cli import evaluate_model
from training.data import load_folder_split
from training.evaluate import binary_metrics


@pytest.fixture(scope="module")
def shipped():
    _, path = ModelRegistry(DEFAULT_STORE).resolve("pneumonia")
    if not path.is_file():
        pytest.skip(f"no shipped model at {path}")
    return load_artifact(path)


def test_shipped_artifact_is_small_complete_and_self_describing(shipped):
    assert shipped.path.stat().st_size < 20 * 1024 * 1024
    meta = shipped.metadata
    assert meta.class_names == ["NORMAL", "PNEUMONIA"] and meta.positive_class == "PNEUMONIA"
    assert meta.metrics["threshold_rule"].startswith("sensitivity >=")  # chosen on validation, not test
    assert meta.decision_threshold == pytest.approx(meta.metrics["val"]["threshold"])
    assert meta.metrics["val"]["roc_auc"] > 0.95
    assert meta.preprocessing.binarize in ("fixed", "otsu")
    for name in ("report.json", "roc.png", "confusion_test.png", "learning_curves.png"):
        assert (shipped.path.parent / name).is_file()


@pytest.mark.slow
def test_recorded_test_figures_are_reproduced(shipped, xray_224_dir):
    test_set = load_folder_split(xray_224_dir, "test")
    scores = evaluate_model(shipped.model, shipped.metadata.preprocessing, test_set)
    metrics = binary_metrics(test_set.labels, scores, shipped.metadata.decision_threshold)
    recorded = shipped.metadata.metrics["test"]
    assert metrics["confusion_matrix"] == recorded["confusion_matrix"]
    assert metrics["roc_auc"] == pytest.approx(recorded["roc_auc"], abs=1e-6)


def test_full_resolution_uploads_score_like_their_training_copies(shipped, fullres_dir, xray_224_dir):
    """Train/serve skew check: the same X-ray at full resolution and as the 224x224 training copy."""
    spec, threshold = shipped.metadata.preprocessing, shipped.metadata.decision_threshold
    originals = sorted(fullres_dir.glob("*/*.jpeg"))
    copies = [xray_224_dir / "train" / p.parent.name / p.name for p in originals]

    def load(paths):
        return np.stack([preprocess(load_file(p, min_size=2 * spec.input_size), spec) for p in paths])

    served = shipped.model.predict(load(originals), verbose=0)[:, 1]
    trained = shipped.model.predict(load(copies), verbose=0)[:, 1]
    assert np.abs(served - trained).max() < 0.1
    np.testing.assert_array_equal(served >= threshold, trained >= threshold)
