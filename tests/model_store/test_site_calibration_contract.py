"""The site-calibration contract an artifact carries: validation of the fields and the served probabilities."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from model_store.artifact import ArtifactError, ModelMetadata
from model_store.preprocessing import PreprocessingSpec
from model_store.site_calibration import (
    DEFAULT_POINT,
    SiteCalibration,
    default_point_name,
    effective_operating_points,
    final_probabilities,
)


def metadata(**changes: object) -> ModelMetadata:
    base = ModelMetadata(name="pneumonia", version="3", class_names=["NORMAL", "PNEUMONIA"],
                         preprocessing=PreprocessingSpec(), decision_threshold=0.4, temperature=1.5)
    return dataclasses.replace(base, **changes)


def test_an_artifact_without_points_has_its_validation_threshold_as_the_default_point() -> None:
    meta = metadata()
    assert effective_operating_points(meta) == {DEFAULT_POINT: 0.4}
    assert default_point_name(meta) == DEFAULT_POINT


def test_named_points_and_their_default_round_trip_through_the_metadata_document() -> None:
    meta = metadata(operating_points={"screening": 0.2, "balanced": 0.5}, default_operating_point="balanced",
                    decision_threshold=0.5, site_calibration={"intercept": -1.2, "slope": 0.7, "method": "logistic"})
    again = ModelMetadata.from_dict(meta.to_dict())
    assert effective_operating_points(again) == {"screening": 0.2, "balanced": 0.5}
    assert default_point_name(again) == "balanced"
    assert again.site_calibration == {"intercept": -1.2, "slope": 0.7, "method": "logistic"}


@pytest.mark.parametrize("changes", [
    {"operating_points": {"Screening!": 0.2}},
    {"operating_points": {"screening": 1.2}},
    {"operating_points": {"screening": 0.2}, "default_operating_point": "balanced"},
    {"operating_points": {"screening": 0.2}, "default_operating_point": "screening", "decision_threshold": 0.5},
    {"site_calibration": {"intercept": 0.0, "slope": -1.0, "method": "logistic"}},
    {"site_calibration": {"intercept": 0.1, "slope": 0.5, "method": "intercept"}},
    {"site_calibration": {"intercept": float("nan"), "slope": 1.0, "method": "intercept"}},
    {"site_calibration": {"slope": 1.0, "method": "intercept"}},
])
def test_inconsistent_site_fields_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ArtifactError):
        metadata(**changes)


def test_served_probabilities_apply_temperature_then_the_site_calibration_and_keep_the_ranking() -> None:
    raw = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.01, 0.99]], dtype=np.float32)
    site = {"intercept": -1.0, "slope": 0.6, "method": "logistic"}
    plain = final_probabilities(raw, metadata())
    served = final_probabilities(raw, metadata(site_calibration=site))
    np.testing.assert_allclose(served.sum(axis=1), 1.0, rtol=1e-6)
    # by hand: logit after T = 1.5, then intercept + slope * logit
    logit_t = np.log(plain[:, 1] / plain[:, 0])
    expected = 1 / (1 + np.exp(-(-1.0 + 0.6 * logit_t)))
    np.testing.assert_allclose(served[:, 1], expected, rtol=1e-5)
    assert list(np.argsort(served[:, 1])) == list(np.argsort(raw[:, 1]))
    assert served[1, 1] < 0.5  # a negative intercept lowers an even call


def test_intercept_only_calibration_shifts_every_logit_by_the_same_amount() -> None:
    cal = SiteCalibration(intercept=0.5, slope=1.0, method="intercept")
    p = np.array([0.1, 0.5, 0.9])
    shifted = cal.apply(p)
    np.testing.assert_allclose(np.log(shifted / (1 - shifted)) - np.log(p / (1 - p)), 0.5, rtol=1e-9)


def test_a_derived_version_copies_the_weights_and_carries_the_new_metadata(tmp_path) -> None:
    from model_store.artifact import copy_with_metadata, file_sha256, inspect_artifact
    from model_store.registry import ModelRegistry

    source = ModelRegistry().resolve("pneumonia", 2)[1]
    base, _ = inspect_artifact(source)
    derived = dataclasses.replace(base, version="3", operating_points={"screening": 0.25},
                                  default_operating_point="screening", decision_threshold=0.25,
                                  provenance={"base_version": base.version, "base_sha256": file_sha256(source)})
    target = tmp_path / "pneumonia" / "3" / "model.h5"
    digest = copy_with_metadata(source, derived, target)
    assert digest == file_sha256(target) != file_sha256(source)
    again, _ = inspect_artifact(target)
    assert again == derived
    with pytest.raises(ArtifactError, match="immutable"):
        copy_with_metadata(source, derived, target)
    assert list(target.parent.iterdir()) == [target]  # no temporary file left behind
