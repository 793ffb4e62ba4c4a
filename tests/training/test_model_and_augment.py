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


def test_gamma_augmentation_moves_mid_greys_and_keeps_black_and_white():
    image = np.tile(np.array([0, 64, 128, 192, 255], dtype=np.uint8), (8, 1))
    gamma_only = AugmentConfig(0, 0, 0, 0, 0, max_log_gamma=0.5)
    mids = []
    for seed in range(16):
        out = augment(image, gamma_only, np.random.default_rng(seed)).astype(int)
        assert (out[:, 0] == 0).all() and (out[:, -1] == 255).all()
        assert (np.diff(out[0]) > 0).all()  # monotone: the order of grey levels is kept
        mids.append(out[0, 2])
    # the draw covers both directions around 128, within exp(+-0.5)
    assert min(mids) < 118 and max(mids) > 138
    assert 255 * (128 / 255) ** np.exp(0.5) - 1 <= min(mids) and max(mids) <= 255 * (128 / 255) ** np.exp(-0.5) + 1


def test_gamma_off_keeps_the_random_sequence_of_earlier_recipes():
    image = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    before = augment(image, AugmentConfig(), np.random.default_rng(7))
    after = augment(image, AugmentConfig().with_intensity(1.0, 0.0), np.random.default_rng(7))
    np.testing.assert_array_equal(before, after)


def test_intensity_factor_scales_brightness_and_contrast_only():
    base = AugmentConfig()
    strong = base.with_intensity(2.5, 0.3)
    assert strong.max_brightness == 2.5 * base.max_brightness and strong.max_contrast == 2.5 * base.max_contrast
    assert strong.max_rotation_deg == base.max_rotation_deg and strong.max_zoom == base.max_zoom
    assert strong.max_log_gamma == 0.3


def test_mixup_blends_inputs_labels_and_weights_with_one_draw_per_pair():
    from model_store.preprocessing import PreprocessingSpec
    from training.batches import ImageBatches
    from training.data import ImageSet

    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 8)
    images = ImageSet(labels=labels, arrays=rng.integers(0, 256, (16, 16, 16), dtype=np.uint8))
    spec = PreprocessingSpec(input_size=16)
    plain = ImageBatches(images, spec, 16, one_hot=True, class_weight={0: 2.0, 1: 1.0})
    mixed = ImageBatches(images, spec, 16, mixup_alpha=0.4, class_weight={0: 2.0, 1: 1.0})
    x0, y0, w0 = plain[0]
    x, y, w = mixed[0]
    np.testing.assert_array_equal(y0, np.eye(2)[labels])
    assert np.allclose(y.sum(axis=1), 1.0) and ((y > 0) & (y < 1)).any()  # soft rows, still distributions
    assert set(np.unique(x0)) <= {0.0, 1.0} and len(np.unique(x)) > 2  # blended binary images
    # each sample is lam * own + (1 - lam) * a partner's, for its input, label and weight with ONE lam
    for i in range(16):
        found = False
        for j in range(16):
            differ = x0[i] != x0[j]
            if not differ.any():
                continue
            lams = (x[i] - x0[j])[differ] / (x0[i] - x0[j])[differ]
            if np.ptp(lams) < 1e-5:
                lam = lams.mean()
                assert np.allclose(y[i], lam * y0[i] + (1 - lam) * y0[j], atol=1e-5)
                assert np.isclose(w[i], lam * w0[i] + (1 - lam) * w0[j], atol=1e-5)
                found = True
                break
        assert found, i
    assert ((w >= 1.0) & (w <= 2.0)).all() and not np.allclose(w, w0)
    np.testing.assert_array_equal(mixed[0][0], x)  # seeded: the same batch again is the same blend
