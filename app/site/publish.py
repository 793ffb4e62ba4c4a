"""Write a site-calibrated version into a model store: a new, immutable version whose weights are the base's,
byte for byte (checked), with the calibration, the operating points, the provenance and the report inside."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import h5py

from model_store.artifact import ArtifactError, copy_with_metadata, file_sha256
from model_store.registry import ModelRegistry

WEIGHT_GROUPS = ("model_weights",)


def weights_sha256(path: str | Path) -> str:
    """One sha256 over every weight array of an artifact (names and bytes, in name order): equal for a site
    version and its base, whatever their metadata."""
    digest = hashlib.sha256()
    with h5py.File(path, "r") as handle:
        names: list[str] = []
        for group in WEIGHT_GROUPS:
            if group in handle:
                handle[group].visit(lambda name, g=group: names.append(f"{g}/{name}"))
        for name in sorted(names):
            obj = handle[name]
            if isinstance(obj, h5py.Dataset):
                digest.update(name.encode())
                digest.update(obj[()].tobytes())
    return digest.hexdigest()


def next_version(name: str, *stores: Path) -> int:
    """A number no store involved has used: a site version never shares a number with its base's store."""
    return max(ModelRegistry(store).next_version(name) for store in stores)


def write_version(base_path: Path, base_sha256: str, metadata: Any, *, store: Path, version: int,
                  reports: dict[str, str | bytes]) -> tuple[Path, str]:
    """Copy the base with ``metadata`` to ``<store>/<name>/<version>/model.h5``, check the weights are the
    base's, then write ``reports`` (file name -> text) beside it. Returns (path, new sha256)."""
    if file_sha256(base_path) != base_sha256:
        raise ArtifactError(f"{base_path} changed since it was scored (sha256 differs): nothing written")
    target = ModelRegistry(store).path_for(metadata.name, version)
    if target.parent.exists() and any(target.parent.iterdir()):
        raise ArtifactError(f"{target.parent} exists already: model versions are immutable, nothing written")
    sha256 = copy_with_metadata(base_path, metadata, target)
    if weights_sha256(target) != weights_sha256(base_path):
        target.unlink()
        raise ArtifactError("the written version's weights differ from the base's: removed, nothing written")
    for name, content in reports.items():
        file = target.parent / name
        if isinstance(content, bytes):
            file.write_bytes(content)
        else:
            file.write_text(content, encoding="utf-8")
    return target, sha256


def dump(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=1, sort_keys=False, default=float) + "\n"
