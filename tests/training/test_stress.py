"""Stressed validation: the perturbations do what their names say, and the report scores every one of them."""

from __future__ import annotations

import keras
import numpy as np

from model_store.preprocessing import PreprocessingSpec
from training.data import ImageSet
from training.evaluate import binary_metrics
from training.finalize import predict_probabilities
from training.model import ModelConfig, build_model
from training.stress import PERTURBATIONS, aspect, blur, brightness, contrast, gamma, stress_report


def ramp() -> np.ndarray:
    return np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))


def test_intensity_perturbations_move_mid_greys_the_named_way_and_keep_the_order():
    image = ramp().astype(int)
    assert (gamma(0.75)(ramp()).astype(int) >= image).all() and (gamma(1.33)(ramp()).astype(int) <= image).all()
    assert (brightness(0.08)(ramp()).astype(int) >= image).all()
    assert (brightness(-0.08)(ramp()).astype(int) <= image).all()
    flat, steep = contrast(0.8)(ramp()).astype(int), contrast(1.25)(ramp()).astype(int)
    assert np.ptp(flat) < np.ptp(image) and (np.diff(steep[0]) >= 0).all()
    for perturb in PERTURBATIONS.values():
        out = perturb(ramp())
        assert out.dtype == np.uint8 and out.shape == (64, 64)


def test_geometric_perturbations_stretch_and_smooth():
    square = np.zeros((64, 64), dtype=np.uint8)
    square[24:40, 24:40] = 255
    wide = aspect(1.3)(square) > 127
    assert wide.any(axis=0).sum() > 16 > wide.any(axis=1).sum()
    tall = aspect(1 / 1.3)(square) > 127
    assert tall.any(axis=1).sum() > 16 > tall.any(axis=0).sum()
    edge = blur(1.0)(square)[32, 20:28]
    assert edge.max() > 0 and np.unique(edge).size > 2  # the hard edge became a ramp


def test_report_scores_the_unperturbed_set_like_plain_evaluation_and_every_perturbation():
    keras.utils.set_random_seed(3)
    spec = PreprocessingSpec(input_size=16)
    model = build_model(ModelConfig(input_size=16, filters=(4, 8), dense_units=8))
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 12)
    images = ImageSet(labels=labels, arrays=rng.integers(0, 256, (24, 32, 32), dtype=np.uint8))
    report = stress_report(model, spec, images, temperature=1.5, threshold=0.5)
    assert set(report["perturbations"]) == {"none", *PERTURBATIONS}
    plain = binary_metrics(labels, predict_probabilities(model, spec, images, temperature=1.5)[:, 1], 0.5)
    assert report["perturbations"]["none"]["roc_auc"] == round(plain["roc_auc"], 4)
    shifted = [report["perturbations"][name]["roc_auc"] for name in PERTURBATIONS]
    assert report["stressed"]["mean_roc_auc"] == round(float(np.mean(shifted)), 4)
    assert report["stressed"]["worst_roc_auc"] == min(shifted)
