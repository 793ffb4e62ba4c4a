"""The ConvNet ("Model 1" of the original work), built from a config so size, width and depth can change."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import keras


@dataclass(frozen=True)
class ModelConfig:
    input_size: int = 128
    filters: tuple[int, ...] = (32, 64, 128, 128)
    dense_units: int = 512
    dropout: float = 0.5
    l1: float = 1e-5  # on the last two conv blocks and the dense layer, as the original "some" layers
    num_classes: int = 2
    learning_rate: float = 1e-3

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["filters"] = list(self.filters)
        return data


def build_model(config: ModelConfig) -> keras.Model:
    """Stacked 3x3 conv blocks (ReLU, 2x2 max pool), Dense, softmax over ``num_classes``; compiled with Adam."""
    layers: list[keras.layers.Layer] = [keras.Input((config.input_size, config.input_size, 1), name="image")]
    regularized_from = max(0, len(config.filters) - 2)
    for index, width in enumerate(config.filters):
        regularizer = keras.regularizers.L1(config.l1) if config.l1 and index >= regularized_from else None
        layers += [
            keras.layers.Conv2D(width, 3, padding="same", activation="relu", kernel_regularizer=regularizer,
                                name=f"conv{index + 1}"),
            keras.layers.MaxPooling2D(2, name=f"pool{index + 1}"),
        ]
    layers += [
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dropout(config.dropout, name="dropout"),
        keras.layers.Dense(config.dense_units, activation="relu",
                           kernel_regularizer=keras.regularizers.L1(config.l1) if config.l1 else None, name="dense"),
        keras.layers.Dense(config.num_classes, activation="softmax", name="probabilities"),
    ]
    model = keras.Sequential(layers, name="cxr_convnet")
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model
