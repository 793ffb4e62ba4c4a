"""Verification at every load: the chosen runtime against the golden set's float32 reference probabilities.

Accepted only if the largest absolute probability difference is within TOLERANCE and no decision flips (the
decision as the service makes it: calibrated with the artifact's temperature, then the stored threshold).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from app.runtimes.base import Runtime
from model_store.artifact import ModelMetadata
from model_store.golden import GoldenSet, calibrated

# The shipped model's nearest test image is 0.0075 from the threshold; the accelerated runtimes measured here
# stay near 0.005. A runtime further off than this may flip decisions on real data.
TOLERANCE = 0.01


@dataclass(frozen=True)
class Verification:
    runtime: str
    passed: bool
    max_abs_diff: float
    decision_flips: int
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
    scaled = calibrated(probabilities, float(getattr(metadata, "temperature", 1.0)))
    return scaled[:, metadata.positive_index] >= metadata.decision_threshold


def verify(runtime: Runtime, golden: GoldenSet, metadata: ModelMetadata,
           tolerance: float = TOLERANCE) -> Verification:
    got = runtime.predict_any(golden.inputs)
    want = golden.probabilities
    if got.shape != want.shape or not np.isfinite(got).all():
        return Verification(runtime.name, False, float("inf"), len(want), len(want), golden.source, tolerance)
    diff = float(np.abs(got - want).max())
    flips = int((decisions(got, metadata) != decisions(want, metadata)).sum())
    return Verification(runtime.name, diff <= tolerance and flips == 0, diff, flips, len(want), golden.source,
                        tolerance)
