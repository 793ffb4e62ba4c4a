"""Several trained members as ONE Keras model: one input, each member's layers side by side (copied, renamed
``m1_conv1`` ...), the mean of their logits, one softmax. One HDF5 file, one preprocessing spec, one call per
batch for every runtime; Grad-CAM sees every member's last convolution.

The members must share the preprocessing spec and the validation split (``cxr-train`` with one ``--seed``,
different ``--member-seed``), so the split the ensemble is calibrated and thresholded on was held out from
every member.

    python -m training.ensemble --data ../shared/data/chest_xray_224 --cache runs/cache --out runs/v2/ensemble \\
        --members runs/v2/S11/store/pneumonia/2/model.h5 runs/v2/S12/store/pneumonia/2/model.h5 ...
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from model_store.registry import DEFAULT_STORE

# the parts of a member's training config that decide its validation split
SPLIT_KEYS = ("split", "val_fraction", "seed")


def member_layers(member: Any) -> list[Any]:
    """The member's layers in call order. Only a Sequential stack (``--arch plain``) can be copied by replaying
    its layers in order; a residual graph would need its wiring copied too, so it is refused."""
    import keras

    if not isinstance(member, keras.Sequential):
        raise ValueError(f"member {member.name!r} is not a plain stack of layers (a keras.Sequential); "
                         "train ensemble members with --arch plain")
    layers = list(member.layers)
    if not layers or not isinstance(layers[-1], keras.layers.Dense):
        raise ValueError(f"member {member.name!r} does not end in a Dense softmax layer")
    return layers


def build_ensemble(members: list[Any], name: str = "cxr_ensemble") -> Any:
    """One functional model: softmax(mean of the members' logits). The mean of logits is the normalised
    geometric mean of the members' probabilities; a temperature then applies to it as to any softmax model."""
    import keras

    if len(members) < 2:
        raise ValueError("an ensemble needs at least two members")
    shapes = {tuple(member.input_shape[1:]) for member in members}
    if len(shapes) != 1:
        raise ValueError(f"members take different inputs: {sorted(shapes)}")
    inputs = keras.Input(shapes.pop(), name="image")
    copies: list[tuple[Any, Any]] = []
    logits = []
    for index, member in enumerate(members, start=1):
        x = inputs
        layers = member_layers(member)
        for position, layer in enumerate(layers):
            config = {**layer.get_config(), "name": f"m{index}_{layer.name}"}
            if position == len(layers) - 1:  # the member's head gives logits; the ensemble has one softmax
                config.update(activation="linear", name=f"m{index}_logits")
            copy = type(layer).from_config(config)
            x = copy(x)
            copies.append((copy, layer))
        logits.append(x)
    mean = keras.layers.Average(name="mean_logits")(logits)
    outputs = keras.layers.Activation("softmax", name="probabilities")(mean)
    model = keras.Model(inputs, outputs, name=name)
    for copy, layer in copies:
        copy.set_weights(layer.get_weights())
    return model


def check_members(metadatas: list[Any]) -> None:
    """Same preprocessing and the same validation split, or the ensemble's validation figures would be
    measured on images some member trained on."""
    first = metadatas[0]
    for other in metadatas[1:]:
        if other.preprocessing != first.preprocessing:
            raise ValueError(f"members differ in preprocessing: {first.preprocessing} vs {other.preprocessing}")
        mine, theirs = first.training["config"], other.training["config"]
        differing = [key for key in SPLIT_KEYS if mine.get(key) != theirs.get(key)]
        if differing:
            raise ValueError(f"members were validated on different splits (differing {differing}); train them "
                             "with the same --seed and --split and different --member-seed")


def member_histories(paths: list[str]) -> dict[str, list[float]]:
    """Each member's training history (the history.csv exported beside its model.h5), keys prefixed ``mN_``."""
    merged: dict[str, list[float]] = {}
    for index, path in enumerate(paths, start=1):
        history = Path(path).parent / "history.csv"
        if not history.is_file():
            continue
        with history.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        for key in rows[0] if rows else []:
            if key != "epoch":
                merged[f"m{index}_{key}"] = [float(row[key]) for row in rows if row[key] != ""]
    return merged


def write_member_curves(out: Path, histories: dict[str, list[float]], members: int) -> str:
    """learning_curves.png: loss and accuracy per epoch of every member (validation solid, training dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for index in range(1, members + 1):
            for prefix, style in (("val_", "-"), ("", "--")):
                values = histories.get(f"m{index}_{prefix}{key}")
                if values:
                    ax.plot(range(1, len(values) + 1), values, style, label=f"m{index} {prefix}{key}")
        ax.set_xlabel("epoch")
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=100)
    plt.close(fig)
    return "learning_curves.png"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.ensemble", description=__doc__.split("\n")[0])
    p.add_argument("--members", nargs="+", required=True, help="model.h5 of each member")
    p.add_argument("--data", required=True, help="the Kermany folder the members were trained on")
    p.add_argument("--out", default="runs/ensemble", help="run folder: report and plots")
    p.add_argument("--cache")
    p.add_argument("--target-sensitivity", type=float,
                   help="threshold rule (default: the first member's stored rule)")
    p.add_argument("--store", default=str(DEFAULT_STORE))
    p.add_argument("--version", type=int, help="version to write (default: next free)")
    p.add_argument("--no-export", action="store_true")
    args = p.parse_args(argv)

    from model_store.artifact import ModelMetadata, load_artifact
    from training.calibration_report import split_counts
    from training.evaluate import write_report
    from training.finalize import calibrate_and_report, export, target_from_rule
    from training.recalibrate import validation_and_test
    from training.train import write_history_csv

    loaded = [load_artifact(path) for path in args.members]
    metadatas = [member.metadata for member in loaded]
    check_members(metadatas)
    model = build_ensemble([member.model for member in loaded])
    first = metadatas[0]
    splits, sets = validation_and_test(first, args.data, args.cache)
    target = args.target_sensitivity or target_from_rule(first.metrics.get("threshold_rule", ""))
    out = Path(args.out)
    calibrated = calibrate_and_report(model, first.preprocessing, sets, out, target_sensitivity=target)
    members = [{"path": str(path), "sha256": member.sha256, "metrics": {
        split: {k: member.metadata.metrics[split].get(k) for k in ("roc_auc", "accuracy")}
        for split in sets if split in member.metadata.metrics}} for path, member in zip(args.members, loaded,
                                                                                         strict=True)]
    histories = member_histories(args.members)
    write_history_csv(out / "history.csv", histories)
    calibrated.plots.append(write_member_curves(out, histories, len(loaded)))  # exported with the other plots
    report = {"members": members, "threshold_rule": calibrated.rule, "temperature": calibrated.temperature,
              "metrics": calibrated.results, "calibration": calibrated.calibration,
              "splits": split_counts(splits, sets.get("test")), "plots": calibrated.plots}
    write_report(out, report)
    print(json.dumps({"temperature": calibrated.temperature, "calibration": calibrated.calibration,
                      **{k: {m: v for m, v in r.items() if m != "confusion_matrix"}
                         for k, r in calibrated.results.items()}}, indent=1))
    if args.no_export:
        return 0
    metadata = ModelMetadata.from_dict({**first.to_dict(), "training": {
        "config": first.training["config"], "ensemble_of": [m["path"] for m in members],
        "member_configs": [m.training["config"] for m in metadatas]}})
    metadata.dataset["splits"] = report["splits"]
    path, sha = export(model, metadata, calibrated, splits.val, store=args.store, version=args.version, out=out,
                       extra_metrics={"ensemble": members}, files=("report.json", "history.csv"))
    print(f"exported {path} (sha256 {sha}, {path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
