"""Grad-CAM (Selvaraju et al. 2017) for the served Keras classifier, and the images a viewer lays over an X-ray.

The explained layer is the last convolution (Conv2D, SeparableConv2D or DepthwiseConv2D) in the model's layer
graph; the score is the positive class's log-odds taken from the pre-softmax logits where the head allows it
(a softmax saturates near 0 and 1, and its gradient then vanishes). Gradients come from ``tf.GradientTape``
inside one concrete ``tf.function`` per batch size, separate from the serving function, so plain predictions
never build a gradient graph. Explanations always use the Keras model (``ServingModel.artifact.model``), whatever
runtime serves the plain predictions: Grad-CAM needs the gradient.

Maps are computed on the model input (the upload stretched, or centre-cropped, to a square) and placed back on
the upload's own geometry, so the heatmap lands on the original image.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from app.errors import ServiceError
from model_store.preprocessing import PreprocessingSpec, to_unit_float

log = logging.getLogger("cxr.explain")

METHOD = "grad-cam"
GRID_SIZE = 14  # cells per side of the coarse grid sent to software (the map at model-input coordinates)
CONV_CLASSES = ("Conv2D", "SeparableConv2D", "DepthwiseConv2D")
# jet-like ramp: blue (cold) -> cyan -> green -> yellow -> red (hot), the convention of CAM figures
_RAMP = np.array([[0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]], dtype=np.float32)
_MAX_ALPHA = 0.85  # the hottest cell still lets the film show through


class ExplanationUnavailableError(ServiceError):
    """The active model cannot be explained with Grad-CAM (it has no convolutional layer)."""

    code, status = "explanation_unavailable", 422


@dataclass
class Explanation:
    layer: str
    grid: np.ndarray  # (GRID_SIZE, GRID_SIZE) float32 in [0, 1], rows top to bottom, on the model input
    overlay_png: bytes  # RGBA heatmap at the upload's aspect ratio, transparent where the map is cold
    width: int
    height: int
    timing_ms: float = 0.0
    method: str = METHOD
    # the map at the explained layer's resolution, [0, 1]: what the DICOM heatmap places on the full film
    cam: np.ndarray | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, object]:
        return {"method": self.method, "layer": self.layer,
                "grid": [[round(float(v), 4) for v in row] for row in self.grid],
                "overlay_png": base64.b64encode(self.overlay_png).decode("ascii"),
                "width": self.width, "height": self.height, "timing_ms": round(self.timing_ms, 3)}


# -- the model side ------------------------------------------------------------------------------------------
def _walk_back(model: Any, stop: Callable[[Any], bool] = lambda operation: False) -> Iterator[tuple[Any, Any]]:
    """(operation, its output tensor) for every tensor of ``model``'s own graph, walked back from the outputs;
    the walk does not go past an operation for which ``stop`` is true."""
    seen: set[int] = set()
    stack = list(model.outputs)
    while stack:
        tensor = stack.pop()
        history = getattr(tensor, "_keras_history", None)
        if history is None or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        operation = history.operation
        yield operation, tensor
        if not stop(operation):
            stack.extend(operation._inbound_nodes[history.node_index].input_tensors)


def graph_outputs(model: Any) -> dict[str, Any]:
    """Layer name -> its output tensor in ``model``'s own graph, walked back from the model's outputs.

    ``layer.output`` is not safe: it is the layer's FIRST call, and a model loaded from HDF5 has called each layer
    several times while being rebuilt, so that tensor may belong to a stale graph that the model never runs."""
    found: dict[str, Any] = {}
    for operation, tensor in _walk_back(model):
        found.setdefault(operation.name, tensor)
    return found


def find_target_layer(model: Any, name: str | None = None) -> Any:
    """The layer to explain: ``name`` if given, else the last convolution in the model's (topological) order."""
    if name:
        try:
            layer = model.get_layer(name)
        except ValueError:
            raise ExplanationUnavailableError(f"the model has no layer named {name!r} to explain "
                                              "(CXR_EXPLAIN_LAYER); unset it to use the last convolution") from None
        return layer
    convs = [layer for layer in model.layers if type(layer).__name__ in CONV_CLASSES]
    if not convs:
        raise ExplanationUnavailableError(
            f"model {model.name!r} has no convolutional layer ({', '.join(CONV_CLASSES)}) at its top level, so "
            "Grad-CAM cannot explain it; send the request without explain=true")
    return convs[-1]


def branch_target_layers(model: Any) -> list[Any]:
    """The last convolution on every path into the output: one for a single network, one per member for an
    ensemble of side-by-side networks (training/ensemble.py), whose score is the mean of the members'."""
    def is_conv(operation: Any) -> bool:
        return type(operation).__name__ in CONV_CLASSES

    found: list[Any] = []
    for operation, _ in _walk_back(model, stop=is_conv):
        if is_conv(operation) and operation not in found:
            found.append(operation)
    order = {id(layer): index for index, layer in enumerate(model.layers)}
    return sorted(found, key=lambda layer: order.get(id(layer), 0))


def _head(model: Any) -> tuple[Any, Any]:
    """(tensor to fetch, (function of it -> logits, activation) or None). The logits are rebuilt from the last
    Dense layer's input when it applies the softmax/sigmoid itself, or taken from a separate Softmax/Activation
    layer's input; otherwise the probabilities themselves are fetched."""
    import keras

    output = model.outputs[0]
    last = output._keras_history.operation
    head_input = last._inbound_nodes[output._keras_history.node_index].input_tensors
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if isinstance(last, keras.layers.Dense) and activation in ("softmax", "sigmoid") and len(head_input) == 1:
        def dense_logits(h: Any) -> Any:
            z = keras.ops.matmul(h, last.kernel)
            return z + last.bias if last.use_bias else z
        return head_input[0], (dense_logits, activation)
    if isinstance(last, keras.layers.Softmax) or (isinstance(last, keras.layers.Activation)
                                                  and activation in ("softmax", "sigmoid")):
        return head_input[0], (lambda h: h, "sigmoid" if activation == "sigmoid" else "softmax")
    return output, None


class GradCam:
    """Grad-CAM maps for a batch of model inputs: (N, S, S, C) float32 -> (N, h, w) float32 in [0, 1] at the
    explained layer's resolution. One concrete function per batch size, traced on first use."""

    def __init__(self, model: Any, positive_index: int, layer: str | None = None) -> None:
        import keras
        import tensorflow as tf

        # one layer named (CXR_EXPLAIN_LAYER), else the last convolution of each branch (one, unless an ensemble)
        self.layers = [find_target_layer(model, layer)] if layer else branch_target_layers(model)
        if not self.layers:
            self.layers = [find_target_layer(model)]  # raises the precise "no convolutional layer" error
        self.layer = self.layers[-1]
        tensors = graph_outputs(model)
        features = [tensors.get(target.name) for target in self.layers]
        for target, tensor in zip(self.layers, features, strict=True):
            if tensor is None or len(tensor.shape) != 4:
                raise ExplanationUnavailableError(f"layer {target.name!r} has no spatial (4-D) output in the "
                                                  "model's graph; Grad-CAM needs one")
        fetch, head = _head(model)
        grad_model = keras.Model(inputs=model.inputs, outputs=[*features, fetch])
        size = tuple(int(d) for d in features[0].shape[1:3])
        others = [i for i in range(int(model.outputs[0].shape[-1])) if i != positive_index]

        def score(out: tf.Tensor) -> tf.Tensor:
            out = tf.cast(out, tf.float32)
            if head is None:  # probabilities only: log-odds from them, clipped away from 0 and 1
                p = tf.clip_by_value(out, 1e-7, 1.0)
                rest = tf.clip_by_value(tf.reduce_sum(tf.gather(out, others, axis=1), axis=1), 1e-7, 1.0)
                return tf.math.log(p[:, positive_index]) - tf.math.log(rest)
            to_logits, activation = head
            z = tf.cast(to_logits(out), tf.float32)
            if activation == "sigmoid" or not others:
                return z[:, positive_index]
            # log P(positive) / P(any other) under the softmax: z_pos - logsumexp(z_others)
            return z[:, positive_index] - tf.reduce_logsumexp(tf.gather(z, others, axis=1), axis=1)

        def cam(x: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                *features, out = grad_model(x, training=False)
                target = score(out)
            # samples do not interact (inference mode), so the gradient of the sum is each sample's own gradient
            grads = tape.gradient(target, features)
            total = 0.0
            for feature, grad in zip(features, grads, strict=True):  # branches add up, as their scores do
                weights = tf.reduce_mean(tf.cast(grad, tf.float32), axis=(1, 2), keepdims=True)
                branch = tf.reduce_sum(weights * tf.cast(feature, tf.float32), axis=-1, keepdims=True)
                if tuple(branch.shape[1:3]) != size:
                    branch = tf.image.resize(branch, size)
                total += branch
            return tf.nn.relu(total[..., 0])

        self._traced = tf.function(cam)
        self._input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        self._concrete: dict[int, Any] = {}
        self._lock = threading.Lock()

    @property
    def layer_name(self) -> str:
        return "+".join(str(layer.name) for layer in self.layers)

    def _function(self, size: int) -> Any:
        function = self._concrete.get(size)
        if function is None:
            import tensorflow as tf

            with self._lock:
                function = self._concrete.get(size)
                if function is None:
                    spec = tf.TensorSpec((size, *self._input_shape), tf.float32)
                    function = self._concrete[size] = self._traced.get_concrete_function(spec)
        return function

    def warm(self, size: int = 1) -> None:
        """Trace and run the function for ``size`` once, so the first real explanation does not pay for it."""
        if size not in self._concrete:
            self.maps(np.zeros((size, *self._input_shape), dtype=np.float32))

    def warmed(self, size: int = 1) -> bool:
        return size in self._concrete

    def maps(self, batch: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        batch = np.asarray(batch, dtype=np.float32)
        raw = self._function(batch.shape[0])(tf.convert_to_tensor(batch)).numpy()
        peak = raw.reshape(len(raw), -1).max(axis=1).reshape(-1, 1, 1)
        # an all-zero map (no location raises the score) stays zero rather than dividing by zero
        return np.divide(raw, peak, out=np.zeros_like(raw), where=peak > 0).astype(np.float32)


# -- the image side ------------------------------------------------------------------------------------------
def resize_map(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of a float map (area-averaging when shrinking), clipped to [0, 1]."""
    image = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    return np.clip(np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32), 0, 1)


def display_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(width, height) with the upload's aspect ratio and the longer side at most ``max_side``."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def place_on_image(cam: np.ndarray, width: int, height: int, spec: PreprocessingSpec) -> np.ndarray:
    """The model-input map back on an image of ``width`` x ``height``: stretched back (crop "none"), or into the
    centred square the model saw (crop "center"), zero outside it."""
    if spec.crop == "none":
        return resize_map(cam, width, height)
    side = min(width, height)
    out = np.zeros((height, width), dtype=np.float32)
    top, left = (height - side) // 2, (width - side) // 2
    out[top : top + side, left : left + side] = resize_map(cam, side, side)
    return out


def _lookup_table() -> np.ndarray:
    position = np.linspace(0, 1, 256) * (len(_RAMP) - 1)
    low = np.minimum(position.astype(np.int32), len(_RAMP) - 2)
    frac = (position - low)[:, None]
    rgb = _RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac
    alpha = _MAX_ALPHA * np.linspace(0, 1, 256) * 255  # linear: cold regions stay nearly clear
    return np.concatenate([rgb, alpha[:, None]], axis=1).round().astype(np.uint8)


_LUT = _lookup_table()


def colorize(heat: np.ndarray) -> np.ndarray:
    """[0, 1] map -> RGBA uint8: jet-like colour, opacity rising with the value (cold = transparent)."""
    return _LUT[(np.clip(heat, 0, 1) * 255 + 0.5).astype(np.uint8)]


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # level 1: under half the encode time of the default level 6 (measured: 6 vs 16 ms for a 512 px overlay)
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def explanation_for(cam: np.ndarray, image_shape: tuple[int, ...], spec: PreprocessingSpec, layer: str,
                    max_side: int) -> Explanation:
    """One image's Grad-CAM map (layer resolution, [0, 1]) -> grid + overlay at the upload's geometry."""
    width, height = display_size(image_shape[0], image_shape[1], max_side)
    overlay = png_bytes(colorize(place_on_image(cam, width, height, spec)))
    return Explanation(layer=layer, grid=resize_map(cam, GRID_SIZE, GRID_SIZE), overlay_png=overlay,
                       width=width, height=height, cam=cam)


def preview_png(image: np.ndarray, max_side: int) -> bytes:
    """The decoded grayscale upload as an 8-bit PNG with the upload's aspect ratio, like the overlay (so a viewer
    can stack the two, each scaled to one box): what the server saw, e.g. a DICOM after its rescale and
    photometric handling."""
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[..., 0]
    width, height = display_size(image.shape[0], image.shape[1], max_side)
    unit = to_unit_float(image)
    resized = Image.fromarray(np.ascontiguousarray(unit), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    return png_bytes(np.clip(np.asarray(resized) * 255 + 0.5, 0, 255).astype(np.uint8))


class ExplainerCache:
    """One :class:`GradCam` per served model, built on first use. Keyed by identity (the serving model object
    changes on every reload); two entries cover requests still finishing on the previous model."""

    def __init__(self, layer: str | None = None) -> None:
        self.layer = layer
        self._entries: list[tuple[object, GradCam]] = []
        self._lock = threading.Lock()

    def get(self, owner: object, model: Any, positive_index: int) -> GradCam:
        for key, explainer in self._entries:
            if key is owner:
                return explainer
        with self._lock:
            for key, explainer in self._entries:
                if key is owner:
                    return explainer
            explainer = GradCam(model, positive_index, self.layer)
            self._entries = [*self._entries[-1:], (owner, explainer)]
            return explainer

    def ready_for(self, owner: object) -> bool:
        """Whether ``owner``'s explainer exists and is traced for single images."""
        return any(key is owner and explainer.warmed() for key, explainer in self._entries)

    def prepare(self, serving: Any) -> None:
        """Build and warm ``serving``'s explainer ahead of use (e.g. when someone opens the review page: tracing
        the gradient function takes a second or two). A model that cannot be explained is left alone."""
        try:
            self.get(serving, serving.artifact.model, serving.metadata.positive_index).warm()
        except ExplanationUnavailableError:
            return
        except Exception:  # nobody awaits this: say so in the log; the first explanation will retry and report
            log.warning("warming the Grad-CAM function failed", exc_info=True)

    def explain(self, serving: Any, x: np.ndarray, image_shape: tuple[int, ...], max_side: int) -> Explanation:
        """One preprocessed input of ``serving`` (a ServingModel: always its Keras model, whatever runtime serves
        plain predictions) -> its explanation on an image of ``image_shape``. Runs in a decode thread."""
        started = time.perf_counter()
        meta = serving.metadata
        explainer = self.get(serving, serving.artifact.model, meta.positive_index)
        cam = explainer.maps(x[np.newaxis])[0]
        explanation = explanation_for(cam, image_shape, meta.preprocessing, explainer.layer_name, max_side)
        explanation.timing_ms = (time.perf_counter() - started) * 1000
        return explanation
