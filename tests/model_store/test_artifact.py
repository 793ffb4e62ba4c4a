from __future__ import annotations

import json

import h5py
import keras
import numpy as np
import pytest

from model_store.artifact import ArtifactError, ModelMetadata, inspect_artifact, load_artifact, save_artifact
from model_store.preprocessing import PreprocessingSpec
from model_store.registry import ModelNotFoundError, ModelRegistry
from training.model import ModelConfig, build_model

TINY = ModelConfig(input_size=16, filters=(2, 4), dense_units=8, dropout=0.0)


def metadata(**overrides) -> ModelMetadata:
    fields = {"name": "pneumonia", "version": "1", "class_names": ["NORMAL", "PNEUMONIA"],
              "preprocessing": PreprocessingSpec(input_size=16), "decision_threshold": 0.4}
    return ModelMetadata(**{**fields, **overrides})


@pytest.fixture
def trained(tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model(TINY)
    x = np.random.default_rng(0).random((16, 16, 16, 1), dtype=np.float32)
    y = np.arange(16) % 2
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    path = tmp_path / "model.h5"
    sha = save_artifact(model, metadata(), path)
    return model, x, path, sha


def test_round_trip_gives_same_outputs_metadata_and_optimizer_state(trained):
    model, x, path, sha = trained
    loaded = load_artifact(path, compile=True)
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert loaded.metadata == metadata()
    assert loaded.sha256 == sha and len(sha) == 64
    assert int(loaded.model.optimizer.iterations) == int(model.optimizer.iterations) == 8
    for saved, restored in zip(model.optimizer.variables, loaded.model.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(saved), np.asarray(restored))
    loaded.model.fit(x, np.arange(16) % 2, epochs=1, batch_size=4, verbose=0)  # resumable, not just loadable
    assert int(loaded.model.optimizer.iterations) == 12


def test_not_hdf5_is_refused(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    with pytest.raises(ArtifactError, match="not an HDF5 file"):
        load_artifact(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "nope.h5")


def test_plain_keras_file_without_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.h5"
    build_model(TINY).save(path)
    with pytest.raises(ArtifactError, match="cxr_metadata"):
        load_artifact(path)


def _with_config(path, mutate) -> None:
    with h5py.File(path, "a") as handle:
        config = json.loads(handle.attrs["model_config"])
        mutate(config)
        handle.attrs["model_config"] = json.dumps(config)


def test_lambda_layer_is_refused_before_keras_sees_it(trained):
    _, _, path, _ = trained

    def add_lambda(config):
        config["config"]["layers"].insert(1, {"class_name": "Lambda", "config": {
            "name": "evil", "function": {"class_name": "__lambda__", "config": {"code": "b64..."}}}})

    _with_config(path, add_lambda)
    with pytest.raises(ArtifactError, match="Lambda"):
        load_artifact(path)


def test_custom_registered_object_is_refused(trained):
    _, _, path, _ = trained

    def add_custom(config):
        config["config"]["layers"][1]["registered_name"] = "evil_pkg>EvilConv"

    _with_config(path, add_custom)
    with pytest.raises(ArtifactError, match="custom object"):
        load_artifact(path)


def test_unknown_module_is_refused(trained):
    _, _, path, _ = trained

    def add_module(config):
        config["config"]["layers"][1]["module"] = "os"

    _with_config(path, add_module)
    with pytest.raises(ArtifactError, match="module"):
        load_artifact(path)


def test_object_dataset_that_could_hold_pickles_is_refused(trained):
    _, _, path, _ = trained
    with h5py.File(path, "a") as handle:
        handle.create_dataset("payload", data=np.void(b"\x80\x04pickle"))
    with pytest.raises(ArtifactError, match="pickled"):
        inspect_artifact(path)


def test_metadata_that_disagrees_with_the_model_is_refused(tmp_path):
    path = tmp_path / "model.h5"
    save_artifact(build_model(TINY), metadata(class_names=["A", "B", "PNEUMONIA"]), path)
    with pytest.raises(ArtifactError, match="3 classes"):
        load_artifact(path)
    save_artifact(build_model(TINY), metadata(preprocessing=PreprocessingSpec(input_size=32)), path)
    with pytest.raises(ArtifactError, match="does not match the preprocessing spec"):
        load_artifact(path)


def test_truncated_file_is_refused(trained):
    _, _, path, _ = trained
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError):
        load_artifact(path)


def test_registry_lists_versions_and_resolves_latest(tmp_path, trained):
    _, _, path, _ = trained
    registry = ModelRegistry(tmp_path / "store")
    assert registry.next_version("pneumonia") == 1
    for version in (1, 3):
        target = registry.path_for("pneumonia", version)
        target.parent.mkdir(parents=True)
        target.write_bytes(path.read_bytes())
    (tmp_path / "store" / "pneumonia" / "7").mkdir()  # a folder without model.h5 is not a version
    (tmp_path / "store" / "pneumonia" / "draft").mkdir()
    assert registry.versions("pneumonia") == [1, 3]
    assert registry.models() == ["pneumonia"]
    assert registry.resolve("pneumonia") == (3, registry.path_for("pneumonia", 3))
    assert registry.resolve("pneumonia", "1")[0] == 1
    assert registry.next_version("pneumonia") == 4
    with pytest.raises(ModelNotFoundError, match="no version 2"):
        registry.resolve("pneumonia", 2)
    with pytest.raises(ModelNotFoundError, match="positive integer"):
        registry.resolve("pneumonia", "abc")
    with pytest.raises(ModelNotFoundError):
        registry.resolve("other")
