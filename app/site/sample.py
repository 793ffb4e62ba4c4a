"""A hospital's labelled local sample: a folder with NORMAL/ and PNEUMONIA/ subfolders, or a CSV of
``path,label`` (paths relative to the CSV's folder unless absolute; labels by class name or 0/1)."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

CLASS_DIRS = ("NORMAL", "PNEUMONIA")
_LABELS = {"normal": 0, "0": 0, "pneumonia": 1, "1": 1}
_SKIP = {".ds_store", "thumbs.db", "desktop.ini"}


class SampleError(ValueError):
    """The sample cannot be read as a labelled local sample; the message says what a correct one looks like."""


@dataclass(frozen=True)
class Item:
    path: Path
    label: int  # NORMAL = 0, PNEUMONIA = 1


def read_sample(data: str | Path) -> list[Item]:
    """The films of a folder (NORMAL/, PNEUMONIA/) or a CSV (``path,label``), sorted by path within a class."""
    data = Path(data)
    if data.is_dir():
        return _from_folder(data)
    if data.is_file() and data.suffix.lower() == ".csv":
        return _from_csv(data)
    raise SampleError(f"{data}: expected a folder with NORMAL/ and PNEUMONIA/ subfolders or a .csv file of "
                      "path,label rows")


def _from_folder(root: Path) -> list[Item]:
    found = {name: root / name for name in CLASS_DIRS if (root / name).is_dir()}
    if not found:
        raise SampleError(f"{root} is unlabelled: it has no NORMAL/ or PNEUMONIA/ subfolder (class names in "
                          "capitals, e.g. DATA/NORMAL/film1.dcm)")
    items = []
    for label, name in enumerate(CLASS_DIRS):
        if name in found:
            items += [Item(p, label) for p in sorted(found[name].rglob("*"))
                      if p.is_file() and not p.name.startswith(".") and p.name.lower() not in _SKIP]
    return items


def _from_csv(path: Path) -> list[Item]:
    items = []
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or not "".join(row).strip():
                continue
            if number == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) < 2 or row[1].strip().lower() not in _LABELS:
                raise SampleError(f"{path}:{number}: expected 'path,label' with label NORMAL, PNEUMONIA, 0 or 1, "
                                  f"got {row!r}")
            film = Path(row[0].strip())
            items.append(Item(film if film.is_absolute() else path.parent / film, _LABELS[row[1].strip().lower()]))
    return items


def sample_digest(hashes: list[str]) -> str:
    """One sha256 over the films' own sha256s (sorted, so the order of the listing does not matter): names
    the sample in the provenance without naming any file or patient."""
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()
