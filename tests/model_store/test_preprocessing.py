from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model_store.imaging import load_file
from model_store.preprocessing import (
    PreprocessingError,
    PreprocessingSpec,
    otsu_threshold,
    preprocess,
    unit_histogram,
)

SPEC = PreprocessingSpec(input_size=16)

image_dtypes = st.sampled_from([np.uint8, np.uint16, np.float32, np.float64])


@st.composite
def gray_images(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(image_dtypes)
    shape = (draw(st.integers(1, 80)), draw(st.integers(1, 80)))
    if np.issubdtype(dtype, np.floating):
        elements = st.floats(0.0, 1.0, width=32)
    else:
        elements = st.integers(0, int(np.iinfo(dtype).max))
    return draw(arrays(dtype, shape, elements=elements))


@settings(max_examples=60, deadline=None)
@given(image=gray_images(), binarize=st.sampled_from(["fixed", "otsu"]), crop=st.sampled_from(["none", "center"]))
def test_any_image_gives_exact_shape_binary_values_and_is_deterministic(image, binarize, crop):
    spec = PreprocessingSpec(input_size=16, binarize=binarize, crop=crop)
    out = preprocess(image, spec)
    assert out.shape == (16, 16, 1)
    assert out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 1.0}
    np.testing.assert_array_equal(out, preprocess(image.copy(), spec))


@settings(max_examples=30, deadline=None)
@given(image=gray_images())
def test_without_binarization_values_stay_in_unit_range(image):
    out = preprocess(image, PreprocessingSpec(input_size=12, binarize="none"))
    assert out.shape == (12, 12, 1)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_fixed_threshold_reproduces_pixel_over_128():
    image = np.array([[127, 128, 129, 255]] * 4, dtype=np.uint8)
    # same size in and out: no resampling, so the threshold alone decides
    out = preprocess(image.repeat(4, axis=1).repeat(4, axis=0)[:16, :16], SPEC)[..., 0]
    assert out[0, :12].tolist() == [0.0] * 8 + [1.0] * 4  # 127 and 128 -> 0, 129 -> 1
    assert out[0, 12:].tolist() == [1.0] * 4


def test_uint16_and_uint8_of_the_same_picture_agree():
    rng = np.random.default_rng(0)
    image8 = rng.integers(0, 256, size=(40, 30), dtype=np.uint8)
    image16 = image8.astype(np.uint16) * 257  # exact 8 -> 16 bit scaling
    np.testing.assert_array_equal(preprocess(image8, SPEC), preprocess(image16, SPEC))


def test_center_crop_ignores_the_sides_and_none_stretches():
    image = np.zeros((20, 60), dtype=np.uint8)
    image[:, 20:40] = 255  # bright centre square
    centre = preprocess(image, PreprocessingSpec(input_size=16, crop="center"))
    stretched = preprocess(image, PreprocessingSpec(input_size=16, crop="none"))
    assert centre.mean() == 1.0
    assert 0.2 < stretched.mean() < 0.5


def test_diaphragm_mask_zeroes_the_lowest_rows():
    out = preprocess(np.full((32, 32), 255, np.uint8), PreprocessingSpec(input_size=16, mask_bottom_fraction=0.25))
    assert out[:12].min() == 1.0 and out[12:].max() == 0.0


def test_otsu_splits_a_bimodal_image_between_its_modes():
    image = np.concatenate([np.full(500, 0.2), np.full(500, 0.8)]).astype(np.float32)
    assert 0.2 < otsu_threshold(image) < 0.8


@given(arrays(st.sampled_from([np.float32, np.float64]), st.integers(1, 300),
              elements=st.floats(-0.5, 1.5, width=32) | st.just(float("nan"))))
@settings(max_examples=200, deadline=None)
def test_unit_histogram_is_numpys_histogram_bin_for_bin(values):
    assert np.array_equal(unit_histogram(values), np.histogram(values, bins=256, range=(0.0, 1.0))[0])


def test_unit_histogram_puts_every_edge_and_its_neighbours_where_numpy_does():
    edges = np.linspace(0.0, 1.0, 257)
    values = np.concatenate([edges, np.nextafter(edges, 2.0), np.nextafter(edges, -1.0)])
    for dtype in (np.float32, np.float64):
        cast = values.astype(dtype)
        assert np.array_equal(unit_histogram(cast), np.histogram(cast, bins=256, range=(0.0, 1.0))[0])


@pytest.mark.parametrize("bad", [np.zeros((0, 5)), np.zeros((4, 4, 3)), np.array([[np.nan, 0.5]]),
                                 np.zeros((4, 4), dtype=np.complex64)])
def test_unusable_arrays_are_refused_with_preprocessing_error(bad):
    with pytest.raises(PreprocessingError):
        preprocess(bad, SPEC)


def test_spec_round_trips_through_json_and_refuses_bad_values():
    spec = PreprocessingSpec(input_size=64, crop="center", binarize="otsu", mask_bottom_fraction=0.2)
    assert PreprocessingSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="input_size"):
        PreprocessingSpec(input_size=2)
    with pytest.raises(ValueError, match="threshold"):
        PreprocessingSpec(threshold=1.5)
    with pytest.raises(ValueError, match="unknown preprocessing spec keys"):
        PreprocessingSpec.from_dict({**spec.to_dict(), "gamma": 2})


@pytest.mark.parametrize("size", [64, 128, 224])
def test_full_resolution_upload_matches_its_224_training_copy(fullres_dir, xray_224_dir, size):
    """Train/serve skew: the original and the stretched 224x224 copy must binarize (nearly) alike."""
    spec = PreprocessingSpec(input_size=size)
    originals = sorted(fullres_dir.glob("*/*.jpeg"))
    assert len(originals) >= 20
    for original in originals:
        copy = xray_224_dir / "train" / original.parent.name / original.name
        served = preprocess(load_file(original, min_size=2 * size), spec)
        trained = preprocess(load_file(copy, min_size=2 * size), spec)
        assert (served == trained).mean() > 0.97, original.name
