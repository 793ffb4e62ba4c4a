"""Verification at every load: the chosen runtime against the golden set's float32 reference probabilities.

Accepted only if the largest absolute probability difference is within TOLERANCE and no decision flips at any of
the version's operating points (the decision as the service makes it: the artifact's temperature, then its site
calibration where it has one, then each named threshold).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from app.runtimes.base import Runtime
from model_store.artifact import ModelMetadata
from model_store.golden import GoldenSet
from model_store.site_calibration import effective_operating_points, final_probabilities

# The shipped model's nearest test image is 0.0075 from the threshold; the accelerated runtimes measured here
# stay near 0.005. A runtime further off than this may flip decisions on real data.
TOLERANCE = 0.01


@dataclass(frozen=True)
class Verification:
    runtime: str
    passed: bool
    max_abs_diff: float
    decision_flips: int  # inputs whose decision differs from the reference's at one operating point or more
    inputs: int
    golden_source: str  # "artifact" (stored at export) or "synthetic" (computed at load)
    tolerance: float = TOLERANCE

    def summary(self) -> str:
        return (f"max |dp| {self.max_abs_diff:.2g} (limit {self.tolerance:g}), {self.decision_flips} decision "
                f"flips on {self.inputs} {self.golden_source} golden inputs")

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        if not np.isfinite(self.max_abs_diff):  # JSON has no infinity: non-finite outputs
            data["max_abs_diff"] = None
        return data


def decisions(probabilities: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    """(inputs, operating points) booleans: positive at each of the version's points, as the service answers."""
    positive = final_probabilities(probabilities, metadata)[:, metadata.positive_index]
    thresholds = np.array(list(effective_operating_points(metadata).values()), dtype=np.float64)
    return positive[:, None] >= thresholds[None, :]


def verify(runtime: Runtime, golden: GoldenSet, metadata: ModelMetadata,
           tolerance: float = TOLERANCE) -> Verification:
    got = runtime.predict_any(golden.inputs)
    want = golden.probabilities
    if got.shape != want.shape or not np.isfinite(got).all():
        return Verification(runtime.name, False, float("inf"), len(want), len(want), golden.source, tolerance)
    diff = float(np.abs(got - want).max())
    flips = int((decisions(got, metadata) != decisions(want, metadata)).any(axis=1).sum())
    return Verification(runtime.name, diff <= tolerance and flips == 0, diff, flips, len(want), golden.source,
                        tolerance)
