"""``cxr-train-gate``: train the input gate ("frontal chest radiograph or not?") and export it as an artifact.

Generalisation is estimated honestly: grouped folds hold whole *sources* out (a kind that comes from one
source is then unseen in that fold), every image gets an out-of-fold score, the refusal threshold is chosen
on those scores (at most 1% of chest radiographs refused), and per-kind refusal rates are reported from them.
The shipped model is then trained on everything with the same recipe.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model_store.preprocessing import PreprocessingSpec
from model_store.registry import DEFAULT_STORE, ModelRegistry
from training.gate_data import (
    ACCEPT,
    GATE_CLASSES,
    SYNTHETIC_KINDS,
    GateSet,
    load_gate_folder,
    load_kermany_positives,
    synthetic_negatives,
)

log = logging.getLogger("cxr.train.gate")


def build_gate_model(input_size: int, widths: tuple[int, ...] = (16, 32, 64, 64), dropout: float = 0.3,
                     head: str = "gap") -> Any:
    """A small ConvNet on the grey image: stride-2 stem, conv-BN-ReLU-pool blocks, then global average pooling
    (``head="gap"``) or average pooling to a 2x2 grid (``"grid2"``): the grid keeps where things are (one lung
    field or two, the spine at the edge or in the middle), which a lateral film differs in from a frontal one."""
    import keras

    x = inputs = keras.Input((input_size, input_size, 1), name="image")
    x = keras.layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for i, width in enumerate(widths[1:], start=1):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    if head == "grid2":
        x = keras.layers.AveragePooling2D(max(1, x.shape[1] // 2), name="grid_pool")(x)
        x = keras.layers.Flatten(name="grid")(x)
    elif head == "gap":
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    else:
        raise ValueError(f"head must be 'gap' or 'grid2', got {head!r}")
    x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(len(GATE_CLASSES), activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cxr_gate")


def _augmenter(seed: int) -> Any:
    """Hard augmentation: geometry, contrast and brightness, so the gate keys on anatomy, not on one
    hospital's exposure or framing."""
    import keras

    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.06, fill_mode="constant", seed=seed),
        keras.layers.RandomZoom((-0.25, 0.15), fill_mode="constant", seed=seed),
        keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed),
        keras.layers.RandomContrast(0.4, seed=seed),
        keras.layers.RandomBrightness(0.25, value_range=(0.0, 1.0), seed=seed),
    ], name="augment")


def sample_weights(data: GateSet, boost: dict[str, float] | None = None) -> np.ndarray:
    """Each kind weighs the same within its label and both labels weigh the same: 5 endoscopy frames count
    as much as 30 mammograms, and 334 real negatives as much as thousands of radiographs. ``boost`` gives a
    kind a larger share of its label's weight (the hard negatives: lateral chest films, hands)."""
    boost = boost or {}
    weights = np.zeros(len(data), np.float32)
    for label in (0, 1):
        kinds = np.unique(data.kinds[data.y == label])
        total = sum(boost.get(str(kind), 1.0) for kind in kinds)
        for kind in kinds:
            members = (data.y == label) & (data.kinds == kind)
            weights[members] = boost.get(str(kind), 1.0) / (members.sum() * total)
    return weights * len(data) / weights.sum()


def fit_gate(train: GateSet, epochs: int, seed: int, *, batch_size: int = 64, verbose: int = 0,
             boost: dict[str, float] | None = None, head: str = "gap") -> Any:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    model = build_gate_model(train.x.shape[1], head=head)
    steps = epochs * int(np.ceil(len(train) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, decay_steps=steps, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  weighted_metrics=["accuracy"])
    augment = _augmenter(seed)
    ds = (tf.data.Dataset.from_tensor_slices((train.x, train.y, sample_weights(train, boost)))
          .shuffle(len(train), seed=seed, reshuffle_each_iteration=True).batch(batch_size)
          .map(lambda x, y, w: (tf.clip_by_value(augment(x, training=True), 0.0, 1.0), y, w),
               num_parallel_calls=tf.data.AUTOTUNE)
          .prefetch(2))
    model.fit(ds, epochs=epochs, verbose=verbose)
    return model


def grouped_folds(data: GateSet, n_folds: int, seed: int) -> np.ndarray:
    """Fold id per image: whole sources go to one fold (largest first); the one big pediatric source is spread
    over all folds at random, or no fold could learn pediatric films. A source goes to the fold holding the
    fewest sources of its kinds, then to the emptiest: when every source of a kind lands in one fold, that
    fold trains without the kind at all (hands, say), which measures a different question than an unseen
    collection of a kind the gate was taught."""
    rng = np.random.default_rng(seed)
    folds = np.full(len(data), -1)
    spread = data.sources == "kermany"
    folds[spread] = rng.integers(0, n_folds, spread.sum())
    load = np.zeros((n_folds, 2))
    held_kinds: list[set[str]] = [set() for _ in range(n_folds)]
    sources = [s for s in np.unique(data.sources[~spread])]
    sizes = {s: int((data.sources == s).sum()) for s in sources}
    for source in sorted(sources, key=lambda s: (-sizes[s], s)):
        members = data.sources == source
        label = int(data.y[members][0])
        kinds = {str(k) for k in np.unique(data.kinds[members])}
        clash = np.array([len(kinds & held) for held in held_kinds])
        fold = int(np.argmin(clash * len(data) + load[:, label] + rng.uniform(0, 1e-3, n_folds)))
        folds[members] = fold
        load[fold, label] += sizes[source]
        held_kinds[fold] |= kinds
    return folds


SCORE_RUNTIMES = ("keras", "tflite-int8")


def score(model: Any, x: np.ndarray, runtime: str = "keras") -> np.ndarray:
    """The chest-radiograph score of each image, computed the way serving will compute it: ``keras`` (float32;
    served as TFLite float32, checked to 1e-4 of it at load) or ``tflite-int8`` (the dynamic-range int8
    flatbuffer the service converts, one image per call as the decode threads call it)."""
    positive = GATE_CLASSES.index("chest_radiograph")
    if runtime == "keras":
        return model.predict(x, batch_size=256, verbose=0)[:, positive]
    from app.runtimes.lite import LiteInterpreter, convert_tflite  # the service's own conversion and interpreter

    interpreter = LiteInterpreter(convert_tflite(model, quantize=True), (1, *x.shape[1:]))
    return np.array([interpreter.run(x[i : i + 1])[0, positive] for i in range(len(x))], dtype=np.float32)


def runtime_equivalence(reference: np.ndarray, scores: np.ndarray, data: GateSet, threshold: float
                        ) -> dict[str, Any]:
    """How another runtime's scores decide against float32's at ``threshold``: images whose decision changes
    (by kind), those changed for the worse (a chest film refused, or anything else let through: any figure of
    the validation gets worse by them) and the largest score difference."""
    passed, passes = reference >= threshold, scores >= threshold
    flipped = passed != passes
    worse = flipped & np.where(data.y == ACCEPT, passed, passes)
    kinds, counts = np.unique(data.kinds[flipped], return_counts=True)
    return {"n": len(scores), "decision_flips": int(flipped.sum()), "worse": int(worse.sum()),
            "flips_by_kind": {str(k): int(n) for k, n in zip(kinds, counts, strict=True)},
            "max_abs_score_difference": round(float(np.abs(reference - scores).max()), 6)}


def choose_gate_threshold(scores: np.ndarray, data: GateSet, max_refused: float) -> float:
    """The highest threshold at which at most ``max_refused`` of pediatric AND of adult chest films score
    below it (refused); both populations count, so the adult films cannot be sacrificed to the many children."""
    limits = []
    for kind in ("pediatric_cxr", "adult_cxr"):
        pos = np.sort(scores[data.kinds == kind])
        allowed = int(np.floor(max_refused * len(pos)))
        limits.append(float(pos[allowed]))  # refusing strictly below the (allowed+1)-th lowest score
    return float(min(limits))


def refusal_table(scores: np.ndarray, data: GateSet, threshold: float) -> dict[str, dict[str, float | int]]:
    table = {}
    for kind in np.unique(data.kinds):
        members = data.kinds == kind
        refused = int((scores[members] < threshold).sum())
        table[str(kind)] = {"n": int(members.sum()), "refused": refused,
                            "refused_rate": round(refused / int(members.sum()), 4),
                            "label": "accept" if int(data.y[members][0]) == ACCEPT else "refuse"}
    return table


def summarise(scores: np.ndarray, data: GateSet, threshold: float) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    table = refusal_table(scores, data, threshold)
    synthetic = np.isin(data.kinds, SYNTHETIC_KINDS)
    real_negative = (data.y == 0) & ~synthetic
    return {
        "threshold": threshold,
        "roc_auc": float(roc_auc_score(data.y, scores)),
        "pediatric_refused_rate": table["pediatric_cxr"]["refused_rate"],
        "adult_refused_rate": table["adult_cxr"]["refused_rate"],
        "not_cxr_refused_rate": round(float((scores[real_negative] < threshold).mean()), 4),
        "not_cxr_min_kind_refused_rate": min(v["refused_rate"] for k, v in table.items()
                                             if v["label"] == "refuse" and k not in SYNTHETIC_KINDS),
        "synthetic_refused_rate": round(float((scores[synthetic] < threshold).mean()), 4),
        "per_kind": table,
        "per_source_refused_rate": {str(s): round(float((scores[data.sources == s] < threshold).mean()), 4)
                                    for s in np.unique(data.sources)},
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cxr-train-gate", description="Train the input gate and export it.")
    p.add_argument("--data", default="../shared/data", help="folder holding chest_xray_224/ and gate/")
    p.add_argument("--out", default="runs/gate", help="run folder: report and plots")
    # 64 px: a gate call costs about the fixed overhead of one TF call (benchmarks/gate_cost.py), and the
    # anatomy that tells a chest film from a spine film or a fundus photo is plain at that size
    p.add_argument("--input-size", type=int, default=64)
    p.add_argument("--pediatric", type=int, default=2500, help="pediatric films sampled from train/ (0 = all)")
    p.add_argument("--synthetic", type=int, default=60, help="generated negatives per synthetic kind")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--head", choices=("gap", "grid2"), default="gap",
                   help="gap: global average pool (gate v1); grid2: average pool to a 2x2 grid, keeps the layout")
    p.add_argument("--boost", action="append", default=[], metavar="KIND=FACTOR",
                   help="give a kind FACTOR times its share of its label's weight, e.g. chest_lateral=3")
    p.add_argument("--folds", type=int, default=5, help="grouped folds for validation (0 = skip validation)")
    p.add_argument("--max-refused", type=float, default=0.01, help="share of chest films the threshold may refuse")
    p.add_argument("--score-runtime", choices=SCORE_RUNTIMES, default="keras",
                   help="the runtime the out-of-fold scores, the threshold and the figures are computed with; "
                        "the service runs the gate on the same one (tflite-int8: about a third of float32's cost)")
    p.add_argument("--weights-from", type=int, metavar="VERSION",
                   help="export this stored version's weights (no final fit) with this run's validation: "
                        "re-validates a shipped gate under --score-runtime with the folds of its own recipe")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--store", default=str(DEFAULT_STORE))
    p.add_argument("--name", default="gate")
    p.add_argument("--version", type=int, help="version to write (default: next free)")
    p.add_argument("--no-export", action="store_true")
    return p


def parse_boost(items: list[str]) -> dict[str, float]:
    """``["chest_lateral=3", ...]`` -> ``{"chest_lateral": 3.0}``."""
    boost = {}
    for item in items:
        kind, sep, factor = item.partition("=")
        try:
            boost[kind] = float(factor)
        except ValueError:
            sep = ""
        if not sep or not kind or boost[kind] <= 0:
            raise SystemExit(f"--boost takes KIND=FACTOR with FACTOR > 0, e.g. chest_lateral=3; got {item!r}")
    return boost


def load_all(data_root: Path, spec: PreprocessingSpec, pediatric: int, synthetic: int, seed: int) -> GateSet:
    kids, kid_x = load_kermany_positives(data_root / "chest_xray_224" / "train", spec, pediatric or None, seed)
    return GateSet.concat([kids, load_gate_folder(data_root / "gate", spec),
                           synthetic_negatives(synthetic, kid_x, spec.input_size, seed)])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.weights_from is not None and (args.score_runtime == "keras" or not args.folds):
        raise SystemExit("--weights-from re-validates a stored gate under another runtime: give "
                         "--score-runtime tflite-int8 and keep the folds (--folds > 0)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from model_store.artifact import ModelMetadata, save_artifact
    from training import code_version

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = PreprocessingSpec(input_size=args.input_size, crop="none", binarize="none")
    boost = parse_boost(args.boost)
    started = time.perf_counter()
    data = load_all(Path(args.data), spec, args.pediatric, args.synthetic, args.seed)
    log.info("gate data: %d images (%d accept, %d refuse), %d sources", len(data), int(data.y.sum()),
             int((data.y == 0).sum()), len(np.unique(data.sources)))
    report: dict[str, Any] = {"spec": spec.to_dict(), "images": len(data),
                              "counts_by_kind": {str(k): int((data.kinds == k).sum()) for k in np.unique(data.kinds)},
                              "config": {k: v for k, v in vars(args).items() if k not in ("store", "out")}}
    base = None
    if args.weights_from is not None:
        from model_store.artifact import load_artifact

        base = load_artifact(ModelRegistry(args.store).resolve(args.name, args.weights_from)[1])
        report["weights_from"] = {"version": args.weights_from, "sha256": base.sha256}
    threshold = 0.5
    if args.folds:
        folds = grouped_folds(data, args.folds, args.seed)
        oof = np.zeros(len(data), np.float32)
        oof_keras = np.zeros(len(data), np.float32)  # the float32 scores of the same fold models, for comparison
        for fold in range(args.folds):
            held = folds == fold
            log.info("fold %d/%d: holding out %s", fold + 1, args.folds,
                     sorted(set(data.sources[held]) - {"kermany"}))
            model = fit_gate(data.subset(np.flatnonzero(~held)), args.epochs, args.seed + fold, boost=boost,
                             head=args.head)
            oof[held] = score(model, data.x[held], args.score_runtime)
            oof_keras[held] = oof[held] if args.score_runtime == "keras" else score(model, data.x[held])
        np.savez_compressed(out / "oof_scores.npz", scores=oof, scores_keras=oof_keras, y=data.y, kinds=data.kinds,
                            sources=data.sources)
        if base is None:
            threshold = choose_gate_threshold(oof, data, args.max_refused)
            report["validation"] = {"method": f"{args.folds} folds grouped by source (whole sources held out; "
                                              "pediatric films spread at random)",
                                    "runtime": args.score_runtime,
                                    "held_out_sources": {int(f): sorted(set(data.sources[folds == f]) - {"kermany"})
                                                         for f in range(args.folds)},
                                    **summarise(oof, data, threshold)}
            if args.score_runtime != "keras":
                report["validation_keras_same_folds"] = summarise(oof_keras, data, choose_gate_threshold(
                    oof_keras, data, args.max_refused))
            log.info("out-of-fold: threshold %.4f, %s", threshold,
                     {k: v for k, v in report["validation"].items() if k.endswith("rate") or k == "roc_auc"})
        else:
            # the stored gate's threshold and figures stand for the new runtime only if it decides no image worse
            # than float32 does: out of fold (this run's fold models, same recipe; training is not bit for bit
            # repeatable, so the folds differ a little from the stored run's) and with the stored weights
            threshold = base.metadata.decision_threshold
            fitted = score(base.model, data.x, args.score_runtime)  # also the train-fit figures below
            equivalence = {
                "out_of_fold_same_folds": runtime_equivalence(oof_keras, oof, data, threshold),
                "stored_weights_every_image": runtime_equivalence(score(base.model, data.x), fitted, data,
                                                                  threshold)}
            report["runtime_equivalence"] = equivalence
            worse = sum(part["worse"] for part in equivalence.values())
            (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
            if worse:
                log.error("%s decides %d images worse than float32 at the stored threshold %.4f (%s): nothing "
                          "exported; validate it on its own (without --weights-from)", args.score_runtime, worse,
                          threshold, equivalence)
                return 1
            report["validation"] = dict(base.metadata.metrics["validation"])
            log.info("%s decides no image worse than float32 at threshold %.4f (%s): the stored figures stand",
                     args.score_runtime, threshold, equivalence)
    if base is not None:
        model = base.model
    else:
        model = fit_gate(data, args.epochs, args.seed, boost=boost, head=args.head)
        fitted = score(model, data.x, args.score_runtime)
    report["train_fit"] = summarise(fitted, data, threshold)
    report["seconds"] = round(time.perf_counter() - started, 1)
    validation = report.get("validation", {})
    metadata = ModelMetadata(
        name=args.name, version="0", class_names=list(GATE_CLASSES), preprocessing=spec,
        positive_class="chest_radiograph", decision_threshold=threshold,
        dataset={"accept": "Kermany pediatric train/ films + gate/adult_cxr", "refuse": "gate/not_cxr + generated",
                 "counts_by_kind": report["counts_by_kind"]},
        metrics={"validation": {k: v for k, v in validation.items() if k not in ("per_source_refused_rate",)},
                 # the runtime the service must score with (app.gate.GateModel): the figures hold for it
                 **({"runtime": args.score_runtime} if args.score_runtime != "keras" else {}),
                 **{key: report[key] for key in ("validation_keras_same_folds", "runtime_equivalence")
                    if key in report}},
        provenance={"weights_from": report["weights_from"]} if "weights_from" in report else {},
        training={"config": report["config"]},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), code_version=code_version(),
    )
    (out / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True))
    if not args.no_export:
        registry = ModelRegistry(args.store)
        version = args.version or registry.next_version(args.name)
        metadata.version = str(version)
        target = registry.path_for(args.name, version)
        sha = save_artifact(model, metadata, target, include_optimizer=True)
        shutil.copy(out / "report.json", target.parent / "report.json")
        log.info("exported %s v%d -> %s (sha256 %s)", args.name, version, target, sha)
    return 0


if __name__ == "__main__":
    sys.exit(main())
