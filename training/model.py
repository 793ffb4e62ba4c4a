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
    # "plain" is v1's stack; "sepres" is a stride-2 stem, residual depthwise-separable blocks with batch norm
    # and global average pooling ("filters" = stem width, one width per block, last conv width)
    arch: str = "plain"
    weight_decay: float = 0.0
    # softened targets (1 - s) + s / classes: a cap on confidence, against over-confident probabilities
    label_smoothing: float = 0.0
    # batch-norm moving averages must keep up with fast-moving weights, or eval-mode outputs drift far from
    # training-mode ones (seen: validation stuck at "all PNEUMONIA" with Keras' default 0.99)
    bn_momentum: float = 0.9
    stem_pool: bool = True  # sepres: 2x2 max pool after the stem (blocks start at 1/4 resolution: 4x cheaper)

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["filters"] = list(self.filters)
        return data


def build_model(config: ModelConfig, one_hot: bool = False) -> keras.Model:
    """The network ``config.arch`` names, compiled with Adam (AdamW-style decay when ``weight_decay``).

    Labels are class indices, or one-hot / soft rows with ``one_hot`` (needed by mixup); label smoothing
    implies one-hot labels."""
    if config.arch == "sepres":
        model = _build_sepres(config)
    elif config.arch == "plain":
        model = _build_plain(config)
    else:
        raise ValueError(f"arch must be 'plain' or 'sepres', got {config.arch!r}")
    optimizer = keras.optimizers.Adam(config.learning_rate, weight_decay=config.weight_decay or None)
    loss: str | keras.losses.Loss = "sparse_categorical_crossentropy"
    if one_hot or config.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])
    return model


def _build_sepres(config: ModelConfig) -> keras.Model:
    """Stride-2 conv stem (cheap at full resolution), then per width a residual block of two 3x3 separable
    convs with batch norm and a 2x2 max pool, then ONE plain SeparableConv2D ("last_conv", ReLU, the layer
    Grad-CAM reads), global average pooling, dropout and a softmax. Plain built-in layers only."""
    if len(config.filters) < 3:
        raise ValueError("sepres needs filters = stem width, one or more block widths, last conv width")
    layers = keras.layers
    inputs = keras.Input((config.input_size, config.input_size, 1), name="image")
    x = layers.Conv2D(config.filters[0], 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(momentum=config.bn_momentum, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    if config.stem_pool:
        x = layers.MaxPooling2D(2, name="stem_pool")(x)
    for index, width in enumerate(config.filters[1:-1], start=1):
        name = f"block{index}"
        shortcut = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(momentum=config.bn_momentum, name=f"{name}_proj_bn")(shortcut)
        y = layers.SeparableConv2D(width, 3, padding="same", use_bias=False, name=f"{name}_sep1")(x)
        y = layers.BatchNormalization(momentum=config.bn_momentum, name=f"{name}_bn1")(y)
        y = layers.ReLU(name=f"{name}_relu1")(y)
        y = layers.SeparableConv2D(width, 3, padding="same", use_bias=False, name=f"{name}_sep2")(y)
        y = layers.BatchNormalization(momentum=config.bn_momentum, name=f"{name}_bn2")(y)
        x = layers.Add(name=f"{name}_add")([shortcut, y])
        x = layers.ReLU(name=f"{name}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
    x = layers.SeparableConv2D(config.filters[-1], 3, padding="same", activation="relu", name="last_conv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(config.dropout, name="dropout")(x)
    outputs = layers.Dense(config.num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="cxr_sepres")


def _build_plain(config: ModelConfig) -> keras.Model:
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
    return keras.Sequential(layers, name="cxr_convnet")
