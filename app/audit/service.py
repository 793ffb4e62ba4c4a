"""The audit trail of one app: store, writer, hook and monitor, started and stopped with the app."""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from app.audit import store
from app.audit.drift import band, reference_of
from app.audit.hook import AuditHook, Tracked
from app.audit.monitoring import window_stats
from app.audit.ticket import Ticket
from app.audit.writer import MIGRATE_LOCK, AuditWriter, WriterStats
from app.errors import AuditUnavailableError
from app.metrics import Metrics
from app.rundir import file_lock, lock_path
from app.settings import Settings

log = logging.getLogger("cxr.audit")
BANDS = {"stable": 0, "moderate": 1, "significant": 2}


class _Untracked:
    """Audit off: the transports' ``async with`` costs nothing and records nothing."""

    def __init__(self, ticket: Ticket) -> None:
        self.ticket = ticket

    async def __aenter__(self) -> Ticket:
        return self.ticket

    async def __aexit__(self, *exc: object) -> None:
        return None


class Audit:
    def __init__(self, settings: Settings, metrics: Metrics, access: Any = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.enabled = settings.audit_enabled
        self.url = store.resolve_url(settings.audit_url, settings.audit_path)
        self.durable = settings.audit_durable
        self.engine = store.make_engine(self.url, durable=self.durable) if self.enabled else None
        stats = WriterStats(on_written=metrics.audit_written.inc,
                            on_dropped=lambda reason, n: metrics.audit_dropped.labels(reason).inc(n),
                            on_state=self._on_state)
        # durable: no linger, the thread commits whatever is waiting at once (group commit by arrival)
        self.writer = AuditWriter(self.engine, capacity=settings.audit_buffer, batch_size=settings.audit_batch_size,
                                  linger_s=0.0 if self.durable else 0.05,
                                  stats=stats) if self.engine is not None else None
        # the access control labels clients that were refused before their caller was known
        self.hook = AuditHook(self.writer, keys=settings.api_keys, salt=settings.audit_salt,
                              required=settings.audit_required, durable=self.durable,
                              commit_timeout_s=settings.audit_commit_timeout_s,
                              labels=access) if self.writer is not None else None
        self.model_source: Any = None  # the ModelManager, for the monitor's drift reference
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    def _on_state(self, up: bool, buffered: int) -> None:
        self.metrics.audit_store_up.set(1 if up else 0)
        self.metrics.audit_buffered.set(buffered)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self, model_source: Any = None) -> None:
        self.model_source = model_source
        if self.writer is None:
            log.info("audit: off (CXR_AUDIT_ENABLED=false); answers are not recorded")
            return
        mode = "durable: each answer waits for its record's commit" if self.durable else "buffered"
        log.info("audit: records go to %s (%s%s)", store.safe_url(self.url), mode,
                 "; fail closed: CXR_AUDIT_REQUIRED=true" if self.settings.audit_required else "")
        self.check_store()
        if self.settings.audit_salt is None:
            log.info("audit: CXR_AUDIT_SALT is unset, so DICOM UIDs are not recorded (not even hashed)")
        self.writer.start()
        self._monitor = threading.Thread(target=self._refresh_loop, name="audit-monitor", daemon=True)
        self._monitor.start()

    def check_store(self) -> bool:
        """At start: one error line naming the store and the fix where it cannot be written or reached. The
        writer keeps retrying (a store may come up later); readiness is red meanwhile only when required."""
        assert self.engine is not None
        try:
            # under the migration lock: a worker's first connection to a new SQLite file, beside another worker
            # switching it to WAL and migrating it, was answered "database is locked" at once (seen at a start)
            with file_lock(lock_path(MIGRATE_LOCK)):
                store.check_writable(self.engine)
        except Exception as exc:  # any failure to write is the same fault to the operator
            detail = str(exc).splitlines()[0][:200] if str(exc) else ""
            consequence = ("readiness stays 503 and predictions are refused until it can be written"
                           if self.settings.audit_required else
                           f"serving anyway (CXR_AUDIT_REQUIRED=false): up to {self.settings.audit_buffer} records "
                           "are held in memory, then they are dropped")
            log.error("audit: the store %s cannot be written (%s: %s); %s. Fix: %s", store.safe_url(self.url),
                      type(exc).__name__, detail, consequence, store.fix_hint(self.url))
            return False
        return True

    def close(self, timeout: float) -> None:
        """Part of the shutdown drain: writes what is buffered, within ``timeout`` seconds."""
        self._stop.set()
        if self.writer is not None:
            self.writer.close(timeout)

    # -- what the app asks ---------------------------------------------------------------------------------
    def not_ready_reason(self) -> str | None:
        """Fail-closed mode only: readiness is red while the store is unreachable."""
        if self.writer is None or not self.settings.audit_required or self.writer.store_up:
            return None
        detail = f": {self.writer.last_error}" if self.writer.last_error else ""
        return f"audit store unreachable (CXR_AUDIT_REQUIRED=true){detail}"

    def track_request(self, request: Any, item_id: str) -> Tracked | _Untracked:
        if self.hook is None:
            return _Untracked(Ticket(item_id, "", ""))
        return self.hook.track_request(request, item_id)

    def track_item(self, request_id: str, route: str, client: str) -> Tracked | _Untracked:
        """For transports without an HTTP request (e.g. the DICOM node: route "dicom", client its calling AE
        title): ``async with audit.track_item(...) as ticket: await dataplane.predict_image(data, ticket=ticket)``."""
        # the calling AE title is also the caller's identity for the audit's caller column
        ticket = Ticket(request_id, route, client, salt=self.settings.audit_salt, caller=client)
        return _Untracked(ticket) if self.hook is None else self.hook.track(ticket)

    def refused_request(self, scope: dict[str, Any], status: int, code: str) -> None:
        if self.hook is not None:
            self.hook.refused_request(scope, status, code)

    def require_store(self) -> Any:
        """The engine, for feedback and monitoring; 503 when audit is off."""
        if self.engine is None:
            raise AuditUnavailableError("audit is off (CXR_AUDIT_ENABLED=false): no feedback or monitoring")
        return self.engine

    # -- monitoring ----------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The window figures for the active model (drift against its validation distribution)."""
        engine = self.require_store()
        model = None
        try:
            model = self.model_source.current if self.model_source is not None else None
        except Exception:  # not loaded yet: figures over every model, no drift
            model = None
        if model is not None:
            meta = model.metadata
            figures = window_stats(engine, hours=self.settings.audit_window_hours,
                                   model_sha256=model.artifact.sha256, reference=reference_of(meta.metrics),
                                   positive_class=meta.positive_class)
            figures["model"] = model.describe()
        else:
            figures = window_stats(engine, hours=self.settings.audit_window_hours)
            figures["model"] = None
        assert self.writer is not None
        figures["store"] = {"up": self.writer.store_up, "buffered": self.writer.buffered,
                            "written": self.writer.written, "not_stored": dict(self.writer.dropped)}
        self.publish(figures)
        return figures

    def publish(self, figures: dict[str, Any]) -> None:
        m = self.metrics
        m.monitor_answers.set(figures["answers"])
        m.monitor_refusals.clear()
        for reason, count in figures["refusals"]["by_reason"].items():
            m.monitor_refusals.labels(reason).set(count)
        feedback = figures["feedback"]
        rates = {"positive_rate": figures["positive_rate"], "sensitivity": feedback["sensitivity"],
                 "specificity": feedback["specificity"], "ppv": feedback["ppv"]}
        for name, rate in rates.items():
            m.monitor_rate.labels(name).set(math.nan if rate["value"] is None else rate["value"])
        for cell, count in {**feedback["confusion_matrix"], "uncertain": feedback["uncertain"]}.items():
            m.monitor_confusion.labels(cell).set(count)
        drift = figures["drift"]
        psi = drift.get("psi") if drift.get("available") else None
        m.monitor_psi.set(math.nan if psi is None else psi)
        m.monitor_drift_band.set(BANDS[band(psi)] if psi is not None else -1)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.settings.audit_refresh_s):
            if self.writer is None or not self.writer.store_up:
                continue
            try:
                self.stats()
            except Exception as exc:  # a failed refresh must not end the loop; the next one may work
                log.warning("audit: monitoring refresh failed: %s", type(exc).__name__)
