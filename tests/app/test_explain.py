"""Grad-CAM (app/explain.py): sanity checks after Adebayo et al. 2018 on a tiny model trained here in seconds, the
layer search on sequential/functional/HDF5-loaded graphs, and the placement of the map on the upload's geometry."""

from __future__ import annotations

import io

import keras
import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from app.explain import (
    GRID_SIZE,
    ExplainerCache,
    ExplanationUnavailableError,
    GradCam,
    explanation_for,
    find_target_layer,
    place_on_image,
    preview_png,
)
from model_store.preprocessing import PreprocessingSpec

SIZE = 32
HALF = SIZE // 2


def blob_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise images; the positive half carry one bright blob in a random quadrant (0 TL, 1 TR, 2 BL, 3 BR).
    Returns (images (n, S, S, 1), labels, quadrant or -1)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images = rng.uniform(0.0, 0.35, (n, SIZE, SIZE)).astype(np.float32)
    labels = np.arange(n) % 2
    quadrants = np.where(labels == 1, rng.integers(0, 4, n), -1)
    for i in np.flatnonzero(labels):
        q = quadrants[i]
        cy = rng.integers(4, HALF - 4) + HALF * (q // 2)
        cx = rng.integers(4, HALF - 4) + HALF * (q % 2)
        images[i] += 0.65 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.0**2))
    return np.clip(images, 0, 1)[..., None], labels, quadrants


def quadrant_of_peak(cam: np.ndarray) -> int:
    row, col = np.unravel_index(np.argmax(cam), cam.shape)
    return int(2 * (row >= cam.shape[0] / 2) + (col >= cam.shape[1] / 2))


def tiny_convnet() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 1), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    h = keras.layers.MaxPooling2D(2, name="pool1")(h)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.GlobalMaxPooling2D(name="gmp")(h)
    outputs = keras.layers.Dense(2, activation="softmax", name="probabilities")(h)
    return keras.Model(inputs, outputs, name="blob_net")


@pytest.fixture(scope="module")
def trained() -> tuple[keras.Model, np.ndarray, np.ndarray]:
    """A tiny ConvNet trained in seconds to find the blob; plus held-out positives and their quadrants."""
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    x, y, _ = blob_images(800, rng)
    model = tiny_convnet()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    x_test, y_test, q_test = blob_images(120, rng)
    accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))
    assert accuracy >= 0.95, f"the tiny model did not learn the task (accuracy {accuracy:.2f})"
    positive = y_test == 1
    return model, x_test[positive], q_test[positive]


def test_map_peaks_in_the_blob_quadrant(trained):
    model, x, quadrants = trained
    cams = GradCam(model, positive_index=1).maps(x)
    assert cams.shape == (len(x), HALF, HALF)
    assert cams.min() >= 0 and np.allclose(cams.reshape(len(x), -1).max(axis=1), 1.0)
    hits = np.mean([quadrant_of_peak(cam) == q for cam, q in zip(cams, quadrants, strict=True)])
    assert hits >= 0.9, f"peak in the blob's quadrant for only {hits:.0%} of test images"


def test_randomising_the_explained_layer_changes_the_map(trained):
    model, x, _ = trained
    before = GradCam(model, positive_index=1).maps(x)
    randomised = keras.models.clone_model(model)
    randomised.set_weights(model.get_weights())
    layer = randomised.get_layer("conv2")
    kernel, bias = layer.get_weights()
    rng = np.random.default_rng(11)
    layer.set_weights([rng.normal(0, kernel.std(), kernel.shape).astype(np.float32), np.zeros_like(bias)])
    after = GradCam(randomised, positive_index=1).maps(x)
    # a constant (all-zero) map shares no ranking with the other: correlation 0
    correlations = [spearmanr(a.ravel(), b.ravel()).statistic if a.std() > 0 and b.std() > 0 else 0.0
                    for a, b in zip(before, after, strict=True)]
    assert np.mean(correlations) < 0.5, f"mean rank correlation {np.mean(correlations):.2f} after randomising"


def test_same_image_same_map_whatever_the_batch(trained):
    model, x, _ = trained
    explainer = GradCam(model, positive_index=1)
    alone = explainer.maps(x[:1])
    again = explainer.maps(x[:1])
    in_batch = explainer.maps(x[:4])
    np.testing.assert_array_equal(alone, again)
    np.testing.assert_allclose(alone[0], in_batch[0], atol=1e-5)


def test_map_follows_a_flipped_input(trained):
    model, x, quadrants = trained
    explainer = GradCam(model, positive_index=1)
    flipped = explainer.maps(x[:, :, ::-1, :].copy())
    mirrored = {0: 1, 1: 0, 2: 3, 3: 2}
    hits = np.mean([quadrant_of_peak(cam) == mirrored[q] for cam, q in zip(flipped, quadrants, strict=True)])
    assert hits >= 0.9, f"flipped input: peak in the mirrored quadrant for only {hits:.0%}"
    straight = explainer.maps(x)
    rho = np.mean([spearmanr(f.ravel(), s[:, ::-1].ravel()).statistic for f, s in zip(flipped, straight,
                                                                                       strict=True)])
    assert rho > 0.7, f"map of the flipped image vs the flipped map: rank correlation {rho:.2f}"


def test_hdf5_loaded_model_gives_the_same_maps(trained, tmp_path):
    """A model loaded from HDF5 has called each layer several times while being rebuilt: the explained tensor must
    come from the graph the model runs, not from the layer's first call."""
    model, x, _ = trained
    path = tmp_path / "blob.h5"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(GradCam(loaded, 1).maps(x[:8]), GradCam(model, 1).maps(x[:8]), atol=1e-4)


def test_sequential_and_residual_models_are_explained_at_their_last_convolution():
    sequential = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(4, 3, name="c1"),
                                   keras.layers.Conv2D(4, 3, name="c2"), keras.layers.Flatten(),
                                   keras.layers.Dense(2, activation="softmax")])
    assert GradCam(sequential, 1).layer_name == "c2"

    inputs = keras.Input((16, 16, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    branch = keras.layers.SeparableConv2D(8, 3, padding="same", name="sep")(h)
    branch = keras.layers.BatchNormalization(name="bn")(branch)
    h = keras.layers.Add(name="add")([h, branch])
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="depthwise")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    logits = keras.layers.Dense(2, name="logits")(h)
    residual = keras.Model(inputs, keras.layers.Softmax()(logits))
    explainer = GradCam(residual, 1)
    assert explainer.layer_name == "depthwise"
    cams = explainer.maps(np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype(np.float32))
    assert cams.shape == (2, 16, 16) and np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1
    assert GradCam(residual, 1, layer="sep").layer_name == "sep"


def test_an_ensemble_is_explained_at_every_members_last_convolution(trained):
    """training/ensemble.py puts members side by side: the map covers each member's last convolution, and an
    ensemble of one network twice (equal shares of the score) gives that network's own map."""
    from training.ensemble import build_ensemble

    model, x, _ = trained
    member = keras.Sequential([keras.Input((SIZE, SIZE, 1)), *model.layers[1:]], name="member")
    explainer = GradCam(build_ensemble([member, member]), 1)
    assert explainer.layer_name == "m1_conv2+m2_conv2"
    np.testing.assert_allclose(explainer.maps(x[:8]), GradCam(model, 1).maps(x[:8]), atol=1e-4)


def test_a_model_without_a_convolution_is_a_clear_domain_error():
    dense_only = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(),
                                   keras.layers.Dense(2, activation="softmax")], name="mlp")
    with pytest.raises(ExplanationUnavailableError, match="no convolutional layer") as caught:
        find_target_layer(dense_only)
    assert caught.value.status == 422 and caught.value.code == "explanation_unavailable"
    with pytest.raises(ExplanationUnavailableError, match="no layer named 'nope'"):
        GradCam(dense_only, 1, layer="nope")


def test_the_cache_builds_one_explainer_per_served_model(trained):
    model, _, _ = trained
    cache = ExplainerCache()
    first, second = object(), object()
    assert cache.get(first, model, 1) is cache.get(first, model, 1)
    assert cache.get(second, model, 1) is not cache.get(first, model, 1)


# -- geometry: the map lands on the upload ---------------------------------------------------------------------
def test_stretched_input_maps_back_onto_a_wide_upload():
    cam = np.zeros((7, 7), dtype=np.float32)
    cam[:, :2] = 1.0  # hot on the left of the square model input
    heat = place_on_image(cam, 300, 100, PreprocessingSpec(input_size=32, crop="none"))
    assert heat.shape == (100, 300)
    assert heat[:, :60].mean() > 0.8 and heat[:, 150:].max() < 0.05


def test_centre_cropped_input_maps_into_the_centre_square_only():
    cam = np.ones((7, 7), dtype=np.float32)
    heat = place_on_image(cam, 300, 100, PreprocessingSpec(input_size=32, crop="center"))
    assert heat[:, :100].max() == 0 and heat[:, 200:].max() == 0 and heat[:, 110:190].min() > 0.9


def test_explanation_has_a_grid_and_an_overlay_with_the_upload_aspect_ratio():
    cam = np.random.default_rng(3).uniform(size=(7, 7)).astype(np.float32)
    cam /= cam.max()
    explanation = explanation_for(cam, (1200, 2000), PreprocessingSpec(input_size=32), "conv", max_side=500)
    body = explanation.as_dict()
    assert body["method"] == "grad-cam" and body["layer"] == "conv"
    grid = np.array(body["grid"])
    assert grid.shape == (GRID_SIZE, GRID_SIZE) and grid.min() >= 0 and grid.max() <= 1
    overlay = Image.open(io.BytesIO(explanation.overlay_png))
    assert overlay.format == "PNG" and overlay.mode == "RGBA" and overlay.size == (500, 300)
    alpha = np.asarray(overlay)[..., 3]
    assert alpha.max() > 150 and alpha.min() < alpha.max()  # opaque where hot, see-through elsewhere


def test_preview_keeps_the_aspect_ratio_and_the_pixels():
    gray = np.tile(np.linspace(0, 65535, 400, dtype=np.uint16), (200, 1))
    picture = Image.open(io.BytesIO(preview_png(gray, 100)))
    assert picture.mode == "L" and picture.size == (100, 50)
    row = np.asarray(picture)[25]
    assert row[0] < 10 and row[-1] > 245 and np.all(np.diff(row.astype(int)) >= 0)


def test_the_v2_network_family_is_explained_at_last_conv_after_an_artifact_round_trip(tmp_path):
    """training.model's residual separable network (the v2 default), saved and loaded by the artifact code the
    service uses: Grad-CAM reads its "last_conv" and gives the same maps before and after."""
    from model_store.artifact import ModelMetadata, load_artifact, save_artifact
    from training.model import ModelConfig, build_model

    keras.utils.set_random_seed(3)
    model = build_model(ModelConfig(input_size=SIZE, filters=(4, 8, 8), arch="sepres", dropout=0.0))
    meta = ModelMetadata(name="pneumonia", version="2", class_names=["NORMAL", "PNEUMONIA"],
                         preprocessing=PreprocessingSpec(input_size=SIZE))
    path = tmp_path / "pneumonia" / "2" / "model.h5"
    save_artifact(model, meta, path, include_optimizer=False)
    loaded = load_artifact(path).model
    x, _, _ = blob_images(4, np.random.default_rng(5))
    explainer = GradCam(loaded, positive_index=1)
    assert explainer.layer_name == "last_conv"
    maps = explainer.maps(x)
    assert maps.max() == 1.0  # not a trivially equal pair of all-zero maps
    np.testing.assert_allclose(maps, GradCam(model, positive_index=1).maps(x), atol=1e-4)
