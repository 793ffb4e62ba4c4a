"""The report as one self-contained HTML page: tables from the report dict, the ROC curve and the reliability
diagram drawn by matplotlib and embedded as base64 PNG, so it opens offline and travels as one file."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222;line-height:1.4}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}td:first-child,th:first-child{text-align:left}.warn{background:#fff3cd;border:1px solid
#e0b000;padding:.6em 1em;margin:.6em 0}.note{color:#555;font-size:.92em}img{max-width:48%}"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _ci(interval: dict[str, Any] | None, digits: int = 3) -> str:
    if not interval or interval.get("value") is None:
        return "n/a"
    return f"{interval['value']:.{digits}f} ({interval['low']:.{digits}f}-{interval['high']:.{digits}f})"


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def plots(blocks: dict[str, dict[str, Any]]) -> str:
    """ROC curves and reliability diagrams of each block (e.g. as served, after site calibration), side by side."""
    pngs = plot_pngs(blocks)
    if not pngs:
        return '<p class="note">matplotlib is not installed: no plots (the tables hold every figure).</p>'
    return "".join(f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
                   for name, data in pngs.items())


def plot_pngs(blocks: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    """{"roc.png": ..., "reliability.png": ...}, or nothing without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    roc, ax_roc = plt.subplots(figsize=(4.6, 4.2))
    rel, ax_rel = plt.subplots(figsize=(4.6, 4.2))
    for label, block in blocks.items():
        if "roc" in block:
            auc = block.get("auc", {}).get("value")
            ax_roc.plot(block["roc"]["fpr"], block["roc"]["tpr"], label=f"{label} (AUC {auc:.3f})")
            for name, point in block.get("operating_points", {}).items():
                ax_roc.plot(1 - point["specificity"]["value"], point["sensitivity"]["value"], "o", ms=5)
                ax_roc.annotate(name, (1 - point["specificity"]["value"], point["sensitivity"]["value"]),
                                fontsize=7, xytext=(4, -9), textcoords="offset points")
        bins = [b for b in block.get("reliability", []) if b["n"]]
        ax_rel.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], "o-",
                    label=f"{label} (ECE {block['ece']:.3f})")
    ax_roc.plot([0, 1], [0, 1], ":", color="grey")
    ax_roc.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC curve")
    ax_rel.plot([0, 1], [0, 1], ":", color="grey")
    ax_rel.set(xlabel="predicted P(pneumonia)", ylabel="observed share with pneumonia", title="Reliability",
               xlim=(0, 1), ylim=(0, 1))
    for ax in (ax_roc, ax_rel):
        ax.legend(fontsize=7, loc="lower right")
    out = {"roc.png": _png(roc), "reliability.png": _png(rel)}
    plt.close(roc)
    plt.close(rel)
    return out


def _figures_table(blocks: dict[str, dict[str, Any]]) -> str:
    rows = [("ROC AUC (95% CI, DeLong)", lambda b: _ci(b.get("auc"))),
            ("ECE (15 bins)", lambda b: f"{b['ece']:.4f}"), ("Brier score", lambda b: f"{b['brier']:.4f}"),
            ("calibration intercept (slope 1; 0 = ideal)",
             lambda b: _ci(b.get("calibration", {}).get("intercept_in_the_large"))),
            ("calibration slope (1 = ideal)", lambda b: _ci(b.get("calibration", {}).get("slope")))]
    head = "".join(f"<th>{_e(name)}</th>" for name in blocks)
    body = "".join(f"<tr><td>{_e(label)}</td>" + "".join(f"<td>{_e(fn(b))}</td>" for b in blocks.values())
                   + "</tr>" for label, fn in rows)
    return f"<table><tr><th>figure</th>{head}</tr>{body}</table>"


def _points_table(blocks: dict[str, dict[str, Any]]) -> str:
    rows = []
    for label, block in blocks.items():
        for name, p in block.get("operating_points", {}).items():
            rows.append(f"<tr><td>{_e(label)}</td><td>{_e(name)}</td><td>{p['threshold']:.4f}</td>"
                        + "".join(f"<td>{_e(_ci(p[k]))}</td>" for k in ("sensitivity", "specificity", "ppv", "npv",
                                                                          "accuracy"))
                        + f"<td>{p['tp']}/{p['fp']}/{p['tn']}/{p['fn']}</td></tr>")
    return ("<table><tr><th>scale</th><th>point</th><th>threshold</th><th>sensitivity</th><th>specificity</th>"
            "<th>PPV</th><th>NPV</th><th>accuracy</th><th>TP/FP/TN/FN</th></tr>" + "".join(rows) + "</table>"
            '<p class="note">95% Wilson intervals. PPV and NPV hold at this sample\'s prevalence only.</p>')


def blocks_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    blocks = {"as served": report["as_served"]}
    if report.get("site_calibrated"):
        blocks["after site calibration"] = report["site_calibrated"]
    return blocks


def render(report: dict[str, Any]) -> str:
    """The HTML page for a report made by app.site.report (validate) or app.site.cli (calibrate)."""
    blocks = blocks_of(report)
    counts = report["as_served"]["counts"]
    model = report.get("model", {})
    parts = [f"<h1>{_e(report['kind'].capitalize())} report</h1>",
             f"<p>Model {_e(model.get('name'))} v{_e(model.get('version'))} (sha256 {_e(model.get('sha256', ''))[:16]}"
             f"..., runtime {_e(model.get('runtime'))}); source: {_e(report['source'])}; {_e(report['created_at'])}; "
             f"{_e(report['tool_version'])}.</p>"]
    parts += [f'<div class="warn">{_e(w)}</div>' for w in report.get("warnings", [])]
    parts.append(f"<h2>Sample</h2><p>{counts['NORMAL']} NORMAL, {counts['PNEUMONIA']} PNEUMONIA scored "
                 f"(prevalence {counts['prevalence']}); {report['refused']['count']} files not scored "
                 f"({_e(report['refused']['by_code']) if report['refused']['count'] else 'none'}).</p>")
    if report.get("new_version"):
        parts.append(f"<p><b>New version written: {_e(report['new_version'])}</b> (default operating point "
                     f"{_e(report.get('default_operating_point'))}).</p>")
    parts += ["<h2>Discrimination and calibration</h2>", _figures_table(blocks), plots(blocks),
              "<h2>Operating points</h2>", _points_table(blocks)]
    if report.get("site_fit"):
        fit = report["site_fit"]
        cal = fit["calibration"]
        parts.append(f"<h2>Site calibration</h2><p>logit(P site) = {cal['intercept']:.4f} + {cal['slope']:.4f} x "
                     f"logit(P) (method <b>{_e(cal['method'])}</b>; likelihood-ratio test of the slope: "
                     f"p = {fit['fit']['lr_p']:.4g}, slope kept when p &lt; {fit['lr_alpha']}).</p>"
                     f"<p>Rules: {_e(fit['rules'])}. Figures after calibration are measured on the films "
                     "they were fitted on (optimistic); the cross-validation below is not.</p>")
    if report.get("crossval"):
        parts.append("<h2>Cross-validation (out of fold)</h2><pre>"
                     f"{_e(json.dumps({k: v for k, v in report['crossval'].items() if k != 'per_fold'}, indent=1))}"
                     "</pre>")
    drift = report.get("drift", {})
    parts.append("<h2>Drift</h2><p>" + (f"PSI {drift['psi']:.3f} ({_e(drift['band'])}) against the artifact's "
                 "validation distribution of P(pneumonia)" if drift.get("psi") is not None
                 else f"PSI unavailable: {_e(drift.get('reason'))}") + ".</p>")
    if report.get("bias"):
        parts.append(f'<div class="warn">{_e(report["bias"])}</div>')
    if report["refused"]["files"]:
        parts.append("<h2>Files not scored</h2><table><tr><th>file</th><th>label</th><th>code</th><th>why</th></tr>"
                     + "".join(f"<tr><td>{_e(f['path'])}</td><td>{_e(f['label'])}</td><td>{_e(f['code'])}</td>"
                               f"<td>{_e(f['message'])}</td></tr>" for f in report["refused"]["files"])
                     + "</table>")
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_e(report['kind'])} report</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>")
