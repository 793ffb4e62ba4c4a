"""The DICOM node: a transport like the HTTP routes, for PACS that route images instead of calling REST.

C-STORE in (pynetdicom SCP: CR and DX images, configured AE title and calling AEs), or STOW-RS in
(app/routes/dicomweb.py, through :meth:`DicomNode.process_stow`) -> the same DataPlane (decode, gate, batcher,
model, and Grad-CAM when ``CXR_DICOM_HEATMAP`` asks for the heatmap image) -> the DICOM renderers (heatmap
Secondary Capture + SR referencing it) -> C-STORE out (SCU) and/or STOW-RS out (app/dicomweb.py) to the
configured destinations.

- Back-pressure: at most ``CXR_DICOM_QUEUE_SIZE`` images are in the node (received, not yet answered with an SR
  or dropped); beyond that, and while the model is not ready or the node drains, C-STORE answers 0xA700 "out of
  resources" so the PACS keeps the image and retries later. An accepted image is answered with success at once;
  its result follows as an SR.
- A refused image (the gate, an undecodable file) gets no SR: a log line and ``cxr_dicom_images_processed``.
- Delivery: bounded retries with doubling delay; after the last one, an error log line and
  ``cxr_dicom_sr_sent_total{outcome="failed"}``. Nothing waits forever: every association has timeouts.
- Logs and metrics carry a job id, the calling AE and error codes, never patient data (nor DICOM UIDs).
- DICOM TLS (both directions) is app/tls.py's: this module only asks it for the listener and the ``tls_args``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import (
    JPEG2000,
    UID,
    ComputedRadiographyImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, Verification

from app.dataplane import DataPlane, Prediction
from app.errors import ServiceError, classify
from app.explain import ExplanationUnavailableError
from app.metrics import Metrics
from app.rundir import lock_path, try_lock
from app.settings import Settings
from app.tls import describe_refusal, destination_tls_args, serve_dicom

LISTENER_LOCK = "dicom-listener"  # the run directory's lock file electing the worker that binds the C-STORE port
log = logging.getLogger("cxr.dicom")

IMAGE_SOP_CLASSES = (ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation,
                     DigitalXRayImageStorageForProcessing)
_CANDIDATE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                       ExplicitVRBigEndian, RLELossless, JPEGLosslessSV1, JPEGLSLossless, JPEG2000Lossless,
                       JPEGBaseline8Bit, JPEGExtended12Bit, JPEG2000)
SUCCESS, OUT_OF_RESOURCES = 0x0000, 0xA700
_OK_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})  # success, and the warnings that still store
PREDICT_ATTEMPTS = 5  # an overloaded batcher (503) is waited out this often before the image is dropped
_STOP = object()

RenderResults = Callable[[Prediction, bytes], list[Dataset]]
SendOnce = Callable[[list[Dataset]], "str | None"]  # None on success, else why not


def decodable_syntaxes() -> list[UID]:
    """Transfer syntaxes offered to the PACS: only those the installed pixel decoders can read (the PACS
    transcodes anything else, or reports that it cannot)."""
    usable = []
    for syntax in _CANDIDATE_SYNTAXES:
        try:
            if get_decoder(syntax).is_available:
                usable.append(syntax)
        except NotImplementedError:
            continue
    return usable


@dataclass
class Outgoing:
    job: str
    datasets: list[Dataset]  # heatmap image(s) first, then the SR that references them


class DicomNode:
    def __init__(self, settings: Settings, dataplane: DataPlane, metrics: Metrics,
                 render_results: RenderResults | None = None, *, audit: Any = None) -> None:
        self.settings = settings
        self.dataplane = dataplane
        self.metrics = metrics
        self.audit = audit  # app.audit.Audit: each image's answer or refusal becomes one audit row (route "dicom")
        self.render_results = render_results or self._render_results
        self.heatmap = settings.dicom_heatmap != "off"
        self._destinations: list[tuple[str, SendOnce]] = []
        self._stow: Any = None
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ae: AE | None = None
        self._server: Any = None
        self._listener_lock: int | None = None  # the election lock's descriptor, where this worker holds it
        self._tls_args: Any = None  # (ssl.SSLContext, host) when SRs go over DICOM TLS
        self._sender: threading.Thread | None = None
        self._jobs = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:6]

    # -- life cycle ------------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Binds the listening port (raises if it is taken) and starts the sender; called in the lifespan."""
        from app.renderers import dicom_sr  # noqa: F401  (highdicom imported now, not on the first image)

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines narrate every association
        s = self.settings
        self._loop = loop
        ae = AE(ae_title=s.dicom_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = s.dicom_timeout_s
        ae.connection_timeout = s.dicom_timeout_s
        ae.maximum_associations = 16
        syntaxes = decodable_syntaxes()
        for sop_class in IMAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(Verification)  # C-ECHO: the PACS's "test connection" button
        ae.add_requested_context(Comprehensive3DSRStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_requested_context(SecondaryCaptureImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.require_calling_aet = list(s.dicom_allowed_calling_aets)
        self._ae = ae
        self._tls_args = destination_tls_args(s)
        self._open_destinations()
        self._sender = threading.Thread(target=self._send_loop, name="dicom-sender", daemon=True)
        self._sender.start()
        if s.dicom_port is not None:  # else STOW-RS is the only way in
            self._elect_listener()
        tls_in = " over DICOM TLS" if s.dicom_tls_cert is not None else ""
        log.info("DICOM node %s: C-STORE in %s, STOW-RS in %s; results (heatmap %s) go to %s%s", s.dicom_ae_title,
                 f"on {s.host}:{s.dicom_port}{tls_in}" if s.dicom_port is not None else "off",
                 "on" if s.dicomweb_receive else "off", s.dicom_heatmap,
                 ", ".join(name for name, _ in self._destinations),
                 " (C-STORE over DICOM TLS)" if self._tls_args else "")

    def _elect_listener(self) -> None:
        """The C-STORE port can be bound once: with several workers the one holding ``dicom-listener.lock`` in
        the run directory binds it, for its whole life; the others wait on the lock in a thread, so one of them
        (or the replacement uvicorn starts) takes the port over when the holder dies. STOW-RS (HTTP) and the SR
        sender work in every worker."""
        lock = lock_path(LISTENER_LOCK)
        if lock is None:
            self._listen()
            return
        fd = try_lock(lock)
        if fd is not None:
            self._listener_lock = fd
            self._listen()
            return
        log.info("DICOM C-STORE port %s is served by another worker; this one takes it over if that one stops",
                 self.settings.dicom_port)
        threading.Thread(target=self._wait_for_listener, args=(lock,), name="dicom-listener-election",
                         daemon=True).start()

    def _wait_for_listener(self, lock: Path) -> None:
        fd = try_lock(lock, blocking=True)
        with self._lock:
            if fd is None or self._stopping.is_set():
                if fd is not None:
                    os.close(fd)
                return
            self._listener_lock = fd
            try:
                self._listen()
            except Exception:
                log.exception("this worker could not take over the DICOM C-STORE port %s", self.settings.dicom_port)
                return
        log.info("this worker took over the DICOM C-STORE port %s", self.settings.dicom_port)

    def _listen(self) -> None:
        assert self._ae is not None
        self._server = serve_dicom(self._ae, self.settings, [(evt.EVT_C_STORE, self._on_store),
                                                             (evt.EVT_REJECTED, self._on_rejected)],
                                   on_refused=self._on_tls_refused)

    @property
    def listening(self) -> bool:
        """This process serves the C-STORE port."""
        return self._server is not None

    def _open_destinations(self) -> None:
        s = self.settings
        if s.cstore_destination:
            self._destinations.append((f"{s.dicom_destination_ae_title}@{s.dicom_destination_host}:"
                                       f"{s.dicom_destination_port}", self._store_once))
        if s.dicomweb_destination_url is not None:
            from app.dicomweb import StowSender

            self._stow = StowSender(s.dicomweb_destination_url, timeout=s.dicom_timeout_s,
                                    auth_file=s.dicomweb_auth_file)
            self._destinations.append((self._stow.describe(), self._stow.send_once))

    def not_ready_reason(self) -> str | None:
        if self._stopping.is_set():
            return "DICOM node shutting down"
        if self._ae is None:
            return "DICOM node not started"
        # another worker holding the C-STORE port says how it does in its own readiness
        port_elsewhere = self._listener_lock is None and lock_path(LISTENER_LOCK) is not None
        if self.settings.dicom_port is not None and not port_elsewhere and (
                self._server is None or not self._server_thread_alive()):
            return "DICOM node listener stopped"
        if self._sender is None or not self._sender.is_alive():
            return "DICOM node sender stopped"
        return None

    def _server_thread_alive(self) -> bool:
        return self._server.socket.fileno() >= 0  # -1 once pynetdicom's server has closed its socket

    @property
    def pending(self) -> int:
        return self._pending

    def stop(self, timeout: float) -> None:
        """Drains like HTTP: stop taking images, finish and deliver those accepted (up to ``timeout`` s), then
        close. Blocking: the lifespan calls it in a thread while the event loop finishes the predictions."""
        if self._ae is None or self._stopping.is_set():  # not started, or already stopped
            return
        deadline = time.monotonic() + timeout
        with self._lock:
            self._stopping.set()
        if self._server is not None:
            self._server.shutdown()  # no new associations; open ones get 0xA700 for further images
        with self._idle:
            while self._pending > 0 and time.monotonic() < deadline:
                self._idle.wait(max(0.01, min(0.5, deadline - time.monotonic())))
            left = self._pending
        self._outbox.put(_STOP)
        if self._sender is not None:
            self._sender.join(max(0.1, deadline - time.monotonic()))
        self._ae.shutdown()
        if self._stow is not None:
            self._stow.close()
        if left:
            log.error("DICOM node stopped with %d image(s) not answered with an SR (drain timeout %.0f s)",
                      left, timeout)
        else:
            log.info("DICOM node stopped; every accepted image was answered")

    # -- receiving (pynetdicom's association threads) --------------------------------------------------
    def _on_rejected(self, event: Any) -> None:
        self.metrics.dicom_received.labels("not_allowed").inc()
        log.warning("DICOM association from %s refused (calling AE not allowed or not acceptable)",
                    event.assoc.requestor.ae_title)

    def _on_tls_refused(self, address: tuple[str, int], exc: BaseException) -> None:
        self.metrics.dicom_received.labels("tls_refused").inc()
        log.warning("DICOM connection from %s refused: %s", address[0], describe_refusal(exc))

    def _on_store(self, event: Any) -> int:
        job = f"{self._prefix}-{next(self._jobs)}"
        calling = event.assoc.requestor.ae_title
        outcome = self._admit()
        if outcome != "accepted":
            self.metrics.dicom_received.labels(outcome).inc()
            log.warning("DICOM image %s from %s not taken (%s); answered 0xA700 so the sender retries later",
                        job, calling, outcome)
            return OUT_OF_RESOURCES
        self.metrics.dicom_received.labels("accepted").inc()
        try:
            data = event.encoded_dataset(include_meta=True)  # as sent: the data plane decodes the Part 10 bytes
            assert self._loop is not None
            asyncio.run_coroutine_threadsafe(self._process(data, job, calling), self._loop)
        except Exception:
            self._release()
            log.exception("DICOM image %s from %s could not be queued", job, calling)
            return OUT_OF_RESOURCES
        return SUCCESS

    def _admit(self) -> str:
        if self._stopping.is_set():
            return "shutting_down"
        if self.dataplane.manager.not_ready_reason() is not None:
            return "not_ready"
        with self._lock:
            if self._pending >= self.settings.dicom_queue_size:
                return "queue_full"
            self._pending += 1
            self.metrics.dicom_pending.set(self._pending)
        return "accepted"

    def _release(self) -> None:
        with self._idle:
            self._pending -= 1
            self.metrics.dicom_pending.set(self._pending)
            self._idle.notify_all()

    # -- STOW-RS in (app/routes/dicomweb.py, on the event loop) ----------------------------------------------
    def admit_many(self, count: int) -> str:
        """Takes ``count`` places in the node's queue at once (all or none): "accepted", else why not."""
        for taken in range(count):
            outcome = self._admit()
            if outcome != "accepted":
                for _ in range(taken):
                    self._release()
                return outcome
        return "accepted"

    async def process_stow(self, data: bytes, caller: str) -> tuple[int, str, str] | None:
        """One admitted instance, processed like a C-STORE'd one; None once its results are queued for the
        destinations, else (status, code, message) of the refusal or failure."""
        job = f"{self._prefix}-{next(self._jobs)}"
        self.metrics.dicom_received.labels("accepted").inc()
        return await self._process(data, job, caller, route="dicomweb")

    # -- processing (the app's event loop) -------------------------------------------------------------
    async def _process(self, data: bytes, job: str, calling: str, route: str = "dicom"
                       ) -> tuple[int, str, str] | None:
        handed_over = False
        try:
            if self.audit is None:
                prediction = await self._predict(data)
            else:
                async with self.audit.track_item(job, route, calling) as ticket:
                    prediction = await self._predict(data, ticket)
            datasets = await asyncio.to_thread(self.render_results, prediction, data)
            self.metrics.dicom_processed.labels("reported", "").inc()
            self._outbox.put(Outgoing(job, datasets))
            handed_over = True
            log.info("DICOM image %s from %s (%s): %s (model %s v%s); %d result object(s) queued", job, calling,
                     route, prediction.label, prediction.model.metadata.name, prediction.model.version,
                     len(datasets))
            return None
        except Exception as exc:
            status, code, message = classify(exc)
            if status >= 500 and not isinstance(exc, ServiceError):
                log.error("DICOM image %s from %s failed: %s (%s); no SR", job, calling, code, type(exc).__name__)
                self.metrics.dicom_processed.labels("failed", code).inc()
            else:
                log.warning("DICOM image %s from %s refused: %d %s: %s; no SR", job, calling, status, code, message)
                self.metrics.dicom_processed.labels("refused", code).inc()
            return status, code, message
        finally:
            if not handed_over:
                self._release()

    async def _predict(self, data: bytes, ticket: Any = None) -> Prediction:
        explain = self.heatmap
        for attempt in range(PREDICT_ATTEMPTS):
            try:
                return await self.dataplane.predict_image(data, ticket=ticket, explain=explain)
            except ExplanationUnavailableError as exc:  # a model Grad-CAM cannot explain: the SR alone
                if not explain:
                    raise
                log.warning("no heatmap image: %s", exc)
                explain = False
            except ServiceError as exc:
                if exc.status != 503 or attempt == PREDICT_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(min(5.0, exc.retry_after or 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    def _render_results(self, prediction: Prediction, data: bytes) -> list[Dataset]:
        from app.renderers import dicom_results

        return dicom_results.build(prediction, data, mode=self.settings.dicom_heatmap,
                                   max_pixels=self.settings.max_pixels)

    # -- sending (one thread; one association per SR) --------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            item = self._outbox.get()
            if item is _STOP:
                return
            try:
                self._deliver(item)
            except Exception:  # the sender must survive anything one SR does
                log.exception("DICOM SR for image %s: unexpected error while sending", item.job)
                self.metrics.dicom_sr_sent.labels("failed").inc()
            finally:
                self._release()

    def _deliver(self, item: Outgoing) -> None:
        """To every destination in turn (C-STORE, STOW-RS), each with the same bounded retries."""
        for target, send_once in self._destinations:
            self._deliver_to(item, target, send_once)

    def _deliver_to(self, item: Outgoing, target: str, send_once: SendOnce) -> None:
        s = self.settings
        attempts = s.dicom_send_retries + 1
        reason: str | None = "not attempted"
        for attempt in range(attempts):
            if attempt:
                delay = s.dicom_retry_delay_s * 2 ** (attempt - 1)
                log.warning("DICOM SR for image %s: attempt %d/%d to %s failed (%s); retrying in %.1f s",
                            item.job, attempt, attempts, target, reason, delay)
                time.sleep(delay)
            reason = send_once(item.datasets)
            if reason is None:
                self.metrics.dicom_send_attempts.labels("success").inc()
                self.metrics.dicom_sr_sent.labels("sent").inc()
                log.info("DICOM SR for image %s delivered to %s (%d object(s))", item.job, target,
                         len(item.datasets))
                return
            self.metrics.dicom_send_attempts.labels("failure").inc()
        self.metrics.dicom_sr_sent.labels("failed").inc()
        log.error("DICOM SR for image %s NOT delivered to %s after %d attempt(s): %s; dropped",
                  item.job, target, attempts, reason)

    def _store_once(self, datasets: list[Dataset]) -> str | None:
        """None on success, else why not (no patient data in it)."""
        s = self.settings
        assert self._ae is not None
        assoc = self._ae.associate(s.dicom_destination_host, s.dicom_destination_port,
                                   ae_title=s.dicom_destination_ae_title, tls_args=self._tls_args)
        if not assoc.is_established:
            if assoc.is_rejected:
                return "association rejected by the destination (check its AE title and allowed callers)"
            return "cannot connect or association aborted"
        try:
            for dataset in datasets:  # in order: the heatmap image(s), then the SR that references them
                status = assoc.send_c_store(dataset)
                if not status or "Status" not in status:
                    assoc.abort()
                    return "no C-STORE response (timeout or connection lost)"
                code = int(status.Status)
                if code not in _OK_STATUSES:
                    assoc.release()
                    return f"C-STORE status 0x{code:04X}"
        except Exception as exc:
            assoc.abort()
            return f"C-STORE failed: {type(exc).__name__}"
        assoc.release()
        return None
