"""Keras ``PyDataset`` that decodes, augments and preprocesses images batch by batch (streamed, seeded)."""

from __future__ import annotations

import keras
import numpy as np

from model_store.preprocessing import PreprocessingSpec, preprocess, to_unit_float
from training.augment import AugmentConfig, augment
from training.data import CLASS_NAMES, ImageSet


class ImageBatches(keras.utils.PyDataset):
    """Batches of (preprocessed images, labels[, sample weights]). Shuffles each epoch when training."""

    def __init__(self, images: ImageSet, spec: PreprocessingSpec, batch_size: int = 64, *,
                 augment_config: AugmentConfig | None = None, shuffle: bool = False, seed: int = 0,
                 class_weight: dict[int, float] | None = None, one_hot: bool = False,
                 mixup_alpha: float = 0.0) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.images = images
        self.spec = spec
        self.batch_size = batch_size
        self.augment_config = augment_config
        self.shuffle = shuffle
        self.seed = seed
        self.class_weight = class_weight
        self.one_hot = one_hot or bool(mixup_alpha)
        self.mixup_alpha = mixup_alpha
        self.epoch = 0
        self.order = self._order()

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.images))
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.images))

    def __len__(self) -> int:
        return (len(self.images) + self.batch_size - 1) // self.batch_size

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._order()

    def load(self, index: int, rng: np.random.Generator | None) -> np.ndarray:
        # JPEGs may decode at reduced scale, but never below 2x the input size (keeps the resize honest)
        image = self.images.image(int(index), min_size=2 * self.spec.input_size)
        if self.augment_config is not None and rng is not None:
            if image.dtype != np.uint8:
                image = np.rint(to_unit_float(image) * 255).astype(np.uint8)
            image = augment(image, self.augment_config, rng)
        return preprocess(image, self.spec)

    def __getitem__(self, batch: int) -> tuple[np.ndarray, ...]:
        indices = self.order[batch * self.batch_size : (batch + 1) * self.batch_size]
        rng = np.random.default_rng((self.seed, self.epoch, batch)) if self.augment_config else None
        x = np.stack([self.load(i, rng) for i in indices])
        labels = self.images.labels[indices]
        y = np.eye(len(CLASS_NAMES), dtype=np.float32)[labels] if self.one_hot else labels
        weights = (np.asarray([self.class_weight[int(label)] for label in labels], dtype=np.float32)
                   if self.class_weight else None)
        if self.mixup_alpha:
            # its own stream, so switching mixup on leaves the augmentation draws as they were
            mix = np.random.default_rng((self.seed, self.epoch, batch, 1))
            lam = mix.beta(self.mixup_alpha, self.mixup_alpha, size=len(indices)).astype(np.float32)
            partner = mix.permutation(len(indices))
            x = lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[partner]
            y = lam[:, None] * y + (1 - lam[:, None]) * y[partner]
            if weights is not None:
                weights = lam * weights + (1 - lam) * weights[partner]
        return (x, y) if weights is None else (x, y, weights)

    def all_inputs(self) -> np.ndarray:
        """Every image preprocessed, in order (for evaluation; no augmentation)."""
        return np.stack([self.load(i, None) for i in range(len(self.images))])
