"""A temporary model store holding the shipped model and a site-calibrated copy of it (``copy_with_metadata``:
the same weights, a site calibration and named operating points), as ``cxr-site calibrate`` writes one."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from model_store.artifact import copy_with_metadata, file_sha256, read_metadata


def make_site_store(root: Path, base: Path, site: dict[str, Any], points: dict[str, float],
                    default: str = "screening") -> Path:
    """``root``/pneumonia/<base version> (a copy of ``base``) and the next version, site-calibrated from it."""
    meta = read_metadata(base)
    version = int(base.parent.name)  # <store>/<name>/<version>/model.h5
    (root / meta.name / str(version)).mkdir(parents=True)
    shutil.copyfile(base, root / meta.name / str(version) / "model.h5")
    derived = dataclasses.replace(
        meta, version=str(version + 1), site_calibration=dict(site), operating_points=dict(points),
        default_operating_point=default, decision_threshold=points[default],
        provenance={"base_version": version, "base_sha256": file_sha256(base), "films": {"NORMAL": 5}})
    copy_with_metadata(base, derived, root / meta.name / str(version + 1) / "model.h5")
    return root
