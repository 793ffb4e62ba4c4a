"""Faults and overload on the real app: a failing model call fails only its own batch, a burst beyond the
queue limit is shed with 503 + Retry-After, and every accepted request still gets its own correct answer."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import hostile
import pytest
from reliability_support import assert_error, assert_prediction, assert_ready, running_app


def upload(seed: int) -> dict:
    return {"file": (f"xray-{seed}.png", hostile.png(hostile.chest_like(seed=seed)), "image/png")}


def burst(client, n: int, path: str = "/predict") -> list:
    """``n`` requests released at the same moment from ``n`` threads; responses in request order."""
    gate = threading.Barrier(n)

    def one(i: int):
        gate.wait()
        return client.post(path, files=upload(i))

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture(scope="module")
def app_client():
    # a long batching window so a burst lands in few batches; small CPU batch buckets
    with running_app(max_batch_size=8, max_delay_ms=300, queue_limit=64, gate="off") as client:  # synthetic films
        yield client


@pytest.fixture(scope="module")
def references(app_client) -> dict[int, dict]:
    return {i: assert_prediction(app_client.post("/predict", files=upload(i)))["probabilities"] for i in range(16)}


def same(probabilities: dict, reference: dict) -> bool:
    """Equal up to float noise: a batch of 8 runs other kernels than a batch of 1."""
    return probabilities.keys() == reference.keys() and all(
        abs(probabilities[k] - reference[k]) < 1e-4 for k in reference)


def rows_in(x) -> int:
    """Real images in a padded batch (padding rows are all zeros; our test images never are)."""
    return int((x.reshape(len(x), -1).sum(axis=1) > 0).sum())


@pytest.mark.parametrize("fault", ["raises", "wrong output count"])
def test_a_failing_batch_fails_only_its_own_requests(app_client, references, fault):
    batcher = app_client.app.state.manager.current.batcher
    real_predict = batcher.predict
    failed_batches: list[int] = []
    armed = threading.Event()

    def faulty(x):
        if armed.is_set():
            armed.clear()
            failed_batches.append(rows_in(x))
            if fault == "raises":
                raise RuntimeError("injected: device lost at /dev/nvidia0, token=abc123")
            return real_predict(x)[:-1]
        return real_predict(x)

    batcher.predict = faulty
    try:
        armed.set()
        responses = burst(app_client, 6)
    finally:
        batcher.predict = real_predict
    assert len(failed_batches) == 1
    failed = [r for r in responses if r.status_code == 500]
    assert len(failed) == failed_batches[0] >= 1
    for response in failed:
        error = assert_error(response, 500, "inference_failed")
        assert "nvidia" not in error["message"] and "abc123" not in error["message"]
    for i, response in enumerate(responses):
        if response.status_code != 500:
            assert same(assert_prediction(response)["probabilities"], references[i])
    # the next requests succeed, on the same batcher (its worker survived)
    assert batcher.running and app_client.app.state.manager.current.batcher is batcher
    for i, response in enumerate(burst(app_client, 4)):
        assert same(assert_prediction(response)["probabilities"], references[i])
    assert_ready(app_client)


def test_a_failing_batch_inside_predict_batch_fails_only_those_files(app_client, references):
    batcher = app_client.app.state.manager.current.batcher
    real_predict = batcher.predict
    calls = []

    def fail_first(x):
        calls.append(rows_in(x))
        if len(calls) == 1:
            raise RuntimeError("injected")
        return real_predict(x)

    batcher.predict = fail_first
    try:
        files = [("files", upload(i)["file"]) for i in range(3)]
        response = app_client.post("/predict/batch", files=files)
    finally:
        batcher.predict = real_predict
    assert response.status_code == 200
    statuses = [item["status"] for item in response.json()["results"]]
    assert statuses.count(500) == calls[0] and set(statuses) <= {200, 500}
    for item in response.json()["results"]:
        if item["status"] == 500:
            assert item["error"]["code"] == "inference_failed"
    assert_ready(app_client)


def test_a_hook_error_does_not_kill_the_batcher(app_client, references):
    """A bug after the model call (here: the metrics hook) fails that batch; the worker thread lives on."""
    batcher = app_client.app.state.manager.current.batcher
    real_on_batch = batcher.observer.on_batch

    def broken(size, seconds):
        batcher.observer.on_batch = real_on_batch
        raise ZeroDivisionError("hook bug")

    batcher.observer.on_batch = broken
    response = app_client.post("/predict", files=upload(0))
    assert response.status_code in (200, 500)  # results may already be set when the hook runs
    if response.status_code == 500:
        assert_error(response, 500, "inference_failed")
    assert same(assert_prediction(app_client.post("/predict", files=upload(1)))["probabilities"], references[1])
    assert_ready(app_client)


def test_overload_sheds_the_excess_with_503_and_completes_every_accepted_request():
    queue_limit, n = 2, 16
    with running_app(max_batch_size=1, queue_limit=queue_limit, max_delay_ms=0, gate="off") as client:
        references = {i: assert_prediction(client.post("/predict", files=upload(i)))["probabilities"]
                      for i in range(n)}
        batcher = client.app.state.manager.current.batcher
        real_predict = batcher.predict

        def slow(x):  # a slow device: the queue fills while one batch runs
            time.sleep(0.25)
            return real_predict(x)

        batcher.predict = slow
        try:
            responses = burst(client, n)
        finally:
            batcher.predict = real_predict
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 503}, statuses
        accepted = [i for i, s in enumerate(statuses) if s == 200]
        shed = [r for r in responses if r.status_code == 503]
        assert len(accepted) >= queue_limit and len(shed) >= n - 2 * (queue_limit + 1), statuses
        for response in shed:
            error = assert_error(response, 503, "overloaded")
            assert "queue is full" in error["message"]
            assert int(response.headers["retry-after"]) >= 1
        for i in accepted:  # each accepted request got its own image's answer, unchanged by the rush
            assert same(responses[i].json()["probabilities"], references[i])
        assert batcher.depth == 0
        metrics = client.get("/metrics").text
        assert re.search(rf'cxr_errors_total\{{code="overloaded"\}} {len(shed)}\.0', metrics), metrics[-2000:]
        assert_ready(client)
        for i in range(3):  # back to normal once the burst is over
            assert same(client.post("/predict", files=upload(i)).json()["probabilities"], references[i])
