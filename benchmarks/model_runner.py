"""The model as the service runs it, for the benchmark's LitServe server and in-process ceiling.

``runtime="keras"`` mirrors the service's float32 reference (one concrete ``tf.function`` per power-of-two
bucket, traced up front) without depending on the service's code, so a comparison with it measures serving
machinery plus runtime. Any other runtime name (``auto``, ``tflite-int8``, ...) goes through the service's own
``app.runtimes.select_runtime`` with the artifact's golden set (or the synthetic one), exactly as the model
manager does at load, so the in-process ceiling runs what the service runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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
    run: Callable[[np.ndarray], np.ndarray]  # a bucket-sized batch -> probabilities
    runtime: str = "keras"

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, S, S, 1) float32, any n <= the largest bucket -> (n, classes); padded to the bucket like the
        service's batcher."""
        n = len(x)
        padded = bucket_for(n, self.buckets)
        if padded > n:
            x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), dtype=x.dtype)])
        return np.asarray(self.run(x))[:n]


def _keras_functions(model, input_shape: tuple[int, ...], buckets: list[int]) -> Callable[[np.ndarray], np.ndarray]:
    import tensorflow as tf

    @tf.function
    def run(x: tf.Tensor) -> tf.Tensor:
        return model(x, training=False)

    functions = {size: run.get_concrete_function(tf.TensorSpec((size, *input_shape), tf.float32))
                 for size in buckets}
    return lambda x: functions[len(x)](tf.convert_to_tensor(x, dtype=tf.float32)).numpy()


def load_runnable(store: str, name: str, version: str | None, max_batch_size: int,
                  runtime: str = "keras") -> RunnableModel:
    _, path = ModelRegistry(store).resolve(name, version)
    artifact = load_artifact(path)
    spec = artifact.metadata.preprocessing
    buckets = bucket_sizes(max_batch_size)
    if runtime == "keras":
        run = _keras_functions(artifact.model, spec.input_shape, buckets)
    else:
        from app.runtimes import select_runtime
        from model_store.golden import load_or_compute

        golden = load_or_compute(artifact.path, artifact.model, artifact.metadata)
        selected = select_runtime(runtime, artifact, buckets, golden).runtime
        run, runtime = selected.predict, selected.name
    runnable = RunnableModel(spec, list(artifact.metadata.class_names), buckets, run, runtime)
    for size in buckets:  # warm every shape, as the service does
        runnable.predict(np.zeros((size, *spec.input_shape), dtype=np.float32))
    return runnable
