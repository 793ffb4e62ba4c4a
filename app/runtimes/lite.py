"""TFLite (LiteRT) with dynamic-range int8 quantization: weights int8, activations quantized per image at run
time (so an image's result does not depend on the other images in its batch), float32 in and out.

Converted in memory from the Keras model with TensorFlow's own converter (no new dependency) and cached by the
artifact's sha256 for this process. Runs on the LiteRT interpreter (``ai-edge-litert``) where installed,
otherwise on ``tf.lite.Interpreter`` (same kernels, same speed here; TensorFlow marks it deprecated).
Interpreters are allocated for one image at load, so no tensor is ever re-allocated while serving.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from app.pinning import every_cpu, started_cpu_count
from app.runtimes.base import CONVERSIONS, Runtime, RuntimeUnavailable
from app.workers import usable_cpus
from model_store.artifact import LoadedArtifact

log = logging.getLogger("cxr.runtimes")


def compute_threads() -> int:
    """TF_NUM_INTRAOP_THREADS where set (cxr-serve sets it to each worker's share of the CPUs, its cgroup quota
    included, which the affinity mask does not show: app.workers), else the cores this process may run on."""
    configured = os.environ.get("TF_NUM_INTRAOP_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return usable_cpus()


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter


def convert_tflite(model: Any, *, quantize: bool) -> bytes:
    """A TFLite flatbuffer, dynamic-range int8 with ``quantize``, else float32. ``from_keras_model`` (not
    ``from_concrete_functions``, which silently drops the weights of a Keras 3 model)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    with contextlib.redirect_stdout(io.StringIO()):  # the Keras export prints its temporary SavedModel
        return bytes(converter.convert())


def convert_int8(model: Any) -> bytes:
    return convert_tflite(model, quantize=True)


class LiteInterpreter:
    """One interpreter for a fixed input shape. Not thread-safe: one per thread, or a locked ``_Bucket``."""

    def __init__(self, flatbuffer: bytes, shape: tuple[int, ...], threads: int = 1,
                 interpreter_class: Any = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            self.interpreter = (interpreter_class or _interpreter_class())(model_content=flatbuffer,
                                                                          num_threads=threads)
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.interpreter.resize_tensor_input(self.input, list(shape))
        self.interpreter.allocate_tensors()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input, np.ascontiguousarray(batch, dtype=np.float32))
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self.output), dtype=np.float32)


class _Bucket(LiteInterpreter):
    def __init__(self, interpreter_class: Any, flatbuffer: bytes, shape: tuple[int, ...], threads: int) -> None:
        super().__init__(flatbuffer, shape, threads, interpreter_class)
        self.lock = threading.Lock()  # an interpreter is not thread-safe

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self.lock:
            return super().run(batch)


class TFLiteInt8Runtime(Runtime):
    """Images run one at a time: per image, this model's int8 kernels cost the same at any batch size (measured:
    ~190 images per CPU-second at batch 1 and 16), and a batch-1 call keeps its activations in cache. A lone
    image gets every core (lowest latency); a batch is split across one single-threaded interpreter per core,
    running in parallel (TFLite releases the GIL while it computes), which measured ~15 % more images per
    CPU-second than one multi-threaded call on the whole batch. Padding rows are never computed
    (``needs_padding`` is False), so the batcher sends batches unpadded."""

    name = "tflite-int8"
    description = "TFLite/LiteRT dynamic-range int8 (int8 weights, per-image activation quantization)"
    needs_padding = False

    def __init__(self, flatbuffer: bytes, input_shape: tuple[int, ...], buckets: list[int],
                 threads: int | None = None) -> None:
        super().__init__(input_shape, buckets)
        self.flatbuffer = flatbuffer
        threads = threads or compute_threads()
        interpreter_class = _interpreter_class()
        one = (1, *input_shape)
        self._lone = _Bucket(interpreter_class, flatbuffer, one, threads)
        self._workers = [_Bucket(interpreter_class, flatbuffer, one, 1) for _ in range(threads)] if threads > 1 else []
        self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="tflite") if threads > 1 else None
        # a worker's share of the cores is less than the machine (several workers): a lone image may take all
        every = usable_cpus(started_cpu_count())  # a pinned worker's own mask is one CPU: the machine's count
        with every_cpu():  # a pinned worker's (app/pinning.py): the wide pool's threads may use every core
            self._wide = _Bucket(interpreter_class, flatbuffer, one, every) if every > threads else None
            matches = self._wide is not None and self._wide_matches(one, every, threads)
        if matches:
            self.wide = self._predict_wide
        else:
            self._wide = None

    def _wide_matches(self, one: tuple[int, ...], every: int, threads: int) -> bool:
        """XNNPACK splits a layer's outputs between threads, so the answer should not depend on their number:
        checked (bit for bit) before the wide interpreter is used, as the runtime itself is on the golden set."""
        assert self._wide is not None
        x = np.random.default_rng(0).random(one, dtype=np.float32)
        if np.array_equal(self._wide.run(x), self._lone.run(x)):
            return True
        log.warning("runtime %s: %d threads answer differently from %d; a lone image stays on its worker's "
                    "share of the cores", self.name, every, threads)
        return False

    def _predict_wide(self, batch: np.ndarray) -> np.ndarray:
        assert self._wide is not None
        return np.concatenate([self._wide.run(batch[i : i + 1]) for i in range(batch.shape[0])])

    @classmethod
    def load(cls, artifact: LoadedArtifact, buckets: list[int]) -> Runtime:
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            raise RuntimeUnavailable("tflite-int8 is a CPU runtime; on a GPU use keras")
        flatbuffer = CONVERSIONS.get_or_make(artifact.sha256, cls.name, lambda: convert_int8(artifact.model))
        return cls(flatbuffer, artifact.metadata.preprocessing.input_shape, buckets)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if not 1 <= n <= self.buckets[-1]:
            raise ValueError(f"batch of {n} is outside 1..{self.buckets[-1]}")
        if n == 1 or self._pool is None:
            return np.concatenate([self._lone.run(batch[i : i + 1]) for i in range(n)])
        shards = [rows for rows in np.array_split(np.arange(n), len(self._workers)) if len(rows)]

        def work(worker: _Bucket, rows: np.ndarray) -> list[np.ndarray]:
            return [worker.run(batch[i : i + 1]) for i in rows]

        others = [self._pool.submit(work, worker, rows) for worker, rows in zip(self._workers[1:], shards[1:],
                                                                               strict=False)]
        outputs = work(self._workers[0], shards[0])
        for future in others:
            outputs.extend(future.result())
        return np.concatenate(outputs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
