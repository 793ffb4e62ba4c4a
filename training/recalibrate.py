"""Calibrate an existing artifact without retraining: fit the temperature on the validation split it was
trained with (rebuilt from its stored config: split kind, fraction, seed), re-choose the threshold on the
calibrated scale with its stored rule, and write the result as a new version (same weights).

    python -m training.recalibrate --model model_store/pneumonia/1/model.h5 --data ../shared/data/chest_xray_224
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from model_store.preprocessing import PreprocessingSpec
from model_store.registry import DEFAULT_STORE
from training.calibration_report import split_counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.recalibrate", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/recalibrated", help="run folder: report and plots")
    p.add_argument("--cache")
    p.add_argument("--store", default=str(DEFAULT_STORE))
    p.add_argument("--version", type=int, help="version to write (default: next free)")
    args = p.parse_args(argv)

    from model_store.artifact import load_artifact
    from training.evaluate import write_report
    from training.finalize import calibrate_and_report, export, target_from_rule

    loaded = load_artifact(args.model)
    meta = loaded.metadata
    splits, sets = validation_and_test(meta, args.data, args.cache)
    rule = meta.metrics.get("threshold_rule", "")
    out = Path(args.out)
    calibrated = calibrate_and_report(loaded.model, meta.preprocessing, sets, out,
                                      target_sensitivity=target_from_rule(rule))
    source = {"path": str(args.model), "sha256": loaded.sha256}
    report = {"source": source, "threshold_rule": calibrated.rule, "temperature": calibrated.temperature,
              "metrics": calibrated.results, "calibration": calibrated.calibration,
              "splits": split_counts(splits, sets.get("test")), "plots": calibrated.plots}
    write_report(out, report)
    print(json.dumps({"temperature": calibrated.temperature, "calibration": calibrated.calibration,
                      **{k: {m: v for m, v in r.items() if m != "confusion_matrix"}
                         for k, r in calibrated.results.items()}}, indent=1))
    meta.dataset["splits"] = report["splits"]
    target, sha = export(loaded.model, meta, calibrated, splits.val, store=args.store, version=args.version,
                         out=out, extra_metrics={"recalibrated_from": source})
    print(f"exported {target} (sha256 {sha})")
    return 0


def validation_and_test(meta: Any, data: str, cache: str | None) -> tuple[Any, dict[str, Any]]:
    """The validation split an artifact was trained with, rebuilt from its stored config (split kind,
    fraction, seed), and the data's test split where it has one (reported only)."""
    from training.cache import cached
    from training.data import has_split, load_split
    from training.train import TrainConfig, make_splits

    saved = meta.training["config"]
    spec = PreprocessingSpec.from_dict(saved["spec"])
    config = TrainConfig(spec=spec, balance=saved["balance"], seed=saved["seed"],
                         val_fraction=saved["val_fraction"], split=saved.get("split", "image"))
    train_set = load_split(data, "train")
    if cache:
        train_set = cached(train_set, spec, cache)
    splits = make_splits(train_set, config)  # the same held-out images the model was validated on
    sets = {"val": splits.val}
    if has_split(data, "test"):
        test_set = load_split(data, "test")
        sets["test"] = cached(test_set, spec, cache) if cache else test_set
    return splits, sets


if __name__ == "__main__":
    raise SystemExit(main())
