"""Patient keys from Kermany file names, and a validation split carved by patient.

The Kermany training split holds several films of many children; an image-level split puts the same child
in train and validation and makes validation optimistic. Keys (case-insensitive):

- ``personN_bacteria_M.jpeg`` / ``personN_virus_M[_K].jpeg`` -> ``person:N``
- ``IM-NNNN-MMMM.jpeg`` -> ``IM:NNNN``;  ``NORMAL2-IM-NNNN-MMMM.jpeg`` -> ``NORMAL2-IM:NNNN``
  (the prefix is part of the key: the two series number their patients independently)
- anything else -> ``file:<name>``, i.e. its own group (never merged with another file by accident)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

_PERSON = re.compile(r"^person(\d+)_(?:bacteria|virus)_", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL2-)?IM)-(\d+)-\d+", re.IGNORECASE)


def patient_key(name: str) -> str:
    """The patient a Kermany file belongs to (see the module docstring); unknown names are their own group."""
    base = Path(name).name
    if match := _PERSON.match(base):
        return f"person:{int(match.group(1))}"
    if match := _NORMAL.match(base):
        return f"{match.group(1).upper()}:{int(match.group(2))}"
    return f"file:{base}"


def patient_groups(paths: list[Path] | None, count: int) -> np.ndarray:
    """One integer group per image: by patient key when file names are known, else one group per image."""
    if paths is None:
        return np.arange(count)
    keys = [patient_key(str(p)) for p in paths]
    _, groups = np.unique(np.asarray(keys), return_inverse=True)
    return groups.astype(np.int64)


def grouped_split(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(keep, held_out) index arrays: about ``fraction`` of the images held out, whole patients only,
    class proportions kept (scikit-learn's StratifiedGroupKFold, first fold), shuffled with ``seed``."""
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0.0 < fraction < 0.5:
        raise ValueError(f"fraction must be in (0, 0.5), e.g. 0.1, got {fraction!r}")
    folds = StratifiedGroupKFold(n_splits=max(2, round(1 / fraction)), shuffle=True, random_state=seed)
    keep, held = next(folds.split(np.zeros(len(labels)), labels, groups))
    return np.sort(keep), np.sort(held)
