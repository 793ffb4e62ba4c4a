"""The active model: loaded artifact + compiled predict function + its own batcher, swappable as a whole.

Routes ask the manager for the current ``ServingModel``; a reload builds and warms a new one beside the old,
then switches the reference (atomic in Python), then stops the old batcher, which drains what it accepted.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.batching import BatchObserver, DynamicBatcher, bucket_sizes
from app.errors import NotReadyError, OperatingPointUnavailableError
from app.gate import InputGate, load_gate
from app.metrics import Metrics
from app.operating_points import check_configured
from app.runtimes import Selection, candidates, select_runtime
from app.runtimes.keras_runtime import KerasRuntime
from app.settings import Settings
from model_store.artifact import ArtifactError, LoadedArtifact, ModelMetadata, load_artifact, read_metadata
from model_store.golden import load_or_compute, read_golden
from model_store.registry import ModelNotFoundError, ModelRegistry

log = logging.getLogger("cxr.model")


def configure_device(device: str) -> bool:
    """Pick CPU/GPU for TensorFlow; returns True when a GPU will be used. Memory growth on every GPU."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if device == "cpu":
        if gpus:
            try:
                tf.config.set_visible_devices([], "GPU")
            except RuntimeError:  # TensorFlow already initialised its devices (another app in this process)
                log.warning("CXR_DEVICE=cpu, but TensorFlow was already initialised with its GPUs visible")
        return False
    if device == "gpu" and not gpus:
        raise RuntimeError("CXR_DEVICE=gpu but TensorFlow sees no GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialised (second app in one process)
            tf.config.experimental.set_memory_growth(gpu, True)
    return bool(gpus)


def compile_predict(model: Any, input_shape: tuple[int, ...], buckets: list[int]) -> KerasRuntime:
    """The float32 reference runtime (kept for callers of the old name): one concrete ``tf.function`` per
    bucket, traced up front; ``.traced`` is the polymorphic function."""
    return KerasRuntime(model, input_shape, buckets)


def configured_point_problem(settings: Settings) -> str | None:
    """Why the version to serve cannot answer at CXR_OPERATING_POINT, read from its metadata alone (no Keras),
    so that ``cxr-serve`` refuses to start with a clear message instead of serving nothing. None when it can,
    or when the model cannot be found at all (the load reports that)."""
    if settings.operating_point is None:
        return None
    try:
        number, path = ModelRegistry(settings.model_store).resolve(settings.model_name, settings.model_version)
        check_configured(read_metadata(path), settings.operating_point, number)
    except OperatingPointUnavailableError as exc:
        return exc.message
    except (ModelNotFoundError, ArtifactError):
        return None
    return None


@dataclass
class ServingModel:
    artifact: LoadedArtifact
    batcher: DynamicBatcher
    version: int
    runtime: Selection | None = None  # None only for models built before runtimes existed (tests)

    @property
    def metadata(self) -> ModelMetadata:
        return self.artifact.metadata

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.metadata.preprocessing.input_shape

    @property
    def runtime_name(self) -> str:
        return self.runtime.runtime.name if self.runtime is not None else "keras"

    def describe(self) -> dict[str, str]:
        return {"name": self.metadata.name, "version": str(self.version), "sha256": self.artifact.sha256,
                "runtime": self.runtime_name}


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.registry = ModelRegistry(settings.model_store)
        self.gpu = False
        self.gate: InputGate | None = None  # loaded before the classifier, so it is there whenever that is
        self._current: ServingModel | None = None
        self._reload_lock = threading.Lock()
        self.shutting_down = False
        self.load_error: str | None = None
        # the version the start-up load serves; a worker joining after a reload is given the published one
        self.start_version: int | str | None = settings.model_version

    # -- state -----------------------------------------------------------------------------------------
    @property
    def current(self) -> ServingModel:
        """The model to serve with. Requests still arriving during a graceful shutdown are served."""
        model = self._current
        if model is None or not model.batcher.running:
            raise NotReadyError(self.not_ready_reason() or "model not ready")
        return model

    @property
    def loaded(self) -> ServingModel | None:
        """The active model, None until the start-up load has finished; never raises (state reports)."""
        return self._current

    def not_ready_reason(self) -> str | None:
        if self.shutting_down:
            return "shutting down"
        if self.load_error is not None:
            return f"model failed to load: {self.load_error}"
        if self._current is None:
            return "model loading"
        if not self._current.batcher.running:
            return "batcher not running"
        return None

    # -- loading ---------------------------------------------------------------------------------------
    def build(self, version: int | str | None) -> ServingModel:
        """Load, compile, warm at every bucket size, and start a batcher. Does not touch the active model.
        A version without the configured operating point is refused first (OperatingPointUnavailableError)."""
        number, path = self.registry.resolve(self.settings.model_name, version)
        check_configured(read_metadata(path), self.settings.operating_point, number)
        artifact = load_artifact(path)
        batch_size = self.settings.batch_size_for(self.gpu)
        selection = self._select_runtime(artifact, bucket_sizes(batch_size))
        predict = selection.runtime
        name = artifact.metadata.name
        observer = BatchObserver(
            on_batch=lambda size, seconds: (self.metrics.batch_size.observe(size),
                                            self.metrics.inference.labels(name).observe(seconds)),
            on_queue_depth=self.metrics.queue_depth.set,
        )
        batcher = DynamicBatcher(predict, max_batch_size=batch_size, max_delay_s=self.settings.max_delay_ms / 1000,
                                 queue_limit=self.settings.queue_limit, observer=observer, name=f"batcher-{number}",
                                 input_shape=artifact.metadata.preprocessing.input_shape,
                                 pad=predict.needs_padding, wide=predict.wide)
        for size in batcher.buckets:  # warm-up: run every shape the batcher will ever send
            out = predict(np.zeros((size, *artifact.metadata.preprocessing.input_shape), dtype=np.float32))
            if out.shape != (size, len(artifact.metadata.class_names)):
                raise RuntimeError(f"model output shape {out.shape} for a batch of {size} is wrong")
        batcher.start()
        log.info("model %s v%d ready (sha256 %s, runtime %s, batch buckets %s)", name, number, artifact.sha256,
                 predict.name, batcher.buckets)
        return ServingModel(artifact=artifact, batcher=batcher, version=number, runtime=selection)

    def _select_runtime(self, artifact: LoadedArtifact, buckets: list[int]) -> Selection:
        """The runtime to serve with, verified on the golden set (stored, or computed now by the reference).
        The reference alone needs no synthetic set: it is the definition of right."""
        golden = read_golden(artifact.path)
        if golden is None and candidates(self.settings.runtime, self.gpu):
            golden = load_or_compute(artifact.path, artifact.model, artifact.metadata)
        return select_runtime(self.settings.runtime, artifact, buckets, golden, gpu=self.gpu)

    def load_initial(self) -> None:
        self.gpu = configure_device(self.settings.device)
        self.gate = load_gate(self.settings)
        self._activate(self.build(self.start_version))

    def load_initial_logged(self) -> None:
        """Start-up load (background thread). A failure is logged once, clearly, and turns both readiness and
        liveness red, so an orchestrator restarts the process instead of keeping a useless one."""
        try:
            self.load_initial()
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load, the service cannot serve predictions: %s", detail)
            # the probes and 503 bodies are open to clients: the log has the path, they get it store-relative
            self.load_error = detail.replace(str(self.registry.root), "<model store>")

    def reload(self, version: int | str | None = None) -> ServingModel:
        """Load ``version`` (default: latest) beside the active one, then switch. On any failure the active
        model keeps serving and the error propagates."""
        with self._reload_lock:
            new = self.build(version)
            old = self._current
            self._activate(new)
            if old is not None:
                old.batcher.stop()  # drains what it accepted: requests in flight finish on the old model
            return new

    def _activate(self, model: ServingModel) -> None:
        if self.shutting_down:  # a slow start-up load that finished after shutdown began
            model.batcher.stop()
            return
        self._current = model
        meta = model.metadata
        self.metrics.model_info.info({"name": meta.name, "version": str(model.version), "sha256": model.artifact.sha256,
                                      "input_size": str(meta.preprocessing.input_size),
                                      "runtime": model.runtime_name})
        self.metrics.ready.set(1)

    def begin_shutdown(self) -> None:
        """Readiness goes red at once (new work is still accepted until the server stops taking it)."""
        self.shutting_down = True
        self.metrics.ready.set(0)

    def shutdown(self) -> None:
        """Then the batcher refuses new work and drains what it accepted."""
        self.begin_shutdown()
        if self._current is not None:
            self._current.batcher.stop(timeout=self.settings.graceful_timeout)
