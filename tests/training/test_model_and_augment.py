from __future__ import annotations

import numpy as np

from training.augment import AugmentConfig, augment
from training.model import ModelConfig, build_model


def test_model_is_built_from_its_config_and_outputs_probabilities():
    config = ModelConfig(input_size=16, filters=(2, 3, 4), dense_units=8)
    model = build_model(config)
    assert model.input_shape == (None, 16, 16, 1)
    assert [layer.filters for layer in model.layers if hasattr(layer, "filters")] == [2, 3, 4]
    out = model.predict(np.random.default_rng(0).random((5, 16, 16, 1), dtype=np.float32), verbose=0)
    assert out.shape == (5, 2)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-5)
    assert build_model(ModelConfig(input_size=32, filters=(2,), dense_units=4)).input_shape == (None, 32, 32, 1)


def test_augment_keeps_shape_and_is_seeded():
    image = np.tile(np.arange(64, dtype=np.uint8) * 4, (48, 1))
    a = augment(image, AugmentConfig(), np.random.default_rng(1))
    b = augment(image, AugmentConfig(), np.random.default_rng(1))
    c = augment(image, AugmentConfig(), np.random.default_rng(2))
    assert a.shape == image.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_augment_never_mirrors_the_anatomy():
    # a left-to-right ramp must stay a left-to-right ramp (no horizontal flips)
    image = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    for seed in range(20):
        out = augment(image, AugmentConfig(), np.random.default_rng(seed)).astype(float)
        assert out[:, 40:56].mean() > out[:, 8:24].mean()


def test_zero_strength_augmentation_is_identity():
    image = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    still = AugmentConfig(0, 0, 0, 0, 0)
    np.testing.assert_array_equal(augment(image, still, np.random.default_rng(0)), image)


def test_aspect_augmentation_stretches_one_axis_and_squeezes_the_other():
    image = np.zeros((64, 64), dtype=np.uint8)
    image[16:48, 16:48] = 255  # a centred 32x32 square
    stretch = AugmentConfig(0, 0, 0, 0, 0, max_aspect=0.3)
    ratios = []
    for seed in range(12):
        out = augment(image, stretch, np.random.default_rng(seed)) > 127
        width, height = out.any(axis=0).sum(), out.any(axis=1).sum()
        assert abs(int(width) * int(height) - 32 * 32) < 0.15 * 32 * 32  # area kept: no zoom
        ratios.append(width / height)
    assert min(ratios) < 0.9 and max(ratios) > 1.1
