"""The lone-request path through the real app: an idle batcher runs the image in the decode thread that
prepared it (no hop to the batcher's worker and back), with the same metrics; concurrent requests still batch
(tests/app/test_predict.py::test_concurrent_requests_each_get_their_own_answer)."""

from __future__ import annotations

import threading

import numpy as np
from app_harness import Running
from prometheus_client.parser import text_string_to_metric_families


def stage_counts(server: Running) -> dict[str, float]:
    family = next(f for f in text_string_to_metric_families(server.client.get("/metrics").text)
                  if f.name == "cxr_stage_duration_seconds")
    return {s.labels["stage"]: s.value for s in family.samples if s.name == "cxr_stage_duration_seconds_count"}


def test_a_lone_request_runs_in_a_decode_thread_not_the_batchers(server, fullres_images):
    batcher = server.app.state.manager.current.batcher
    original = batcher.predict
    threads: list[str] = []

    def recording(x: np.ndarray) -> np.ndarray:
        threads.append(threading.current_thread().name)
        return original(x)

    before = stage_counts(server)
    batcher.predict = recording
    try:
        response = server.client.post("/predict", files={"file": ("film.jpeg", fullres_images[0].read_bytes())})
    finally:
        batcher.predict = original
    assert response.status_code == 200, response.text
    assert len(threads) == 1 and threads[0].startswith("decode"), threads
    timing = response.json()["timing_ms"]
    assert timing["inference"] > 0 and timing["queue"] >= 0
    after = stage_counts(server)
    for stage in ("decode", "queue", "inference"):  # the stage histograms still see a lone request
        assert after.get(stage, 0) == before.get(stage, 0) + 1, stage
