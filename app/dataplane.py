"""The transport-neutral core: bytes -> decode -> preprocess -> batcher -> model -> result.

REST routes (/predict and the v2 protocol) only parse requests and shape responses; they all call here.
CPU work (decode, preprocess) runs in a thread pool. The decode thread hands its input to the batcher itself
(``submit_or_run``): an image that finds the batcher idle runs there at once, one under load joins a batch.

In a worker with one core's share (one decode thread: the default, a worker per core), an image that is all the
worker has started (its only request and image in flight) and a JPEG small enough that its work takes a few
milliseconds runs on the event loop itself: the two thread hand-offs (to the decode thread and back) cost a lone
request ~0.5 ms of waking threads. Under load such a worker then often works through its requests one after
another, in the order its loop reads them: measured as fast as handing them to its one decode thread
(benchmarks/README.md). When no other worker has a request in flight either, a lone image's model call uses
every core (app/inflight.py), as a single process would.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app.audit.ticket import Ticket
from app.batching import Announcement, BatchResult
from app.errors import InvalidInputError, NotAChestXrayError, NotReadyError
from app.explain import ExplainerCache, Explanation
from app.gate import GateResult
from app.inflight import InFlight
from app.metrics import Metrics
from app.model_manager import ModelManager, ServingModel
from app.operating_points import OperatingPoint, calibration_of, choose
from app.settings import Settings
from model_store.imaging import decode, sniff_format
from model_store.preprocessing import PreprocessingError, preprocess
from model_store.site_calibration import final_probabilities

# a lone JPEG up to this size is prepared on the event loop: a JPEG's decoding work follows its bytes (and its
# scaled decode, draft), so it blocks the loop for a few ms (a 2008x1440 JPEG of 256 KB: ~5 ms). Other formats
# go to a decode thread: a smooth 16-megapixel PNG is 160 KB and takes ~0.3 s to decode
LONE_ON_LOOP_MAX_BYTES = 512 * 1024


def cheap_to_decode(data: bytes) -> bool:
    """A JPEG of at most LONE_ON_LOOP_MAX_BYTES: few milliseconds of work, known before decoding it."""
    return len(data) <= LONE_ON_LOOP_MAX_BYTES and sniff_format(data) == "JPEG"


NOTICE = "Decision support for qualified readers; not a diagnosis. A clinician must review every result."


@dataclass
class Prediction:
    model: ServingModel
    probabilities: np.ndarray
    timing_ms: dict[str, float]
    gate: GateResult | None = None  # None only where the gate cannot see the image (FP32 tensors) or is off
    warnings: list[str] = field(default_factory=list)
    explanation: Explanation | None = None  # Grad-CAM, only when asked for (explain=true)
    point: OperatingPoint | None = None  # the named threshold that decided; None: the version's default

    def __post_init__(self) -> None:
        if self.point is None:
            self.point = choose(self.model.metadata)

    @property
    def operating_point(self) -> str:
        assert self.point is not None
        return self.point.name

    @property
    def threshold(self) -> float:
        assert self.point is not None
        return self.point.threshold

    @property
    def calibration(self) -> dict[str, object]:
        return calibration_of(self.model.metadata)

    @property
    def class_names(self) -> list[str]:
        return self.model.metadata.class_names

    @property
    def label(self) -> str:
        meta = self.model.metadata
        positive = float(self.probabilities[meta.positive_index])
        if positive >= self.threshold:
            return meta.positive_class
        others = [(float(p), name) for name, p in zip(meta.class_names, self.probabilities, strict=True)
                  if name != meta.positive_class]
        return max(others)[1]

    def as_dict(self, request_id: str) -> dict[str, object]:
        meta = self.model.metadata
        return {
            "prediction": self.label,
            "probabilities": {name: float(p) for name, p in zip(meta.class_names, self.probabilities, strict=True)},
            "threshold": self.threshold,
            "operating_point": self.operating_point,
            "calibration": self.calibration,
            "positive_class": meta.positive_class,
            "model": self.model.describe(),
            "request_id": request_id,
            "timing_ms": self.timing_ms,
            "gate": self.gate.as_dict() if self.gate is not None else None,
            "warnings": self.warnings,
            **({"explanation": self.explanation.as_dict()} if self.explanation is not None else {}),
            "notice": NOTICE,
        }


def check_shape(image: np.ndarray, min_side: int, max_aspect: float) -> None:
    """Refuse what cannot be a radiograph before it is stretched to the model input: a 1x1 pixel or a strip
    would otherwise get a confident, meaningless prediction."""
    height, width = image.shape[:2]
    if min(height, width) < min_side:
        raise PreprocessingError(f"image is {width}x{height} pixels; each side must be at least {min_side}")
    if max(height, width) / min(height, width) > max_aspect:
        raise PreprocessingError(f"image is {width}x{height} pixels, an aspect ratio over {max_aspect:g}:1; "
                                 "send the whole radiograph")


@dataclass
class Prepared:
    """One decoded, gated, preprocessed upload, ready for the batcher."""

    x: np.ndarray
    decode_s: float
    gate: GateResult | None
    warnings: list[str]
    image_shape: tuple[int, ...] = ()  # the decoded upload's (height, width): explanations land on it


def new_request_id() -> str:
    return uuid.uuid4().hex


class DataPlane:
    def __init__(self, settings: Settings, manager: ModelManager, metrics: Metrics) -> None:
        self.settings = settings
        self.manager = manager
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="decode")
        # a pinned worker that has spread over every CPU (app/pinning.py: the others are idle, e.g. a burst of
        # connections all landed here) prepares images in a thread per CPU: one decode thread would hold it to
        # ~1.2 cores at full resolution. Set by create_app; made the first time the worker spreads
        self.spread: Callable[[], int] = lambda: 0  # the CPUs the worker spreads over now; 0: not spread
        self._spread_pool: ThreadPoolExecutor | None = None
        self.explainers = ExplainerCache(settings.explain_layer)
        self.inflight = InFlight.from_env()
        # a worker with one core's share (the default: a worker per core) loses no parallelism by preparing an
        # image on its loop; one with more keeps its decode threads busy instead (the module's docstring)
        self.loop_inline = settings.decode_threads == 1

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        if self._spread_pool is not None:
            self._spread_pool.shutdown(wait=True)
        self.inflight.close()

    def _decode_pool(self) -> ThreadPoolExecutor:
        """Where an image is prepared: the decode threads, or a thread per CPU while the worker has spread."""
        cpus = self.spread()
        if cpus <= self.settings.decode_threads:
            return self.pool
        if self._spread_pool is None:  # its threads start spread and are pinned again with the worker's
            self._spread_pool = ThreadPoolExecutor(max_workers=cpus, thread_name_prefix="decode-spread")
        return self._spread_pool

    def _prepare(self, data: bytes, model: ServingModel, ticket: Ticket | None = None, *,
                 on_loop: bool = False) -> Prepared:
        """decode -> gate -> preprocess, in a decode thread (or ``on_loop``: a lone JPEG). The gate refuses (raises)
        before the model."""
        started = time.perf_counter()
        if ticket is not None:  # the audit's input hash and format: in a decode thread, off the event loop; a
            # lone image on the loop leaves it to its audit row, made once the answer has left
            if on_loop:
                ticket.describe_bytes_later(data)
            else:
                ticket.describe_bytes(data)
        spec = model.metadata.preprocessing
        gate = self.manager.gate
        try:
            image = decode(data, min_size=2 * spec.input_size, max_pixels=self.settings.max_pixels)
            check_shape(image, self.settings.min_image_side, self.settings.max_aspect_ratio)
            # is it an image at all (the decoder's precise 4xx), then is it a frontal chest film (the gate)
            fmt = sniff_format(data)
            warnings = gate.check_header(data, fmt)  # DICOM header rules, cheapest first
            verdict, flagged = gate.check_image(image, data, fmt)
        except NotAChestXrayError as refusal:
            self.metrics.gate_refusals.labels(refusal.rule).inc()
            raise
        if flagged:
            self.metrics.gate_flags.inc()
            warnings += flagged
        x = preprocess(image, spec)
        return Prepared(x, time.perf_counter() - started, verdict, warnings, image.shape[:2])

    def _prepare_and_submit(self, data: bytes, model: ServingModel, *, ticket: Ticket | None,
                            announcement: Announcement, slot: list[Future[BatchResult]], inline: bool,
                            alone: bool = False, on_loop: bool = False,
                            ) -> tuple[Prepared, tuple[ServingModel, Future[BatchResult]]]:
        """In a decode thread (or on the loop, for a lone image): prepare, then hand the input to the batcher
        from here (no hop back to the event loop first); with ``inline``, an idle batcher runs it in this thread
        at once, on every core where this worker is ``alone`` and no other worker has an image in flight."""
        prepared = self._prepare(data, model, ticket, on_loop=on_loop)
        wide = alone and not self.inflight.others_busy()  # asked now: another worker may have begun meanwhile
        submitted = self._submit(prepared.x, model, announcement, inline=inline, wide=wide)
        slot.append(submitted[1])
        return prepared, submitted

    def point(self, model: ServingModel, requested: str | None) -> OperatingPoint:
        """The operating point that decides ``model``'s answer (422 for a name it does not have)."""
        return choose(model.metadata, requested, self.settings.operating_point)

    async def predict_image(self, data: bytes, model: ServingModel | None = None, ticket: Ticket | None = None,
                            *, explain: bool = False, operating_point: str | None = None) -> Prediction:
        """Encoded image bytes -> prediction with the active model (or the one given). ``ticket``: the audit
        trail's record in the making (the transport's ``audit.track_request``), given the input and result.
        ``explain``: add a Grad-CAM map, computed in a decode thread beside the batched model call.
        ``operating_point``: the named threshold to decide with (default: CXR_OPERATING_POINT, else the version's)."""
        with self.inflight.image() as alone:
            return await self._predict_image(data, model, ticket, explain, operating_point,
                                             alone=alone and not explain)

    async def _predict_image(self, data: bytes, model: ServingModel | None, ticket: Ticket | None, explain: bool,
                             operating_point: str | None, *, alone: bool) -> Prediction:
        started = time.perf_counter()
        model = model or self.manager.current
        self.point(model, operating_point)  # an unknown name is refused before any work
        loop = asyncio.get_running_loop()
        slot: list[Future[BatchResult]] = []  # the submitted item, to cancel should this request be cancelled
        # the batcher may wait (up to max delay) for this image while it decodes. Not inline with explain: the
        # Grad-CAM map (a decode thread) then runs beside the model call (the batcher's thread)
        with model.batcher.expecting() as announcement:
            if alone and self.loop_inline and cheap_to_decode(data):  # nothing else started: no hand-offs
                prepared, submitted = self._prepare_and_submit(data, model, ticket=ticket, announcement=announcement,
                                                               slot=slot, inline=True, alone=True, on_loop=True)
            else:
                try:
                    prepared, submitted = await loop.run_in_executor(self._decode_pool(), functools.partial(
                        self._prepare_and_submit, data, model, ticket=ticket, announcement=announcement, slot=slot,
                        inline=not explain, alone=alone))
                except asyncio.CancelledError:
                    for future in slot:
                        future.cancel()  # not yet computed: the batcher drops it
                    raise
        self.metrics.stage.labels("decode", model.metadata.name).observe(prepared.decode_s)
        explaining = loop.run_in_executor(self.pool, self.explainers.explain, model, prepared.x,
                                          prepared.image_shape, self.settings.explain_overlay_max_side) \
            if explain else None  # refused images never get here: no map
        try:
            prediction = await self._finish(submitted, prepared.decode_s, started, operating_point)
        except BaseException:
            if explaining is not None:
                explaining.cancel()  # nobody will read it
            raise
        prediction.gate, prediction.warnings = prepared.gate, prepared.warnings
        if explaining is not None:
            prediction.explanation = await explaining
            self.metrics.stage.labels("explain", model.metadata.name).observe(prediction.explanation.timing_ms / 1000)
        if ticket is not None:
            ticket.prediction = prediction
        return prediction

    async def predict_tensor(self, x: np.ndarray, model: ServingModel | None = None, ticket: Ticket | None = None,
                             *, operating_point: str | None = None, explain: bool = False) -> Prediction:
        """An already-preprocessed (H, W, 1) float input in [0, 1] (e.g. the v2 protocol's FP32 tensors).
        ``explain``: add a Grad-CAM map (on the tensor's own geometry)."""
        started = time.perf_counter()
        model = model or self.manager.current
        self.point(model, operating_point)
        try:
            x = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"tensor is not numeric: {exc}") from exc
        if ticket is not None:
            ticket.describe_tensor(x.tobytes())
        if x.shape != model.input_shape:
            raise InvalidInputError(f"tensor shape {list(x.shape)} does not match the model input "
                                    f"{list(model.input_shape)}")
        if not np.isfinite(x).all():
            raise InvalidInputError("tensor contains NaN or infinite values")
        prediction = await self._finish(self._submit(x, model), 0.0, started, operating_point)
        if explain:
            prediction.explanation = await asyncio.get_running_loop().run_in_executor(
                self.pool, self.explainers.explain, model, x, x.shape[:2], self.settings.explain_overlay_max_side)
        if ticket is not None:
            ticket.prediction = prediction
        return prediction

    def _submit(self, x: np.ndarray, model: ServingModel, announcement: Announcement | None = None, *,
                inline: bool = False, wide: bool = False) -> tuple[ServingModel, Future[BatchResult]]:
        """Hand ``x`` to the model's batcher (``inline``: run it in this thread if the batcher is idle, ``wide``
        on every core). The announcement belongs to ``model``'s batcher, so it goes with the first try only."""
        def submit(target: ServingModel, *args: Announcement | None) -> Future[BatchResult]:
            batcher = target.batcher
            return batcher.submit_or_run(x, *args, wide=wide) if inline else batcher.submit_nowait(x, *args)

        try:
            return model, submit(model, announcement)
        except NotReadyError:
            # the model was swapped by a reload between lookup and submit: run on the new one
            current = self.manager.current
            if current is model:
                raise
            return current, submit(current)

    async def _finish(self, submitted: tuple[ServingModel, Future[BatchResult]], decode_s: float,
                      started: float, operating_point: str | None = None) -> Prediction:
        model, future = submitted
        # run inline in the decode thread: already resolved, no need to chain it onto the loop
        result = future.result() if future.done() else await asyncio.wrap_future(future)
        name = model.metadata.name
        self.metrics.stage.labels("queue", name).observe(result.queue_s)
        self.metrics.stage.labels("inference", name).observe(result.inference_s)
        # total is wall time in the core, so it includes any wait for a decode thread
        # calibrate: the stored temperature (1.0 = none), then the site calibration where the version has one;
        # the same functions training and cxr-site fitted them with. The point is chosen on the model that ran
        # (a reload may have swapped it since the request was checked)
        probabilities = final_probabilities(result.output, model.metadata)
        point = self.point(model, operating_point)
        prediction = Prediction(model=model, probabilities=probabilities, point=point, timing_ms={
            "decode": round(decode_s * 1000, 3), "queue": round(result.queue_s * 1000, 3),
            "inference": round(result.inference_s * 1000, 3),
            "total": round((time.perf_counter() - started) * 1000, 3)})
        self.metrics.predictions.labels(name, prediction.label).inc()
        return prediction
