"""The temperature travels in the artifact; older artifacts without it load as uncalibrated."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from model_store.artifact import METADATA_ATTR, ArtifactError, ModelMetadata, load_artifact, save_artifact
from model_store.preprocessing import PreprocessingSpec
from training.model import ModelConfig, build_model


def _metadata(**extra) -> ModelMetadata:
    return ModelMetadata(name="pneumonia", version="2", class_names=["NORMAL", "PNEUMONIA"],
                         preprocessing=PreprocessingSpec(input_size=16), **extra)


def test_round_trip_keeps_temperature_and_outputs(tmp_path):
    model = build_model(ModelConfig(input_size=16, arch="sepres", filters=(2, 4, 4), dropout=0.0))
    path = tmp_path / "model.h5"
    save_artifact(model, _metadata(temperature=1.75, decision_threshold=0.4), path)
    loaded = load_artifact(path)
    assert loaded.metadata.temperature == 1.75 and loaded.metadata.decision_threshold == 0.4
    x = np.random.default_rng(0).random((3, 16, 16, 1)).astype(np.float32)
    np.testing.assert_allclose(loaded.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    assert loaded.model.get_layer("last_conv").__class__.__name__ == "SeparableConv2D"  # Grad-CAM's layer

    with h5py.File(path, "a") as handle:  # an artifact written before temperatures existed
        data = json.loads(handle.attrs[METADATA_ATTR])
        del data["temperature"]
        handle.attrs[METADATA_ATTR] = json.dumps(data)
    assert load_artifact(path).metadata.temperature == 1.0


@pytest.mark.parametrize("bad", [0.0, -1.0, 1000.0, "2"])
def test_out_of_range_temperature_is_refused(bad):
    with pytest.raises(ArtifactError, match="temperature"):
        _metadata(temperature=bad)
