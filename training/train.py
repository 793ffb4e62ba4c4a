"""Fit with per-epoch HDF5 checkpoints (optimizer included), early stopping, LR schedule and resume."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np

from model_store.artifact import ModelMetadata, load_artifact, save_artifact
from model_store.preprocessing import PreprocessingSpec
from training import code_version
from training.augment import AugmentConfig
from training.batches import ImageBatches
from training.data import CLASS_NAMES, Balance, ImageSet, class_weights, stratified_split, undersample
from training.model import ModelConfig, build_model
from training.patients import grouped_split, patient_groups

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "checkpoint_last.h5"
BEST_CHECKPOINT = "checkpoint_best.h5"


@dataclass
class TrainConfig:
    spec: PreprocessingSpec = field(default_factory=PreprocessingSpec)
    model: ModelConfig = field(default_factory=ModelConfig)
    balance: Balance = "undersample"
    epochs: int = 20
    batch_size: int = 64
    val_fraction: float = 0.1
    seed: int = 1337  # the validation split (and, unless member_seed is set, everything else random)
    # an ensemble member's own randomness: initial weights, the undersampled subset, batch order, augmentation.
    # Members share ``seed`` (hence one validation split, held out from all of them) and differ here.
    member_seed: int | None = None
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    early_stopping_patience: int = 5
    lr_patience: int = 4
    lr_factor: float = 0.2
    split: str = "patient"  # "patient": validation carved by patient (grouped); "image": v1's image-level split
    schedule: str = "plateau"  # "plateau": reduce on val_loss plateau; "cosine": cosine decay over the epochs
    warmup_epochs: int = 0
    # mixup (Zhang et al. 2018): each training pair blended with a partner from its batch, weight ~ Beta(a, a)
    mixup_alpha: float = 0.0
    verbose: int = 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(), "model": self.model.to_dict(), "balance": self.balance,
            "epochs": self.epochs, "batch_size": self.batch_size, "val_fraction": self.val_fraction,
            "seed": self.seed, "augment": self.augment.to_dict() if self.augment else None,
            "early_stopping_patience": self.early_stopping_patience, "lr_patience": self.lr_patience,
            "lr_factor": self.lr_factor, "split": self.split, "schedule": self.schedule,
            "warmup_epochs": self.warmup_epochs, "member_seed": self.member_seed, "mixup_alpha": self.mixup_alpha,
        }

    @property
    def one_hot_labels(self) -> bool:
        return bool(self.mixup_alpha or self.model.label_smoothing)

    @property
    def run_seed(self) -> int:
        return self.seed if self.member_seed is None else self.member_seed


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    class_weight: dict[int, float] | None
    patients: dict[str, int] = field(default_factory=dict)


def make_splits(train_set: ImageSet, config: TrainConfig, val_set: ImageSet | None = None) -> Splits:
    """Validation is carved from train (stratified, seeded; by patient unless ``split == "image"``) unless
    given; balancing touches train only."""
    groups = patient_groups(train_set.paths, len(train_set))
    patients: dict[str, int] = {}
    if val_set is None:
        if config.split == "patient":
            keep, held = grouped_split(train_set.labels, groups, config.val_fraction, config.seed)
            how = "patient-grouped stratified"
        elif config.split == "image":
            keep, held = stratified_split(train_set.labels, config.val_fraction, config.seed)
            how = "stratified"
        else:
            raise ValueError(f"split must be 'patient' or 'image', got {config.split!r}")
        val_set = train_set.subset(held, description=f"{how} {config.val_fraction:.0%} of {train_set.description}")
        train_set = train_set.subset(keep)
        patients = {"train": len(np.unique(groups[keep])), "val": len(np.unique(groups[held]))}
    weights = None
    if config.balance == "undersample":
        train_set = train_set.subset(undersample(train_set.labels, config.run_seed),
                                     description=f"undersampled {train_set.description}")
    elif config.balance == "class-weight":
        weights = class_weights(train_set.labels)
    elif config.balance != "none":
        raise ValueError(f"balance must be undersample, class-weight or none, got {config.balance!r}")
    return Splits(train=train_set, val=val_set, class_weight=weights, patients=patients)


class ArtifactCheckpoint(keras.callbacks.Callback):
    """After every epoch: the last state (to resume) and, when val_loss improves, the best state, each
    one HDF5 artifact with optimizer and the training state in its metadata."""

    def __init__(self, out_dir: Path, metadata_for: Any, history: dict[str, list[float]],
                 best_val_loss: float = float("inf")) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.metadata_for = metadata_for
        self.history = history
        self.best_val_loss = best_val_loss
        self.best_weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = dict(logs or {})
        logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        for key, value in logs.items():
            self.history.setdefault(key, []).append(float(value))
        val_loss = logs.get("val_loss", float("inf"))
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss = val_loss
            self.best_weights = self.model.get_weights()
        state = {"epoch": epoch + 1, "history": self.history, "best_val_loss": self.best_val_loss}
        save_artifact(self.model, self.metadata_for(state), self.out_dir / LAST_CHECKPOINT)
        if improved:
            save_artifact(self.model, self.metadata_for(state), self.out_dir / BEST_CHECKPOINT)


def build_metadata(config: TrainConfig, splits: Splits, state: dict[str, Any], name: str = "pneumonia",
                   version: str = "0") -> ModelMetadata:
    return ModelMetadata(
        name=name, version=version, class_names=list(CLASS_NAMES), preprocessing=config.spec,
        positive_class="PNEUMONIA", decision_threshold=0.5,
        dataset={"train": splits.train.description, "train_counts": splits.train.class_counts(),
                 "val": splits.val.description, "val_counts": splits.val.class_counts(),
                 "patients": splits.patients},
        training={"config": config.to_dict(), **state},
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), code_version=code_version(),
    )


def fit(splits: Splits, config: TrainConfig, out_dir: str | Path, resume: str | Path | None = None
        ) -> tuple[keras.Model, dict[str, Any]]:
    """Train (or resume) and return the model with the best val_loss weights, plus the training state."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.run_seed)
    history: dict[str, list[float]] = {}
    initial_epoch, best_val_loss = 0, float("inf")
    if resume is not None:
        loaded = load_artifact(resume, compile=True)
        model = loaded.model
        state = loaded.metadata.training
        initial_epoch = int(state.get("epoch", 0))
        history = {k: list(v) for k, v in state.get("history", {}).items()}
        best_val_loss = float(state.get("best_val_loss", float("inf")))
        log.info("resuming from %s at epoch %d (optimizer iterations %d)", resume, initial_epoch,
                 int(model.optimizer.iterations))
    else:
        model = build_model(config.model, one_hot=config.one_hot_labels)

    train_batches = ImageBatches(splits.train, config.spec, config.batch_size, augment_config=config.augment,
                                 shuffle=True, seed=config.run_seed, class_weight=splits.class_weight,
                                 one_hot=config.one_hot_labels, mixup_alpha=config.mixup_alpha)
    train_batches.epoch = initial_epoch
    val_batches = ImageBatches(splits.val, config.spec, config.batch_size, one_hot=config.one_hot_labels)
    checkpoint = ArtifactCheckpoint(out, lambda state: build_metadata(config, splits, state), history,
                                    best_val_loss)
    timer = EpochTimer()
    callbacks = [
        checkpoint,
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience),
        _schedule_callback(config),
        timer,
    ]
    if initial_epoch < config.epochs:
        model.fit(train_batches, validation_data=val_batches, epochs=config.epochs, initial_epoch=initial_epoch,
                  callbacks=callbacks, verbose=config.verbose)
    if checkpoint.best_weights is not None:
        model.set_weights(checkpoint.best_weights)
    elif resume is not None and (out / BEST_CHECKPOINT).exists():
        model.set_weights(load_artifact(out / BEST_CHECKPOINT).model.get_weights())
    write_history_csv(out / "history.csv", history)
    state = {"epoch": max(initial_epoch, len(history.get("loss", []))), "history": history,
             "best_val_loss": checkpoint.best_val_loss,
             "seconds_per_epoch": timer.mean_seconds(), "optimizer_iterations": int(model.optimizer.iterations)}
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return model, state


def cosine_rate(epoch: int, base: float, epochs: int, warmup: int = 0) -> float:
    """Linear warm-up over ``warmup`` epochs, then cosine decay from ``base`` towards 1% of it."""
    if epoch < warmup:
        return base * (epoch + 1) / (warmup + 1)
    progress = (epoch - warmup) / max(1, epochs - warmup)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def _schedule_callback(config: TrainConfig) -> keras.callbacks.Callback:
    if config.schedule == "cosine":
        return keras.callbacks.LearningRateScheduler(
            lambda epoch, _lr: cosine_rate(epoch, config.model.learning_rate, config.epochs, config.warmup_epochs))
    if config.schedule == "plateau":
        return keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=config.lr_factor,
                                                 patience=config.lr_patience, min_lr=1e-6)
    raise ValueError(f"schedule must be 'plateau' or 'cosine', got {config.schedule!r}")


class EpochTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)

    def mean_seconds(self) -> float | None:
        return float(np.mean(self.seconds)) if self.seconds else None


def write_history_csv(path: Path, history: dict[str, list[float]]) -> None:
    keys = sorted(history)
    rows = max((len(v) for v in history.values()), default=0)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["epoch", *keys])
        for epoch in range(rows):
            writer.writerow([epoch + 1, *[history[k][epoch] if epoch < len(history[k]) else "" for k in keys]])

