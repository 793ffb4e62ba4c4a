"""The report's figures against hand-computed ones on a small fixed sample, its warnings, drift and HTML."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from app.site import scoring
from app.site.html import render
from app.site.report import drift, figures, small_sample_warnings
from app.site.sample import Item

SCORES = np.array([0.93, 0.82, 0.62, 0.36, 0.71, 0.31, 0.22, 0.04])  # no score on a bin edge
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0])


def test_figures_of_a_small_fixed_sample_by_hand():
    out = figures(SCORES, LABELS, {"low": 0.25, "high": 0.65})
    assert out["counts"] == {"NORMAL": 4, "PNEUMONIA": 4, "total": 8, "prevalence": 0.5}
    assert out["brier"] == pytest.approx((0.07**2 + 0.18**2 + 0.38**2 + 0.64**2 + 0.71**2 + 0.31**2 + 0.22**2
                                          + 0.04**2) / 8)
    # AUC: of the 16 positive-negative pairs only (0.62, 0.71) and (0.36, 0.71) are misordered
    assert out["auc"]["value"] == pytest.approx(14 / 16)
    low, high = out["operating_points"]["low"], out["operating_points"]["high"]
    assert (low["tp"], low["fp"], low["tn"], low["fn"]) == (4, 2, 2, 0)
    assert (high["tp"], high["fp"], high["tn"], high["fn"]) == (2, 1, 3, 2)
    assert high["ppv"]["value"] == pytest.approx(2 / 3) and high["npv"]["value"] == pytest.approx(3 / 5)
    # reliability, 10 bins: 0.93 alone in the last bin (observed 1), 0.04 alone in the first (observed 0)
    assert out["reliability"][9] == {"predicted": 0.93, "observed": 1.0, "n": 1}
    assert out["reliability"][0] == {"predicted": 0.04, "observed": 0.0, "n": 1}
    # ECE, 15 bins of the winning class's confidence: alone in their bins 0.93, 0.82, 0.78 (P 0.22), 0.96 (P 0.04),
    # all right; 0.62 (right) with 0.64 (P 0.36, wrong): |0.5 - 0.63| twice; 0.71 (wrong) with 0.69 (right): 0.2
    assert out["ece"] == pytest.approx((0.07 + 0.18 + 0.22 + 0.04 + 2 * 0.13 + 2 * 0.2) / 8)


def test_small_classes_are_warned_about_by_name():
    warnings = small_sample_warnings(np.r_[np.zeros(120, int), np.ones(40, int)])
    assert len(warnings) == 1 and warnings[0].startswith("only 40 PNEUMONIA films (fewer than 100)")
    assert small_sample_warnings(np.r_[np.zeros(100, int), np.ones(100, int)]) == []


def test_drift_psi_by_hand_and_unavailable_reason():
    metrics = {"validation_distribution": {"bin_edges": [0.0, 0.5, 1.0], "counts": [50, 50]}}
    scores = np.r_[np.full(20, 0.2), np.full(60, 0.8)]  # observed shares 0.25 / 0.75 against 0.5 / 0.5
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert drift(scores, metrics)["psi"] == pytest.approx(expected, abs=1e-6)
    assert "no validation distribution" in drift(scores, {})["reason"]


def test_html_is_self_contained_and_escapes_file_names():
    block = figures(SCORES, LABELS, {"default": 0.5})
    report = {"kind": "local validation", "created_at": "now", "tool_version": "t", "source": "s",
              "model": {"name": "pneumonia", "version": "2", "sha256": "ab" * 32, "runtime": "keras"},
              "warnings": ["only 4 NORMAL films"], "as_served": block, "drift": {"reason": "none stored"},
              "refused": {"count": 1, "by_code": {"unsupported_format": 1},
                          "files": [{"path": "<b>x.txt", "label": "NORMAL", "code": "unsupported_format",
                                     "message": "m"}]}}
    page = render(report)
    assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == 2
    assert "&lt;b&gt;x.txt" in page and "<b>x.txt" not in page and "only 4 NORMAL films" in page


def test_simple_progress_bar_without_tqdm(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(scoring.sys, "stderr", err)
    items = [Item(path=None, label=0)] * 3  # type: ignore[arg-type]
    assert list(scoring._simple_bar(items)) == items
    assert err.getvalue().endswith("3/3\n") and "[" in err.getvalue()
