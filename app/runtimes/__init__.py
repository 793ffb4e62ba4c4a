"""Model runtimes behind one interface, and the choice among them at every load.

``CXR_RUNTIME=auto`` tries the accelerated runtimes fastest first (measured on the service's CPU, see
docs/operations.md) and keeps the first that is available here and passes verification against the golden
set; ``keras`` is the float32 reference (no acceleration); any other name forces that runtime. Whatever fails
(conversion error, verification) falls back to the reference with ONE warning line saying why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.runtimes.base import Runtime, RuntimeUnavailable
from app.runtimes.keras_runtime import KerasBf16Runtime, KerasFp16Runtime, KerasRuntime
from app.runtimes.lite import TFLiteInt8Runtime
from app.runtimes.verify import TOLERANCE, Verification, verify
from model_store.artifact import LoadedArtifact
from model_store.golden import GoldenSet

log = logging.getLogger("cxr.runtimes")

RUNTIMES: dict[str, type[Runtime]] = {cls.name: cls for cls in (KerasRuntime, KerasBf16Runtime, TFLiteInt8Runtime,
                                                                 KerasFp16Runtime)}
# Fastest first, as measured in-process on the 2-core AVX512_BF16/VNNI machine (images/s at batch 1 / 16):
# tflite-int8 ~1000 / 750, keras-bf16 ~365 / 565, keras 254 / 306 (benchmarks/README.md).
AUTO_ORDER = ["tflite-int8", "keras-bf16"]
# On a GPU: float16 on tensor cores, verified like any other (not measured here: benchmarks/gpu_check.sh does)
AUTO_ORDER_GPU = ["keras-fp16"]
RUNTIME_CHOICES = ("auto", *RUNTIMES)

__all__ = ["AUTO_ORDER", "AUTO_ORDER_GPU", "RUNTIMES", "RUNTIME_CHOICES", "TOLERANCE", "Runtime",
           "RuntimeUnavailable", "Selection", "Verification", "select_runtime", "verify"]


@dataclass
class Selection:
    runtime: Runtime
    verification: Verification | None  # None: the reference, with no stored golden set to check it against
    requested: str
    fallback: str | None = None  # why the requested runtime is not the one serving, if it is not

    def describe(self) -> dict[str, object]:
        return {"name": self.runtime.name, "requested": self.requested, "fallback": self.fallback,
                "verification": self.verification.to_dict() if self.verification else None}


def candidates(requested: str, gpu: bool) -> list[str]:
    if requested == "keras":
        return []
    if requested == "auto":
        return list(AUTO_ORDER_GPU if gpu else AUTO_ORDER)
    if requested not in RUNTIMES:
        raise ValueError(f"unknown runtime {requested!r}; expected one of {', '.join(RUNTIME_CHOICES)}")
    return [requested]


def select_runtime(requested: str, artifact: LoadedArtifact, buckets: list[int], golden: GoldenSet | None,
                   gpu: bool = False) -> Selection:
    """Load and verify the requested runtime (or, for auto, the fastest that passes); else the reference."""
    problems: list[str] = []
    for name in candidates(requested, gpu):
        cls = RUNTIMES[name]
        reason = cls.unavailable_reason()
        if reason is not None:
            if requested != "auto":  # auto skipping what this CPU cannot do is expected, not a problem
                problems.append(f"{name} unavailable: {reason}")
            continue
        try:
            runtime = cls.load(artifact, buckets)
        except RuntimeUnavailable as exc:
            if requested != "auto":
                problems.append(f"{name} unavailable: {exc}")
            continue
        except Exception as exc:  # a converter bug must not stop the service: the reference still works
            problems.append(f"{name} failed to load ({type(exc).__name__}: {exc})")
            continue
        if golden is None:
            problems.append(f"{name} cannot be verified (no golden set)")
            continue
        check = verify(runtime, golden, artifact.metadata)
        if check.passed:
            if problems:
                log.warning("runtime: serving with %s; skipped: %s", name, "; ".join(problems))
            return Selection(runtime, check, requested, fallback="; ".join(problems) or None)
        problems.append(f"{name} failed verification: {check.summary()}")
    reference = KerasRuntime.load(artifact, buckets)
    check = verify(reference, golden, artifact.metadata) if golden is not None else None
    if check is not None and not check.passed:  # the file disagrees with its own export-time outputs
        problems.append(f"even the reference disagrees with the stored golden set: {check.summary()}")
    if problems:
        log.warning("runtime fallback to keras (float32 reference) for %s v%s: %s", artifact.metadata.name,
                    artifact.metadata.version, "; ".join(problems))
    return Selection(reference, check, requested, fallback="; ".join(problems) or None)
