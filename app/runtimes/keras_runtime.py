"""TensorFlow runtimes built from the Keras model: the float32 reference, and oneDNN bfloat16.

``keras`` is the definition of right: one concrete ``tf.function`` per bucket, traced up front, so a batch
that is not a bucket size is an error rather than a silent retrace.

``keras-fp16`` is the same on a GPU with ``mixed_float16`` (tensor cores).

``keras-bf16`` rebuilds the same layers under Keras' ``mixed_bfloat16`` policy (weights float32, compute in
bfloat16: oneDNN's AVX512_BF16 kernels), keeping the output layer float32 so the softmax is exact. It is local to
this model, unlike TensorFlow's global ``auto_mixed_precision_onednn_bfloat16`` switch, which would also turn
the reference (and Grad-CAM) into bf16. Only offered where the CPU has avx512_bf16: elsewhere bf16 is emulated
and slower than float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.runtimes.base import Runtime, RuntimeUnavailable, cpu_flags
from model_store.artifact import LoadedArtifact


def _gpu_present() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


class KerasRuntime(Runtime):
    name = "keras"
    description = "TensorFlow float32, the Keras model as stored (the reference)"

    def __init__(self, model: Any, input_shape: tuple[int, ...], buckets: list[int]) -> None:
        import tensorflow as tf

        super().__init__(input_shape, buckets)
        self.model = model

        @tf.function
        def run(x: tf.Tensor) -> tf.Tensor:
            return model(x, training=False)

        self.traced = run
        self._concrete = {size: run.get_concrete_function(tf.TensorSpec((size, *input_shape), tf.float32))
                          for size in buckets}

    @classmethod
    def load(cls, artifact: LoadedArtifact, buckets: list[int]) -> Runtime:
        return cls(artifact.model, artifact.metadata.preprocessing.input_shape, buckets)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        function = self._concrete.get(batch.shape[0])
        if function is None:
            raise ValueError(f"batch of {batch.shape[0]} is not one of the compiled sizes {self.buckets}")
        return function(tf.convert_to_tensor(batch, dtype=tf.float32)).numpy()


def mixed_clone(model: Any, policy: str = "mixed_bfloat16") -> Any:
    """The same architecture and weights, every layer but the last computing in the policy's 16-bit type."""
    import keras

    last = model.layers[-1].name

    def clone_layer(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name != last and not isinstance(layer, keras.layers.InputLayer) and "dtype" in config:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


class KerasBf16Runtime(KerasRuntime):
    name = "keras-bf16"
    description = "TensorFlow oneDNN bfloat16 compute (Keras mixed_bfloat16), float32 output layer"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if "avx512_bf16" not in cpu_flags() and "amx_bf16" not in cpu_flags():
            return "the CPU has no avx512_bf16/amx_bf16 (bf16 would be emulated, slower than float32)"
        return None

    @classmethod
    def load(cls, artifact: LoadedArtifact, buckets: list[int]) -> Runtime:
        if _gpu_present():
            raise RuntimeUnavailable("keras-bf16 is a CPU runtime; on a GPU use keras")
        return cls(mixed_clone(artifact.model, "mixed_bfloat16"), artifact.metadata.preprocessing.input_shape,
                   buckets)


class KerasFp16Runtime(KerasRuntime):
    name = "keras-fp16"
    description = "TensorFlow on the GPU, float16 compute (Keras mixed_float16, tensor cores), float32 output layer"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None if _gpu_present() else "no GPU visible to TensorFlow (float16 is a GPU runtime)"

    @classmethod
    def load(cls, artifact: LoadedArtifact, buckets: list[int]) -> Runtime:
        return cls(mixed_clone(artifact.model, "mixed_float16"), artifact.metadata.preprocessing.input_shape,
                   buckets)
