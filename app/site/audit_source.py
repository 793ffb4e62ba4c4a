"""The audit store's answers that carry a reader's confirmed label, as a scored sample (``--from-audit``).

No film is re-scored: the sample is what the service answered (P(positive) as served, by the version that
answered) and what a reader confirmed later. Only one version's answers are pooled, since each version's
probabilities are on its own scale.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import numpy as np

from app.site.scoring import ScoredSample

LABELS = {"NORMAL": 0, "PNEUMONIA": 1}
BIAS = ("This sample is biased: it holds only the answers a reader chose to confirm (feedback is voluntary), "
        "not consecutive films. Readers tend to confirm the surprising or the positive cases, so prevalence, "
        "sensitivity, specificity and calibration here may differ from the site's; use a consecutive labelled "
        "sample (cxr-site validate DATA) to calibrate.")


def audit_sample(engine: Any, since: datetime, model_name: str, version: str | None) -> tuple[ScoredSample, dict]:
    """(sample, summary): the confirmed answers of ``version`` (default: the version with the most confirmed
    answers in the window) since ``since``."""
    from app.audit.cli import records

    confirmed = [r for r in records(engine, since, None)
                 if r["outcome"] == "answer" and r["model_name"] == model_name and r["p_positive"] is not None
                 and r["confirmed_label"] in LABELS]
    per_version = Counter(r["model_version"] for r in confirmed)
    if version is None and per_version:
        version = per_version.most_common(1)[0][0]
    chosen = [r for r in confirmed if r["model_version"] == str(version)]
    shas = Counter(r["model_sha256"] for r in chosen)
    sample = ScoredSample(
        paths=[f"request {r['request_id']}" for r in chosen],
        labels=np.asarray([LABELS[r["confirmed_label"]] for r in chosen], dtype=np.int64), raw=None,
        served=np.asarray([r["p_positive"] for r in chosen], dtype=np.float64),
        hashes=[r["input_sha256"] or "" for r in chosen],
        model={"name": model_name, "version": str(version), "sha256": shas.most_common(1)[0][0] if shas else "",
               "runtime": ", ".join(sorted({r["runtime"] or "?" for r in chosen}))},
        settings={"source": "audit store"})
    summary = {"since": since.isoformat(timespec="seconds"), "confirmed_answers_by_version": dict(per_version),
               "version": version, "points_answered": dict(Counter(r["operating_point"] or "default"
                                                                   for r in chosen))}
    return sample, summary
