"""Model versions on disk: ``<store>/<name>/<version>/model.h5`` (versions are positive integers)."""

from __future__ import annotations

import os
from pathlib import Path

MODEL_FILENAME = "model.h5"
DEFAULT_STORE = Path(__file__).resolve().parent


class ModelNotFoundError(LookupError):
    """No such model or version in the store."""


class ModelRegistry:
    def __init__(self, root: str | os.PathLike[str] = DEFAULT_STORE) -> None:
        self.root = Path(root)

    def models(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        """Versions of ``name`` that have a model file, ascending."""
        folder = self.root / name
        if not folder.is_dir():
            return []
        found = [int(p.name) for p in folder.iterdir()
                 if p.is_dir() and p.name.isdigit() and int(p.name) > 0 and (p / MODEL_FILENAME).is_file()]
        return sorted(found)

    def latest(self, name: str) -> int:
        versions = self.versions(name)
        if not versions:
            raise ModelNotFoundError(f"no versions of model {name!r} under {self.root}")
        return versions[-1]

    def resolve(self, name: str, version: int | str | None = None) -> tuple[int, Path]:
        """(version, path) for a version number, or the latest for None/"latest"."""
        if version is None or version == "latest":
            number = self.latest(name)
        else:
            try:
                number = int(version)
            except (TypeError, ValueError) as exc:
                raise ModelNotFoundError(f"version must be a positive integer or 'latest', got {version!r}") from exc
            if number not in self.versions(name):
                raise ModelNotFoundError(f"model {name!r} has no version {number} under {self.root} "
                                         f"(available: {self.versions(name)})")
        return number, self.root / name / str(number) / MODEL_FILENAME

    def path_for(self, name: str, version: int) -> Path:
        """Where a new version would be written (does not create it)."""
        return self.root / name / str(int(version)) / MODEL_FILENAME

    def next_version(self, name: str) -> int:
        versions = self.versions(name)
        return versions[-1] + 1 if versions else 1
