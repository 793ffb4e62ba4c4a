"""Prometheus metrics, on a per-app registry (several apps in one process, e.g. tests, do not clash).

With several worker processes (PROMETHEUS_MULTIPROC_DIR set by ``cxr-serve`` before the workers start) every
value lives in a file per process and a scrape of any worker reads them all (``scrape_registry``): counters and
histograms add up, each gauge says how its workers combine (``multiprocess_mode``; ignored with one process).
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, multiprocess

# the monitoring figures come from the shared audit store: every worker computes the same, the latest counts
MONITOR = "livemostrecent"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_dir() -> Path | None:
    """The shared metrics folder of a multi-worker run; None with one process."""
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def mark_process_dead(pid: int) -> None:
    """Drops a dead worker's live gauges (its counters stay: they are part of the totals)."""
    folder = multiprocess_dir()
    if folder is not None:
        multiprocess.mark_process_dead(pid, str(folder))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        folder = multiprocess_dir()
        self.multiprocess = folder is not None
        # what /metrics answers: this process's registry, or every worker's files
        self.scrape_registry = r
        if folder is not None:
            self.scrape_registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.scrape_registry, path=str(folder))
        self.requests = Counter("cxr_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("cxr_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage = Histogram("cxr_stage_duration_seconds", "Per-image time in each stage (decode, queue, "
                               "inference)", ["stage", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("cxr_batch_size", "Images per model call (before padding)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.inference = Histogram("cxr_inference_duration_seconds", "Wall time of one batched model call",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("cxr_queue_depth", "Images waiting for a batch", registry=r,
                                 multiprocess_mode="livesum")
        self.predictions = Counter("cxr_predictions", "Predictions by class", ["model", "prediction"], registry=r)
        self.gate_refusals = Counter("cxr_gate_refusals", "Images refused by the input gate, by reason (modality, "
                                     "body_part, view_position, colour, gate_model)", ["reason"], registry=r)
        self.gate_flags = Counter("cxr_gate_flags", "Images the gate would refuse, answered and flagged "
                                  "(CXR_GATE=flag)", registry=r)
        self.errors = Counter("cxr_errors", "Errors answered, by code", ["code"], registry=r)
        self.model_info = ModelInfo(r, self.multiprocess)
        self.ready = Gauge("cxr_ready", "1 when the service can serve predictions", registry=r,
                           multiprocess_mode="livemin")  # every live worker
        # the audit trail (app/audit): writer health, and the rolling-window monitoring figures
        self.audit_buffered = Gauge("cxr_audit_buffered", "Audit records waiting to be written", registry=r,
                                    multiprocess_mode="livesum")
        self.audit_store_up = Gauge("cxr_audit_store_up", "1 while the audit store is reachable", registry=r,
                                    multiprocess_mode="livemin")
        self.audit_written = Counter("cxr_audit_records_written", "Audit records stored", registry=r)
        self.audit_dropped = Counter("cxr_audit_records_dropped", "Audit records NOT stored, by reason "
                                     "(buffer_full, shutdown, closed, rejected, withdrawn, error)", ["reason"],
                                     registry=r)
        self.monitor_answers = Gauge("cxr_monitor_answers", "Answers of the active model in the window",
                                     registry=r, multiprocess_mode=MONITOR)
        self.monitor_refusals = Gauge("cxr_monitor_refusals", "Refusals in the window, by reason (error code)",
                                      ["reason"], registry=r, multiprocess_mode=MONITOR)
        self.monitor_rate = Gauge("cxr_monitor_rate", "Rates in the window (positive_rate, sensitivity, "
                                  "specificity, ppv); NaN when there is nothing to divide by", ["rate"],
                                  registry=r, multiprocess_mode=MONITOR)
        self.monitor_confusion = Gauge("cxr_monitor_confusion", "Answers with a confirmed label in the window, by "
                                       "cell (tp, fp, tn, fn, uncertain)", ["cell"],
                                       registry=r, multiprocess_mode=MONITOR)
        self.monitor_psi = Gauge("cxr_monitor_psi", "Population stability index of P(positive) against the "
                                 "validation distribution (NaN when unavailable)",
                                 registry=r, multiprocess_mode=MONITOR)
        self.monitor_drift_band = Gauge("cxr_monitor_drift_band", "PSI band: 0 stable (< 0.1), 1 moderate "
                                        "(0.1-0.25), 2 significant (>= 0.25), -1 unavailable",
                                        registry=r, multiprocess_mode=MONITOR)
        # the DICOM node (labels never carry patient data: outcomes and codes only)
        self.dicom_received = Counter("cxr_dicom_images_received", "C-STORE requests received by the DICOM node, "
                                      "by outcome (accepted, not_ready, queue_full, shutting_down, not_allowed, "
                                      "tls_refused)",
                                      ["outcome"], registry=r)
        self.dicom_processed = Counter("cxr_dicom_images_processed", "Received images by outcome (reported: an "
                                       "SR was made; refused: e.g. the gate or an undecodable image, by code)",
                                       ["outcome", "code"], registry=r)
        self.dicom_sr_sent = Counter("cxr_dicom_sr_sent", "SRs by delivery outcome (sent, failed after retries)",
                                     ["outcome"], registry=r)
        self.dicom_send_attempts = Counter("cxr_dicom_sr_send_attempts", "C-STORE attempts to the SR destination, "
                                           "by result (success, failure)", ["result"], registry=r)
        self.dicom_pending = Gauge("cxr_dicom_pending", "Images received by the DICOM node and not yet answered "
                                   "with an SR (or dropped)", registry=r,
                                   multiprocess_mode="livesum")


class ModelInfo:
    """``cxr_model_info``: an Info with one process; a gauge per label set with several, because Info values do
    not reach the multiprocess files. During a reload both versions show 1 until every worker has switched."""

    LABELS = ("name", "version", "sha256", "input_size", "runtime")

    def __init__(self, registry: CollectorRegistry, multiprocess_mode: bool) -> None:
        self._info = None if multiprocess_mode else Info("cxr_model", "The active model", registry=registry)
        self._gauge = Gauge("cxr_model_info", "The active model (1) per worker, the highest", list(self.LABELS),
                            registry=registry, multiprocess_mode="livemax") if multiprocess_mode else None
        self._shown: dict[str, str] | None = None

    def info(self, labels: dict[str, str]) -> None:
        if self._info is not None:
            self._info.info(labels)
            return
        assert self._gauge is not None
        if self._shown is not None:
            self._gauge.labels(**self._shown).set(0)
        self._gauge.labels(**labels).set(1)
        self._shown = dict(labels)
