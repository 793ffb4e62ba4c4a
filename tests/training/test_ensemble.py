"""Ensembles as one Keras model: what it computes, what it refuses, and the CLI from members to an artifact."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from model_store.artifact import load_artifact
from model_store.registry import ModelRegistry
from training.cli import train_main
from training.ensemble import build_ensemble, check_members
from training.ensemble import main as ensemble_main
from training.model import ModelConfig, build_model
from training.train import TrainConfig, make_splits


def tiny(seed: int, arch: str = "plain") -> keras.Model:
    keras.utils.set_random_seed(seed)
    filters = (4, 8) if arch == "plain" else (4, 8, 8)
    return build_model(ModelConfig(input_size=28, filters=filters, dense_units=8, arch=arch))


def test_the_ensemble_is_the_softmax_of_the_members_mean_log_probabilities() -> None:
    members = [tiny(1), tiny(2), tiny(3)]
    ensemble = build_ensemble(members)
    x = np.random.default_rng(0).random((5, 28, 28, 1)).astype(np.float32)
    log_p = np.mean([np.log(np.asarray(m(x, training=False), dtype=np.float64)) for m in members], axis=0)
    expected = np.exp(log_p) / np.exp(log_p).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(ensemble(x, training=False)), expected, atol=1e-5)
    names = [layer.name for layer in ensemble.layers]
    assert "m1_conv1" in names and "m3_logits" in names and names[-1] == "probabilities"
    assert len(names) == len(set(names))  # every copied layer renamed: one HDF5 file holds them all


def test_refuses_members_it_cannot_copy_or_compare() -> None:
    with pytest.raises(ValueError, match="at least two"):
        build_ensemble([tiny(1)])
    with pytest.raises(ValueError, match="plain stack"):
        build_ensemble([tiny(1), tiny(2, arch="sepres")])

    class Meta:
        def __init__(self, seed: int, spec: str = "s") -> None:
            self.preprocessing = spec
            self.training = {"config": {"split": "patient", "val_fraction": 0.1, "seed": seed}}

    check_members([Meta(1), Meta(1)])
    with pytest.raises(ValueError, match="different splits"):
        check_members([Meta(1), Meta(2)])
    with pytest.raises(ValueError, match="preprocessing"):
        check_members([Meta(1, "a"), Meta(1, "b")])


def test_member_seed_changes_the_training_subset_but_not_validation() -> None:
    from training.data import ImageSet

    labels = np.array([0] * 40 + [1] * 120)  # unbalanced: undersampling picks a subset of the positives
    images = ImageSet(labels=labels, arrays=np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1))
    one = make_splits(images, TrainConfig(seed=7, member_seed=1))
    two = make_splits(images, TrainConfig(seed=7, member_seed=2))
    same = make_splits(images, TrainConfig(seed=7, member_seed=1))
    np.testing.assert_array_equal(one.val.arrays, two.val.arrays)  # one validation split for every member
    assert not np.array_equal(np.sort(one.train.arrays.ravel()), np.sort(two.train.arrays.ravel()))
    np.testing.assert_array_equal(one.train.arrays, same.train.arrays)  # and each member is reproducible


@pytest.mark.slow
def test_cli_trains_members_then_exports_a_calibrated_ensemble(mnist_npz, tmp_path) -> None:
    paths = []
    for member_seed in (1, 2):
        store = tmp_path / f"m{member_seed}"
        assert train_main(["--data", str(mnist_npz), "--out", str(tmp_path / f"run{member_seed}"), "--store",
                           str(store), "--input-size", "28", "--filters", "4,8", "--dense", "16", "--epochs", "1",
                           "--batch-size", "64", "--seed", "7", "--member-seed", str(member_seed),
                           "--target-sensitivity", "0.95", "--quiet"]) == 0
        paths.append(ModelRegistry(store).resolve("pneumonia")[1])
    store = tmp_path / "store"
    assert ensemble_main(["--data", str(mnist_npz), "--out", str(tmp_path / "ens"), "--store", str(store),
                          "--members", *map(str, paths)]) == 0
    exported = load_artifact(ModelRegistry(store).resolve("pneumonia")[1])
    meta = exported.metadata
    assert meta.metrics["threshold_rule"] == "sensitivity >= 0.95"  # the members' rule
    assert meta.metrics["val"]["sensitivity"] >= 0.95
    assert meta.temperature != 1.0 and "test" in meta.metrics["calibration"]
    assert [m["path"] for m in meta.metrics["ensemble"]] == [str(p) for p in paths]
    members = [load_artifact(p).model for p in paths]
    x = np.random.default_rng(1).integers(0, 2, (4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(exported.model(x)), np.asarray(build_ensemble(members)(x)), atol=1e-6)
    for name in ("reliability.png", "learning_curves.png", "history.csv", "report.json", "roc.png"):
        assert (exported.path.parent / name).is_file(), name
    header = (exported.path.parent / "history.csv").read_text().splitlines()[0]
    assert "m1_val_loss" in header and "m2_val_loss" in header

    # the same finalize path recalibrates a member without retraining: same weights, new temperature
    from training.recalibrate import main as recalibrate_main

    assert recalibrate_main(["--model", str(paths[0]), "--data", str(mnist_npz), "--out", str(tmp_path / "recal"),
                             "--store", str(tmp_path / "recal-store")]) == 0
    recalibrated = load_artifact(ModelRegistry(tmp_path / "recal-store").resolve("pneumonia")[1])
    assert recalibrated.metadata.metrics["recalibrated_from"]["sha256"] == load_artifact(paths[0]).sha256
    np.testing.assert_allclose(np.asarray(recalibrated.model(x)), np.asarray(members[0](x)), atol=1e-6)
    assert recalibrated.metadata.temperature > 0 and (recalibrated.path.parent / "reliability.png").is_file()
