"""``cxr-site``: local validation, site calibration and its cross-validated estimate, for one hospital.

    cxr-site validate DATA [--model-version N] [--out DIR]         a report on the version as served
    cxr-site validate --from-audit --since 30d                       the same from confirmed answers
    cxr-site calibrate DATA [--sensitivity 0.95] [--site NAME] [--store PATH] [--default screening]
    cxr-site crossval DATA [--folds 5]

DATA: a folder with NORMAL/ and PNEUMONIA/ subfolders, or a CSV of ``path,label``. The model store read is
``CXR_MODEL_STORE`` (or ``--base-store``); every other ``CXR_*`` setting applies as in the service (runtime,
gate). ``calibrate`` prints the new version number as its last line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.site.publish import dump

MIN_TO_FIT = 30  # below this per class a logistic fit and a sensitivity threshold are not worth writing


class Refused(Exception):
    """The sample cannot support what was asked; nothing was written. The message says why."""


def tool_version() -> str:
    from training import code_version

    return f"cxr-site {code_version()}"


def _out_dir(given: str | None, command: str) -> Path:
    out = Path(given) if given else Path("runs") / "site" / f"{command}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_reports(report: dict[str, Any], folder: Path, stem: str = "report") -> Path:
    from app.site.html import render

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(dump(report), encoding="utf-8")
    page = folder / f"{stem}.html"
    page.write_text(render(report), encoding="utf-8")
    return page


def _score(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(scorer, scored sample, items) for DATA with the version asked for."""
    from app.site.sample import read_sample
    from app.site.scoring import Scorer

    items = read_sample(args.data)
    if not items:
        raise Refused(f"{args.data} holds no films")
    scorer = Scorer(args.model_version, args.base_store)
    try:
        scored = scorer.score(items, show_progress=None if not args.no_progress else False)
    finally:
        scorer.close()
    return scorer, scored, items


def _check_fit(scored: Any) -> None:
    if not len(scored.labels):
        raise Refused(f"every film was refused or unreadable ({len(scored.refused)} files; see the report's list): "
                      "nothing to fit")
    counts = {name: int((scored.labels == k).sum()) for k, name in enumerate(("NORMAL", "PNEUMONIA"))}
    short = [f"{n} {name}" for name, n in counts.items() if n < MIN_TO_FIT]
    if short:
        raise Refused(f"the sample is too small to fit: {', '.join(short)} film(s) scored; at least {MIN_TO_FIT} of "
                      "each class are needed (about 100 of each for usable figures)")


def cmd_validate(args: argparse.Namespace) -> int:
    from app.site.report import validation_report

    if args.from_audit:
        return _validate_from_audit(args)
    if args.data is None:
        raise Refused("give DATA (a folder or CSV), or --from-audit")
    scorer, scored, _ = _score(args)
    report = validation_report(scored, scorer.metadata, source=str(args.data), tool_version=tool_version(),
                               target_sensitivity=args.sensitivity)
    page = write_reports(report, _out_dir(args.out, "validate"))
    print(_summary(report))
    print(f"report: {page}")
    return 0


def _validate_from_audit(args: argparse.Namespace) -> int:
    from app.audit.cli import engine_for
    from app.settings import Settings
    from app.site.audit_source import BIAS, audit_sample
    from app.site.report import counts, drift, figures, refusals_summary, small_sample_warnings
    from model_store.artifact import read_metadata
    from model_store.registry import ModelRegistry
    from model_store.site_calibration import effective_operating_points

    settings = Settings.load(**({"model_store": Path(args.base_store)} if args.base_store else {}))
    sample, summary = audit_sample(engine_for(args.audit_url), args.since, settings.model_name,
                                   args.model_version)
    if not len(sample.labels):
        raise Refused(f"no answers with a confirmed label since {summary['since']}: nothing to report")
    _, path = ModelRegistry(settings.model_store).resolve(settings.model_name, summary["version"])
    metadata = read_metadata(path)
    report = {"kind": "local validation (audit)", "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "tool_version": tool_version(), "source": f"audit store, confirmed answers since {summary['since']}",
              "model": sample.model, "audit": summary, "bias": BIAS, "warnings": [BIAS,
                                                                                   *small_sample_warnings(sample.labels)],
              "refused": refusals_summary([]), "drift": drift(sample.served, metadata.metrics),
              "as_served": figures(sample.served, sample.labels, effective_operating_points(metadata))}
    report["as_served"]["counts"] = counts(sample.labels)
    page = write_reports(report, _out_dir(args.out, "validate-audit"))
    print(_summary(report))
    print(f"report: {page}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from app.site.crossval import crossval
    from app.site.html import blocks_of, plot_pngs, render
    from app.site.publish import next_version, weights_sha256, write_version
    from app.site.recalibrate import fit_site, site_metadata
    from app.site.report import validation_report
    from training import code_version

    scorer, scored, _ = _score(args)
    _check_fit(scored)
    base, artifact = scorer.metadata, scorer.model.artifact
    report = validation_report(scored, base, source=str(args.data), tool_version=tool_version(),
                               target_sensitivity=args.sensitivity)
    report["kind"] = "site calibration"
    if args.folds:
        report["crossval"] = crossval(scored.raw, scored.labels, scored.paths, base, shipped=scored.served,
                                      shipped_threshold=base.decision_threshold, folds=args.folds,
                                      target_sensitivity=args.sensitivity)
    site = fit_site(scored.raw, scored.labels, base, args.sensitivity)
    base_store = Path(scorer.settings.model_store)
    store = Path(args.store) if args.store else base_store
    version = next_version(base.name, store, base_store)
    provenance = _provenance(args, scorer, scored, site, weights_sha256(artifact.path))
    metadata = site_metadata(base, site, args.default, version, provenance=provenance,
                             metrics=_site_metrics(args.site, base, report, scored, site),
                             created_at=provenance["date"], code_version=code_version())
    report.update(new_version=version, default_operating_point=args.default, provenance=provenance)
    path, sha256 = write_version(artifact.path, artifact.sha256, metadata, store=store, version=version,
                                 reports={"site_report.json": dump(report), "site_report.html": render(report),
                                          **plot_pngs(blocks_of(report))})
    if args.out:
        write_reports(report, Path(args.out))
    print(_summary(report))
    print(f"wrote {path} (sha256 {sha256}); report: {path.parent / 'site_report.html'}")
    print(f"activate with CXR_MODEL_STORE={store} CXR_MODEL_VERSION={version}; roll back to version "
          f"{scorer.model.version} in {base_store}")
    print(version)
    return 0


def _provenance(args: argparse.Namespace, scorer: Any, scored: Any, site: Any, weights: str) -> dict[str, Any]:
    from app.site.sample import sample_digest

    return {
        "kind": "site calibration", "site": args.site,
        "base": {"name": scorer.metadata.name, "version": str(scorer.model.version),
                 "sha256": scorer.model.artifact.sha256, "weights_sha256": weights},
        "sample": {"NORMAL": int((scored.labels == 0).sum()), "PNEUMONIA": int((scored.labels == 1).sum()),
                   "refused": len(scored.refused), "sha256_of_file_sha256s": sample_digest(scored.hashes)},
        "method": f"logistic recalibration of the logit ({site.calibration.method}); likelihood-ratio test of the "
                  f"slope p = {site.fit.lr_p:.4g}",
        "runtime": scored.model.get("runtime"), "target_sensitivity": args.sensitivity,
        "rules": site.describe()["rules"], "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": tool_version(),
    }


def _site_metrics(name: str, base: Any, report: dict[str, Any], scored: Any, site: Any) -> dict[str, Any]:
    """The base's metrics, plus the site figures of each point (for /models), and the site sample's served
    distribution as the reference of the monitoring's PSI (the base's validation films are not this site)."""
    from app.site.recalibrate import with_site
    from app.site.report import observed_distribution
    from model_store.site_calibration import final_probabilities

    after = report["site_calibrated"]
    served = final_probabilities(scored.raw, with_site(base, site.calibration))[:, base.positive_index]
    edges = [i / 10 for i in range(11)]
    return {**base.metrics,
            "validation_distribution": {"bin_edges": edges, "counts": observed_distribution(served, edges),
                                        "source": f"site sample {name}, after site calibration"},
            "site": {"name": name, "ece": after["ece"], "brier": after["brier"], "auc": after.get("auc"),
                     "calibration_fit": report["site_fit"]["fit"], "operating_points": after["operating_points"],
                     "crossval": {k: v for k, v in report.get("crossval", {}).items() if k != "per_fold"}}}


def cmd_crossval(args: argparse.Namespace) -> int:
    from app.site.crossval import crossval

    scorer, scored, _ = _score(args)
    _check_fit(scored)
    base = scorer.metadata
    result = crossval(scored.raw, scored.labels, scored.paths, base, shipped=scored.served,
                      shipped_threshold=base.decision_threshold, folds=args.folds,
                      target_sensitivity=args.sensitivity)
    result.update(model=scored.model, source=str(args.data), tool_version=tool_version(),
                  counts={"NORMAL": int((scored.labels == 0).sum()), "PNEUMONIA": int((scored.labels == 1).sum())},
                  refused=len(scored.refused))
    out = _out_dir(args.out, "crossval")
    (out / "crossval.json").write_text(dump(result), encoding="utf-8")
    shipped, site = result["as_shipped"], result["site_calibrated_out_of_fold"]
    print(f"{args.folds}-fold out-of-fold, grouped by patient ({result['patients']} patients):")
    print(f"  as shipped:      ECE {shipped['ece']:.4f}  Brier {shipped['brier']:.4f}  sensitivity "
          f"{shipped['sensitivity']:.3f}  specificity {shipped['specificity']:.3f}  accuracy {shipped['accuracy']:.3f}"
          f"  (threshold {shipped['threshold']:.4f})")
    print(f"  site-calibrated: ECE {site['ece']:.4f}  Brier {site['brier']:.4f}  screening sensitivity "
          f"{site['screening']['sensitivity']:.3f} specificity {site['screening']['specificity']:.3f}; balanced "
          f"accuracy {site['balanced']['accuracy']:.3f}")
    print(f"report: {out / 'crossval.json'}")
    return 0


def _summary(report: dict[str, Any]) -> str:
    lines = [*(f"WARNING: {w}" for w in report.get("warnings", []))]
    for label, key in (("as served", "as_served"), ("site-calibrated (in sample)", "site_calibrated")):
        block = report.get(key)
        if not block:
            continue
        auc = block.get("auc", {})
        lines.append(f"{label}: n={block['counts']['total']} AUC {auc.get('value', float('nan')):.4f} "
                     f"({auc.get('low', float('nan')):.4f}-{auc.get('high', float('nan')):.4f}) ECE {block['ece']:.4f} "
                     f"Brier {block['brier']:.4f}")
        for name, p in block["operating_points"].items():
            lines.append(f"  {name} (P >= {p['threshold']:.4f}): sensitivity {p['sensitivity']['value']:.3f} "
                         f"({p['sensitivity']['low']:.3f}-{p['sensitivity']['high']:.3f}) specificity "
                         f"{p['specificity']['value']:.3f} ({p['specificity']['low']:.3f}-"
                         f"{p['specificity']['high']:.3f}) accuracy {p['accuracy']['value']:.3f}")
    if report["refused"]["count"]:
        lines.append(f"not scored: {report['refused']['count']} files {report['refused']['by_code']}")
    return "\n".join(lines)


def _since(text: str) -> datetime:
    from app.audit.cli import parse_when  # raises argparse.ArgumentTypeError with the forms it accepts

    return parse_when(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-site", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, data_required: bool = True) -> None:
        p.add_argument("data", nargs=None if data_required else "?", type=Path,
                       help="folder with NORMAL/ and PNEUMONIA/, or a CSV of path,label")
        p.add_argument("--model-version", help="version to score with, e.g. 2 (default: CXR_MODEL_VERSION, else "
                                               "the latest)")
        p.add_argument("--base-store", help="model store to read (default: CXR_MODEL_STORE, else the shipped one)")
        p.add_argument("--sensitivity", type=float, default=0.95, help="screening point's target sensitivity on "
                                                                       "the site sample, in (0, 1]; default 0.95")
        p.add_argument("--out", help="folder for the report (default: runs/site/<command>-<time>)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar (none off a terminal anyway)")

    val = sub.add_parser("validate", help="local validation report of the version as served")
    common(val, data_required=False)
    val.add_argument("--from-audit", action="store_true", help="use the audit store's confirmed answers, not DATA")
    val.add_argument("--since", default="30d", type=_since,
                     help="with --from-audit: e.g. 30d, 2w, 2026-11-01 (default 30d)")
    val.add_argument("--audit-url", help="with --from-audit: store URL (default CXR_AUDIT_URL / CXR_AUDIT_PATH)")
    val.set_defaults(run=cmd_validate)
    cal = sub.add_parser("calibrate", help="fit the site calibration and operating points; write a new version")
    common(cal)
    cal.add_argument("--site", default="site", help="the site's name, recorded in the provenance (e.g. st-mary)")
    cal.add_argument("--store", help="model store to write the new version into (default: CXR_MODEL_STORE)")
    cal.add_argument("--default", default="screening", choices=("screening", "balanced"),
                     help="operating point the new version answers with by default (default screening)")
    cal.add_argument("--folds", type=int, default=5, help="cross-validation folds in the report (0: none)")
    cal.set_defaults(run=cmd_calibrate)
    cv = sub.add_parser("crossval", help="out-of-fold estimate of what a site calibration buys")
    common(cv)
    cv.add_argument("--folds", type=int, default=5, help="folds grouped by patient (default 5)")
    cv.set_defaults(run=cmd_crossval)
    return parser


def main(argv: list[str] | None = None) -> int:
    from app.settings import SettingsError
    from app.site.sample import SampleError
    from model_store.artifact import ArtifactError
    from model_store.registry import ModelNotFoundError

    args = build_parser().parse_args(argv)
    if not 0.0 < args.sensitivity <= 1.0:
        print(f"cxr-site: --sensitivity must be in (0, 1], e.g. 0.95, got {args.sensitivity}", file=sys.stderr)
        return 2
    if getattr(args, "folds", 0) == 1 or getattr(args, "folds", 0) < 0:
        print("cxr-site: --folds must be 0 (none) or at least 2", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except (Refused, SampleError, SettingsError, ArtifactError, ModelNotFoundError) as exc:
        print(f"cxr-site: {exc}; nothing written" if args.command == "calibrate" else f"cxr-site: {exc}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
