"""Calibrate an existing artifact without retraining: fit the temperature on the validation split it was
trained with (rebuilt from its stored config: split kind, fraction, seed), re-choose the threshold on the
calibrated scale with its stored rule, and write the result as a new version (same weights).

    python -m training.recalibrate --model model_store/pneumonia/1/model.h5 --data ../shared/data/chest_xray_224
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from model_store.preprocessing import PreprocessingSpec
from model_store.registry import DEFAULT_STORE, ModelRegistry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.recalibrate", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", default="runs/recalibrated", help="run folder: report and plots")
    p.add_argument("--cache")
    p.add_argument("--store", default=str(DEFAULT_STORE))
    p.add_argument("--version", type=int, help="version to write (default: next free)")
    args = p.parse_args(argv)

    from model_store.artifact import load_artifact, save_artifact
    from model_store.calibration import apply_temperature, fit_temperature
    from training.cache import cached
    from training.calibration_report import (
        calibration_summary,
        score_distribution,
        split_counts,
        write_reliability_diagram,
    )
    from training.cli import predict_probabilities
    from training.data import has_split, load_split
    from training.evaluate import binary_metrics, choose_threshold, write_plots, write_report
    from training.train import TrainConfig, make_splits

    loaded = load_artifact(args.model)
    meta = loaded.metadata
    saved = meta.training["config"]
    spec = PreprocessingSpec.from_dict(saved["spec"])
    config = TrainConfig(spec=spec, balance=saved["balance"], seed=saved["seed"],
                         val_fraction=saved["val_fraction"], split=saved.get("split", "image"))
    train_set = load_split(args.data, "train")
    if args.cache:
        train_set = cached(train_set, spec, args.cache)
    splits = make_splits(train_set, config)  # the same held-out images the model was validated on
    sets = {"val": splits.val}
    if has_split(args.data, "test"):
        test_set = load_split(args.data, "test")
        sets["test"] = cached(test_set, spec, args.cache) if args.cache else test_set
    raw = {name: predict_probabilities(loaded.model, spec, images) for name, images in sets.items()}
    temperature = fit_temperature(raw["val"], splits.val.labels)
    scores = {name: apply_temperature(probs, temperature)[:, 1] for name, probs in raw.items()}
    rule = meta.metrics.get("threshold_rule", "")
    target = float(rule.split(">=")[1]) if rule.startswith("sensitivity >=") else None
    threshold = choose_threshold(splits.val.labels, scores["val"], target)
    results = {name: binary_metrics(images.labels, scores[name], threshold) for name, images in sets.items()}
    calibration = {name: calibration_summary(images.labels, raw[name][:, 1], scores[name])
                   for name, images in sets.items()}
    out = Path(args.out)
    plots = write_plots(out, results, {n: (sets[n].labels, scores[n]) for n in sets}, None, meta.class_names)
    plots.append(write_reliability_diagram(out, {n: (sets[n].labels, raw[n][:, 1], scores[n]) for n in sets}))
    report = {"source": str(args.model), "source_sha256": loaded.sha256, "threshold_rule": rule,
              "temperature": temperature, "metrics": results, "calibration": calibration,
              "splits": split_counts(splits, sets.get("test")), "plots": plots}
    write_report(out, report)
    print(json.dumps({"temperature": temperature, "calibration": calibration,
                      **{k: {m: v for m, v in r.items() if m != "confusion_matrix"} for k, r in results.items()}},
                     indent=1))
    registry = ModelRegistry(args.store)
    version = args.version or registry.next_version(meta.name)
    meta.version = str(version)
    meta.temperature = temperature
    meta.decision_threshold = threshold
    meta.metrics = {**meta.metrics, **results, "threshold_rule": rule, "calibration": calibration,
                    "validation_distribution": score_distribution(scores["val"]),
                    "recalibrated_from": {"path": str(args.model), "sha256": loaded.sha256}}
    meta.dataset["splits"] = report["splits"]
    destination = registry.path_for(meta.name, version)
    save_artifact(loaded.model, meta, destination, include_optimizer=False)
    for name in [*plots, "report.json"]:
        shutil.copy2(out / name, destination.parent / name)
    print(f"exported {destination}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
