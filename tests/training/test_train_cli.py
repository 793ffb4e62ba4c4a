"""A few-step training run on a slice of real data, a resume from its checkpoint, export and evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from model_store.artifact import load_artifact, read_metadata
from model_store.registry import ModelRegistry
from training.cli import evaluate_main, train_main
from training.train import LAST_CHECKPOINT

pytestmark = pytest.mark.slow

TINY = ["--input-size", "28", "--filters", "4,8", "--dense", "16", "--limit", "48", "--batch-size", "16",
        "--seed", "7", "--quiet"]


def test_train_then_resume_carries_the_optimizer_state(mnist_npz, tmp_path, capsys):
    run, store = tmp_path / "run", tmp_path / "store"
    assert train_main(["--data", str(mnist_npz), "--out", str(run), "--epochs", "2", "--no-export", *TINY]) == 0
    first = load_artifact(run / LAST_CHECKPOINT, compile=True)
    steps_per_epoch = int(np.ceil(2 * 43 / 16))  # 48 per class, 10% held out for validation, undersampled
    assert first.metadata.training["epoch"] == 2
    assert int(first.model.optimizer.iterations) == 2 * steps_per_epoch
    assert first.metadata.preprocessing.input_size == 28

    assert train_main(["--data", str(mnist_npz), "--out", str(run), "--epochs", "3", "--store", str(store),
                       "--resume", str(run / LAST_CHECKPOINT), *TINY]) == 0
    resumed = load_artifact(run / LAST_CHECKPOINT, compile=True)
    assert resumed.metadata.training["epoch"] == 3
    assert int(resumed.model.optimizer.iterations) == 3 * steps_per_epoch
    assert len(resumed.metadata.training["history"]["loss"]) == 3  # history continues, not restarts

    version, path = ModelRegistry(store).resolve("pneumonia")
    exported = read_metadata(path)
    assert version == 1 and exported.version == "1"
    assert 0.0 <= exported.decision_threshold <= 1.0
    assert set(exported.metrics) >= {"val", "test", "threshold_rule"}
    for name in ("report.json", "roc.png", "confusion_val.png", "confusion_test.png", "learning_curves.png"):
        assert (path.parent / name).is_file(), name

    capsys.readouterr()
    assert evaluate_main(["--model", str(path), "--data", str(mnist_npz), "--split", "test", "--limit", "48",
                          "--out", str(tmp_path / "eval")]) == 0
    printed = json.loads(capsys.readouterr().out)
    # cxr-evaluate reproduces the figures recorded at export (same data slice, same threshold)
    assert printed["confusion_matrix"] == exported.metrics["test"]["confusion_matrix"]
    assert printed["roc_auc"] == pytest.approx(exported.metrics["test"]["roc_auc"])
    assert (tmp_path / "eval" / "report.json").is_file()


def test_v2_recipe_calibrates_on_validation_and_evaluate_reproduces_it(mnist_npz, tmp_path, capsys):
    """The v2 recipe (separable residual net, cosine schedule, class weights) through the CLI: the stored
    temperature was fitted on validation, the threshold is on the calibrated scale, and cxr-evaluate (which
    applies the stored temperature) reproduces the recorded test figures."""
    run, store = tmp_path / "run", tmp_path / "store"
    assert train_main(["--data", str(mnist_npz), "--out", str(run), "--store", str(store), "--epochs", "2",
                       "--input-size", "28", "--arch", "sepres", "--filters", "4,8,8", "--limit", "60",
                       "--batch-size", "16", "--balance", "class-weight", "--schedule", "cosine",
                       "--warmup-epochs", "1", "--augment-scale", "1.5", "--target-sensitivity", "0.95",
                       "--seed", "7", "--quiet"]) == 0
    _, path = ModelRegistry(store).resolve("pneumonia")
    loaded = load_artifact(path)
    meta = loaded.metadata
    report = json.loads((run / "report.json").read_text())
    assert meta.temperature == pytest.approx(report["temperature"]) and meta.temperature > 0
    assert meta.training["config"]["schedule"] == "cosine" and meta.training["config"]["split"] == "patient"
    assert meta.decision_threshold == pytest.approx(meta.metrics["val"]["threshold"])
    dist = meta.metrics["validation_distribution"]
    assert len(dist["bin_edges"]) == 11 and sum(dist["counts"]) == meta.metrics["val"]["n"]
    for split in ("val", "test"):
        assert set(meta.metrics["calibration"][split]) == {"ece_before", "ece_after", "brier_before",
                                                            "brier_after"}
        assert report["splits"][split]["images"] == meta.metrics[split]["n"]
    assert (path.parent / "reliability.png").is_file()
    history = json.loads((run / "history.json").read_text())
    assert history["learning_rate"][0] < history["learning_rate"][1]  # warm-up, then cosine decay

    capsys.readouterr()
    assert evaluate_main(["--model", str(path), "--data", str(mnist_npz), "--split", "test", "--limit", "60"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["confusion_matrix"] == meta.metrics["test"]["confusion_matrix"]
    assert printed["roc_auc"] == pytest.approx(meta.metrics["test"]["roc_auc"])


def test_mixup_and_label_smoothing_train_resume_and_export(mnist_npz, tmp_path):
    """Soft labels through the whole CLI: the loss is compiled with the smoothing, a resume brings the same loss
    back (without repeating the flags) and feeds it matching labels, and the export is a normal artifact."""
    run, store = tmp_path / "run", tmp_path / "store"
    assert train_main(["--data", str(mnist_npz), "--out", str(run), "--epochs", "1", "--no-export",
                       "--mixup", "0.2", "--label-smoothing", "0.1", *TINY]) == 0
    first = load_artifact(run / LAST_CHECKPOINT, compile=True)
    assert first.model.loss.get_config()["label_smoothing"] == pytest.approx(0.1)
    config = first.metadata.training["config"]
    assert config["mixup_alpha"] == 0.2 and config["model"]["label_smoothing"] == 0.1

    assert train_main(["--data", str(mnist_npz), "--out", str(run), "--epochs", "2", "--store", str(store),
                       "--resume", str(run / LAST_CHECKPOINT), *TINY]) == 0
    resumed = load_artifact(run / LAST_CHECKPOINT, compile=True)
    assert resumed.metadata.training["epoch"] == 2
    assert resumed.metadata.training["config"]["mixup_alpha"] == 0.2
    _, path = ModelRegistry(store).resolve("pneumonia")
    assert load_artifact(path).metadata.decision_threshold > 0
