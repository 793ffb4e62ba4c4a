"""The model as the service runs it, for the benchmark's LitServe server and in-process ceiling.

Mirrors ``app.model_manager.compile_predict`` (one concrete ``tf.function`` per power-of-two bucket, traced up
front) without depending on its signature, so the comparisons measure serving machinery, not model code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.batching import bucket_for, bucket_sizes
from model_store.artifact import load_artifact
from model_store.preprocessing import PreprocessingSpec
from model_store.registry import ModelRegistry


@dataclass
class RunnableModel:
    spec: PreprocessingSpec
    class_names: list[str]
    buckets: list[int]
    functions: dict[int, Any]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, S, S, 1) float32, any n <= the largest bucket -> (n, classes); padded to the bucket like the
        service's batcher."""
        import tensorflow as tf

        n = len(x)
        padded = bucket_for(n, self.buckets)
        if padded > n:
            x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), dtype=x.dtype)])
        return self.functions[padded](tf.convert_to_tensor(x, dtype=tf.float32)).numpy()[:n]


def load_runnable(store: str, name: str, version: str | None, max_batch_size: int) -> RunnableModel:
    import tensorflow as tf

    _, path = ModelRegistry(store).resolve(name, version)
    artifact = load_artifact(path)
    spec = artifact.metadata.preprocessing
    model = artifact.model

    @tf.function
    def run(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    buckets = bucket_sizes(max_batch_size)
    functions = {size: run.get_concrete_function(tf.TensorSpec((size, *spec.input_shape), tf.float32))
                 for size in buckets}
    runnable = RunnableModel(spec, list(artifact.metadata.class_names), buckets, functions)
    for size in buckets:  # warm every shape, as the service does
        runnable.predict(np.zeros((size, *spec.input_shape), dtype=np.float32))
    return runnable
