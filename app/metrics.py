"""Prometheus metrics, on a per-app registry (several apps in one process, e.g. tests, do not clash)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
        self.queue_depth = Gauge("cxr_queue_depth", "Images waiting for a batch", registry=r)
        self.predictions = Counter("cxr_predictions", "Predictions by class", ["model", "prediction"], registry=r)
        self.errors = Counter("cxr_errors", "Errors answered, by code", ["code"], registry=r)
        self.model_info = Info("cxr_model", "The active model", registry=r)
        self.ready = Gauge("cxr_ready", "1 when the service can serve predictions", registry=r)
