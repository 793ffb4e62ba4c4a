"""One small interface for every way of running the model: load from the Keras model, warm at each bucket,
predict a batch. The HDF5 artifact stays the one source of truth: a runtime converts from the loaded Keras
model in memory (conversions are cached in this process by the artifact's sha256, never written to disk)."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from model_store.artifact import LoadedArtifact


class RuntimeUnavailable(RuntimeError):
    """This runtime cannot run here (missing package, CPU without the instructions it needs)."""


class Runtime(ABC):
    """A compiled model for fixed batch sizes (the batcher's buckets)."""

    name: ClassVar[str]
    #: what it is, for /models and the docs
    description: ClassVar[str] = ""
    #: compiled for the bucket sizes only (the batcher pads to them); False: any size up to the largest
    needs_padding: ClassVar[bool] = True

    def __init__(self, input_shape: tuple[int, ...], buckets: list[int]) -> None:
        self.input_shape = tuple(input_shape)
        self.buckets = list(buckets)
        #: ``predict`` on every core this process may use, for a lone image while the other workers are idle
        #: (app/inflight.py); None where ``predict`` already uses them all, or the runtime has no such mode
        self.wide: Callable[[np.ndarray], np.ndarray] | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when this runtime can run on this machine, else why not (checked before loading)."""
        return None

    @classmethod
    @abstractmethod
    def load(cls, artifact: LoadedArtifact, buckets: list[int]) -> Runtime:
        """Build from the artifact's Keras model for these batch sizes."""

    @abstractmethod
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(b, *input_shape) float32 with b one of the buckets -> (b, classes) float32 probabilities."""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.predict(batch)

    def warm(self, classes: int) -> None:
        """Run every bucket once (first calls allocate and compile), checking the output shape."""
        for size in self.buckets:
            out = self.predict(np.zeros((size, *self.input_shape), dtype=np.float32))
            if out.shape != (size, classes):
                raise RuntimeError(f"runtime {self.name}: output shape {out.shape} for a batch of {size}, "
                                   f"expected {(size, classes)}")

    def predict_any(self, x: np.ndarray) -> np.ndarray:
        """Any number of inputs: chunks of the largest bucket, each padded to a bucket (verification)."""
        outputs = []
        largest = self.buckets[-1]
        for start in range(0, len(x), largest):
            chunk = np.asarray(x[start : start + largest], dtype=np.float32)
            size = next(b for b in self.buckets if b >= len(chunk)) if self.needs_padding else len(chunk)
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.float32)])
            outputs.append(np.asarray(self.predict(padded))[: len(chunk)])
        return np.concatenate(outputs)


class ConversionCache:
    """Converted models by (artifact sha256, runtime name), in memory, a few at most: a hot reload of the same
    file, or several apps in one process (tests), convert once."""

    def __init__(self, capacity: int = 4) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, sha256: str, name: str, make: Callable[[], Any]) -> Any:
        key = (sha256, name)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()  # outside the lock: a conversion takes seconds
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


CONVERSIONS = ConversionCache()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux); empty where unknown, which makes bf16 count as unavailable."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()
