"""The shipped worked example, model_store/sites/kermany-test-half/pneumonia/3: v2's weights, its calibration
and points, its provenance and report, and the default store left serving v2."""

from __future__ import annotations

import json

from app.site.publish import weights_sha256
from model_store.artifact import file_sha256, read_metadata
from model_store.registry import DEFAULT_STORE, ModelRegistry

SITE_STORE = DEFAULT_STORE / "sites" / "kermany-test-half"


def test_shipped_site_version_is_v2_recalibrated_with_its_provenance_and_report():
    number, path = ModelRegistry(SITE_STORE).resolve("pneumonia")
    base = DEFAULT_STORE / "pneumonia" / "2" / "model.h5"
    meta = read_metadata(path)
    assert number == 3 and meta.version == "3"
    assert meta.default_operating_point == "screening" and meta.decision_threshold == meta.operating_points["screening"]
    assert meta.site_calibration["method"] == "logistic" and 0 < meta.site_calibration["slope"] < 1
    assert meta.provenance["base"]["version"] == "2" and meta.provenance["base"]["sha256"] == file_sha256(base)
    assert meta.provenance["base"]["weights_sha256"] == weights_sha256(base) == weights_sha256(path)
    assert meta.provenance["sample"]["NORMAL"] == 117 and meta.provenance["sample"]["PNEUMONIA"] == 195
    assert meta.metrics["validation_distribution"]["source"].startswith("site sample kermany-test-half")
    report = json.loads((path.parent / "site_report.json").read_text())
    assert report["new_version"] == 3 and report["site_fit"]["calibration"] == meta.site_calibration
    screening = report["site_calibrated"]["operating_points"]["screening"]
    assert screening["sensitivity"]["value"] >= report["site_fit"]["target_sensitivity"]


def test_default_store_still_serves_v2_and_does_not_list_sites():
    registry = ModelRegistry(DEFAULT_STORE)
    assert registry.latest("pneumonia") == 2 and "sites" not in registry.models()
