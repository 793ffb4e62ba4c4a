"""``cxr-train`` and ``cxr-evaluate``: train, choose the threshold on validation, report, export."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from model_store.preprocessing import PreprocessingSpec
from model_store.registry import DEFAULT_STORE
from training.augment import AugmentConfig
from training.finalize import predict_probabilities
from training.model import ModelConfig

log = logging.getLogger("cxr.train")


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-train", description="Train the pneumonia ConvNet and export it.")
    p.add_argument("--data", required=True, help="Kermany folder (train/ [val/] [test/]) or MedMNIST .npz")
    p.add_argument("--out", default="runs/latest", help="run folder: checkpoints, history, report, plots")
    p.add_argument("--resume", help="checkpoint_last.h5 of an earlier run to continue from")
    g = p.add_argument_group("preprocessing (stored in the artifact, applied again when serving)")
    g.add_argument("--input-size", type=int, default=128)
    g.add_argument("--crop", choices=["none", "center"], default="none")
    g.add_argument("--binarize", choices=["fixed", "otsu", "none"], default="fixed")
    g.add_argument("--threshold", type=float, default=128 / 255, help="fixed binarize threshold in (0, 1)")
    g.add_argument("--mask-bottom", type=float, default=0.0, help="zero this share of the lowest rows")
    g = p.add_argument_group("model")
    g.add_argument("--filters", default="32,64,128,128", help="conv widths, one 3x3 block + 2x2 pool each")
    g.add_argument("--dense", type=int, default=512)
    g.add_argument("--dropout", type=float, default=0.5)
    g.add_argument("--l1", type=float, default=1e-5)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--arch", choices=["plain", "sepres"], default="plain",
                   help="plain: v1's conv stack; sepres: stride-2 stem, residual separable blocks, batch norm, GAP")
    g.add_argument("--no-stem-pool", action="store_true", help="sepres: no 2x2 pool after the stem")
    g.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay of Adam")
    g = p.add_argument_group("fit")
    g.add_argument("--balance", choices=["undersample", "class-weight", "none"], default="undersample")
    g.add_argument("--epochs", type=int, default=20)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--val-fraction", type=float, default=0.1)
    g.add_argument("--split", choices=["patient", "image"], default="patient",
                   help="carve validation by patient (grouped, stratified) or by image (v1)")
    g.add_argument("--schedule", choices=["plateau", "cosine"], default="plateau")
    g.add_argument("--warmup-epochs", type=int, default=0, help="cosine: linear warm-up epochs")
    g.add_argument("--augment-scale", type=float, default=1.0, help="multiply every augmentation range by this")
    g.add_argument("--cache", help="folder for a decoded uint8 copy of folder datasets (epochs skip JPEG decoding)")
    g.add_argument("--seed", type=int, default=1337, help="seeds the validation split (and the rest, unless "
                   "--member-seed is given)")
    g.add_argument("--member-seed", type=int, help="an ensemble member's own seed (weights, undersampled "
                   "subset, order, augmentation); members trained with one --seed share the validation split")
    g.add_argument("--augment-aspect", type=float, default=0.0,
                   help="anisotropic stretch range a: width x (1+a), height / (1+a) (0 = off, as v1)")
    g.add_argument("--augment-intensity", type=float, default=1.0,
                   help="multiply the brightness and contrast ranges by this (after --augment-scale)")
    g.add_argument("--augment-gamma", type=float, default=0.0,
                   help="gamma drawn as exp(U(-g, g)) before binarizing (0: off, v1's recipe)")
    g.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="blend training pairs, weight ~ Beta(ALPHA, ALPHA) (0: off; 0.2 is usual)")
    g.add_argument("--label-smoothing", type=float, default=0.0, help="soften the targets by this (0: off)")
    g.add_argument("--no-augment", action="store_true")
    g.add_argument("--patience", type=int, default=5, help="early stopping patience (val_loss)")
    g.add_argument("--limit", type=int, help="use at most N images per class of each split (quick runs)")
    g = p.add_argument_group("evaluation and export")
    g.add_argument("--target-sensitivity", type=float,
                   help="pick the threshold reaching this validation sensitivity (default: Youden's J)")
    g.add_argument("--no-calibrate", action="store_true", help="do not fit a temperature on validation")
    g.add_argument("--store", default=str(DEFAULT_STORE), help="model store root")
    g.add_argument("--name", default="pneumonia")
    g.add_argument("--version", type=int, help="version to write (default: next free)")
    g.add_argument("--no-export", action="store_true", help="do not write into the model store")
    g.add_argument("--quiet", action="store_true")
    return p


def _limit(images: Any, limit: int | None) -> Any:
    """The first ``limit`` images of each class, in file order: the same slice for cxr-train and cxr-evaluate."""
    if not limit:
        return images
    keep = np.concatenate([np.flatnonzero(images.labels == c)[:limit] for c in np.unique(images.labels)])
    return images.subset(np.sort(keep), description=f"{images.description}, first {limit} per class")


def evaluate_model(model: Any, spec: PreprocessingSpec, images: Any, batch_size: int = 64,
                   temperature: float = 1.0) -> np.ndarray:
    """P(PNEUMONIA) for every image of the set, through the shared preprocessing (and calibration)."""
    return predict_probabilities(model, spec, images, batch_size, temperature)[:, 1]


def train_main(argv: list[str] | None = None) -> int:
    args = _train_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from training.cache import cached
    from training.calibration_report import split_counts
    from training.data import has_split, load_split
    from training.evaluate import write_report
    from training.finalize import calibrate_and_report, export
    from training.train import TrainConfig, build_metadata, fit, make_splits

    spec = PreprocessingSpec(input_size=args.input_size, crop=args.crop, binarize=args.binarize,
                             threshold=args.threshold, mask_bottom_fraction=args.mask_bottom)
    model_config = ModelConfig(input_size=args.input_size, filters=tuple(int(f) for f in args.filters.split(",")),
                               dense_units=args.dense, dropout=args.dropout, l1=args.l1, learning_rate=args.lr,
                               arch=args.arch, weight_decay=args.weight_decay, stem_pool=not args.no_stem_pool,
                               label_smoothing=args.label_smoothing)
    config = TrainConfig(spec=spec, model=model_config, balance=args.balance, epochs=args.epochs,
                         batch_size=args.batch_size, val_fraction=args.val_fraction, seed=args.seed,
                         member_seed=args.member_seed,
                         augment=None if args.no_augment else replace(
                             AugmentConfig().scaled(args.augment_scale), max_aspect=args.augment_aspect
                         ).with_intensity(args.augment_intensity, args.augment_gamma),
                         early_stopping_patience=args.patience, split=args.split, schedule=args.schedule,
                         warmup_epochs=args.warmup_epochs, mixup_alpha=args.mixup, verbose=0 if args.quiet else 2)
    if args.resume:  # the checkpoint's own configuration wins: resuming must not change the recipe
        from model_store.artifact import read_metadata

        saved = read_metadata(args.resume).training["config"]
        config.spec = PreprocessingSpec.from_dict(saved["spec"])
        config.balance, config.seed, config.val_fraction = saved["balance"], saved["seed"], saved["val_fraction"]
        config.member_seed = saved.get("member_seed")
        config.batch_size = saved["batch_size"]
        config.split = saved.get("split", "image")  # checkpoints from before patient splits split by image
        # the compiled loss comes back with the checkpoint; the labels fed to it must match it
        config.mixup_alpha = saved.get("mixup_alpha", 0.0)
        config.model = replace(config.model, label_smoothing=saved["model"].get("label_smoothing", 0.0))
    train_set = _limit(load_split(args.data, "train"), args.limit)
    if args.cache:
        train_set = cached(train_set, config.spec, args.cache)
    splits = make_splits(train_set, config)
    log.info("train %s, val %s, patients %s", splits.train.class_counts(), splits.val.class_counts(),
             splits.patients)
    out = Path(args.out)
    model, state = fit(splits, config, out, resume=args.resume)

    sets = {"val": splits.val}
    if has_split(args.data, "test"):  # reported only: nothing below is chosen on it
        test_set = _limit(load_split(args.data, "test"), args.limit)
        sets["test"] = cached(test_set, config.spec, args.cache) if args.cache else test_set
    calibrated = calibrate_and_report(model, config.spec, sets, out, target_sensitivity=args.target_sensitivity,
                                      calibrate=not args.no_calibrate, history=state["history"])
    report = {"threshold_rule": calibrated.rule, "metrics": calibrated.results, "plots": calibrated.plots,
              "temperature": calibrated.temperature, "calibration": calibrated.calibration,
              "splits": split_counts(splits, sets.get("test")),
              "seconds_per_epoch": state["seconds_per_epoch"], "epochs_run": state["epoch"],
              "config": config.to_dict()}
    write_report(out, report)
    print(json.dumps({k: {m: v for m, v in r.items() if m != "confusion_matrix"}
                      for k, r in calibrated.results.items()}, indent=1))
    if args.no_export:
        return 0
    metadata = build_metadata(config, splits, {k: v for k, v in state.items() if k != "history"}, name=args.name)
    metadata.dataset["splits"] = report["splits"]
    target, sha = export(model, metadata, calibrated, splits.val, store=args.store, version=args.version, out=out,
                         files=("report.json", "history.csv"))
    print(f"exported {target} (sha256 {sha}, {target.stat().st_size / 1e6:.1f} MB)")
    return 0


def evaluate_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cxr-evaluate", description="Evaluate a model artifact on a data split.")
    p.add_argument("--model", required=True, help="path to model.h5")
    p.add_argument("--data", required=True, help="Kermany folder or MedMNIST .npz")
    p.add_argument("--split", default="test")
    p.add_argument("--out", help="write report.json and plots here")
    p.add_argument("--limit", type=int)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from model_store.artifact import load_artifact
    from training.data import load_split
    from training.evaluate import binary_metrics, write_plots, write_report

    loaded = load_artifact(args.model)
    images = _limit(load_split(args.data, args.split), args.limit)
    scores = evaluate_model(loaded.model, loaded.metadata.preprocessing, images,
                            temperature=loaded.metadata.temperature)
    metrics = binary_metrics(images.labels, scores, loaded.metadata.decision_threshold)
    print(json.dumps(metrics, indent=1))
    if args.out:
        plots = write_plots(args.out, {args.split: metrics}, {args.split: (images.labels, scores)}, None,
                            loaded.metadata.class_names)
        write_report(args.out, {"model": str(args.model), "sha256": loaded.sha256, "split": args.split,
                                "data": images.description, "metrics": {args.split: metrics}, "plots": plots})
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
