"""DynamicBatcher on its own: a numpy "model", no server, no TensorFlow."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from app.batching import BatchObserver, DynamicBatcher, bucket_for, bucket_sizes
from app.errors import InferenceError, InvalidInputError, NotReadyError, OverloadedError

SHAPE = (2, 2, 1)


def item(value: float) -> np.ndarray:
    return np.full(SHAPE, value, dtype=np.float32)


class Model:
    """Returns [value, value * 2] per input; records every padded batch it sees; can be held on a gate."""

    def __init__(self, fail_if: Callable[[np.ndarray], bool] = lambda batch: False) -> None:
        self.batches: list[np.ndarray] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_if = fail_if

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        self.batches.append(batch.copy())
        if self.fail_if(batch):
            raise RuntimeError("boom")
        first = batch[:, 0, 0, 0]
        return np.stack([first, first * 2], axis=1)

    def sizes(self) -> list[int]:
        return [len(b) for b in self.batches]


def make(model: Model, **kwargs: object) -> DynamicBatcher:
    options = {"max_batch_size": 8, "max_delay_s": 0.005, "queue_limit": 64, "input_shape": SHAPE}
    options.update(kwargs)
    batcher = DynamicBatcher(model, **options)  # type: ignore[arg-type]
    batcher.start()
    return batcher


def test_buckets_are_powers_of_two_up_to_the_maximum():
    assert bucket_sizes(16) == [1, 2, 4, 8, 16]
    assert bucket_sizes(12) == [1, 2, 4, 8, 12]
    assert bucket_sizes(1) == [1]
    assert [bucket_for(n, [1, 2, 4, 8]) for n in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]


def test_results_go_to_the_right_caller_under_concurrency():
    model = Model()
    batcher = make(model, max_delay_s=0.002, queue_limit=1000)

    async def main() -> list[np.ndarray]:
        async def one(i: int) -> np.ndarray:
            await asyncio.sleep((i % 7) * 0.001)
            return (await batcher.submit(item(i))).output

        return await asyncio.gather(*(one(i) for i in range(200)))

    outputs = asyncio.run(main())
    # and from several threads, each with its own event loop
    thread_outputs: dict[int, np.ndarray] = {}

    def worker(offset: int) -> None:
        async def run() -> None:
            for i in range(offset, offset + 20):
                thread_outputs[i] = (await batcher.submit(item(i))).output
        asyncio.run(run())

    threads = [threading.Thread(target=worker, args=(1000 + 100 * k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.stop()
    for i, out in enumerate(outputs):
        np.testing.assert_array_equal(out, [i, 2 * i])
    for i, out in thread_outputs.items():
        np.testing.assert_array_equal(out, [i, 2 * i])
    assert len(thread_outputs) == 80
    assert max(model.sizes()) > 1, "concurrent requests should share model calls"


def test_batches_are_padded_to_buckets_and_padding_is_dropped():
    model = Model()
    model.gate.clear()
    batcher = make(model, max_batch_size=8)

    async def main() -> list[np.ndarray]:
        first = asyncio.ensure_future(batcher.submit(item(100)))
        await asyncio.to_thread(model.entered.wait, 5)  # the worker is busy with a batch of one
        rest = [asyncio.ensure_future(batcher.submit(item(i))) for i in range(5)]
        await asyncio.sleep(0.01)
        model.gate.set()
        return [r.output for r in await asyncio.gather(first, *rest)]

    outputs = asyncio.run(main())
    batcher.stop()
    assert model.sizes() == [1, 8]  # 5 queued items padded to the bucket of 8
    assert np.all(model.batches[1][5:] == 0)
    np.testing.assert_array_equal(outputs[1:], [[i, 2 * i] for i in range(5)])


def test_lone_request_does_not_wait_for_the_delay():
    model = Model()
    batcher = make(model, max_delay_s=0.5)

    async def main() -> float:
        started = time.monotonic()
        await batcher.submit(item(1))
        return time.monotonic() - started

    assert asyncio.run(main()) < 0.4  # nothing else announced: no reason to wait half a second
    batcher.stop()


@contextlib.contextmanager
def announced_elsewhere(batcher: DynamicBatcher) -> Iterator[None]:
    """Another caller (a thread) announces an item it is still decoding, until the block ends."""
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with batcher.expecting():
            entered.set()
            leave.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    entered.wait(10)
    try:
        yield
    finally:
        leave.set()
        thread.join(10)


def test_max_delay_is_honoured_while_more_work_is_announced():
    model = Model()
    delay = 0.2
    batcher = make(model, max_delay_s=delay)

    async def main() -> float:
        with announced_elsewhere(batcher):  # a request still decoding, which never arrives
            started = time.monotonic()
            await batcher.submit(item(1))
            return time.monotonic() - started

    waited = asyncio.run(main())
    assert delay * 0.9 <= waited < delay + 2.0

    async def joined() -> list[int]:
        # an announced request arriving within the delay joins the same batch
        with announced_elsewhere(batcher):
            first = asyncio.ensure_future(batcher.submit(item(1)))
            await asyncio.sleep(delay / 4)
            second = await batcher.submit(item(2))
        return [(await first).batch_size, second.batch_size]

    assert asyncio.run(joined()) == [2, 2]
    batcher.stop()


def test_a_request_never_waits_for_its_own_announcement():
    """The data plane submits inside ``expecting()``: the submit redeems the announcement, so a lone request
    runs at once instead of waiting max_delay for itself (the 2.8 ms a lone request used to pay)."""
    model = Model()
    batcher = make(model, max_delay_s=5.0)

    async def main() -> float:
        started = time.monotonic()
        with batcher.expecting():
            future = batcher.submit_nowait(item(1))
            result = await asyncio.wrap_future(future)
        assert result.batch_size == 1
        return time.monotonic() - started

    assert asyncio.run(main()) < 4.0
    assert batcher.expected == 0
    batcher.stop()


def test_a_withdrawn_announcement_wakes_the_waiting_worker():
    """A caller that announced and then failed to decode (nothing submitted) releases the worker at once."""
    model = Model()
    batcher = make(model, max_delay_s=5.0)

    async def main() -> float:
        release = threading.Event()
        holder_ready = threading.Event()

        def failing_decode() -> None:
            with batcher.expecting():
                holder_ready.set()
                release.wait(10)  # then leaves the block without submitting (a decode error)

        thread = threading.Thread(target=failing_decode)
        thread.start()
        holder_ready.wait(10)
        started = time.monotonic()
        future = asyncio.wrap_future(batcher.submit_nowait(item(1)))
        await asyncio.sleep(0.05)
        release.set()
        await future
        thread.join(10)
        return time.monotonic() - started

    assert asyncio.run(main()) < 4.0
    batcher.stop()


def test_runtimes_that_take_any_size_get_unpadded_batches():
    model = Model()
    model.gate.clear()  # hold the first batch so the next five queue up together
    batcher = make(model, pad=False)

    async def main() -> list[float]:
        first = asyncio.ensure_future(batcher.submit(item(0)))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit(item(v))) for v in (1, 2, 3, 4, 5)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = await asyncio.gather(first, *rest)
        return [float(r.output[0]) for r in results]

    assert asyncio.run(main()) == [0, 1, 2, 3, 4, 5]
    assert model.sizes() == [1, 5]  # 5, not padded to the bucket of 8
    batcher.stop()


def test_a_failing_batch_fails_only_its_own_requests():
    model = Model(fail_if=lambda batch: bool((batch == -1).any()))
    model.gate.clear()
    batcher = make(model, max_batch_size=2)

    async def main() -> list[object]:
        first = asyncio.ensure_future(batcher.submit(item(0)))
        await asyncio.to_thread(model.entered.wait, 5)
        queued = [asyncio.ensure_future(batcher.submit(item(v))) for v in (-1, 1, 2, 3)]
        await asyncio.sleep(0.01)
        model.gate.set()
        return await asyncio.gather(first, *queued, return_exceptions=True)

    first, bad, partner, third, fourth = asyncio.run(main())
    assert model.sizes() == [1, 2, 2]
    assert isinstance(bad, InferenceError) and isinstance(partner, InferenceError)
    for result, value in ((first, 0), (third, 2), (fourth, 3)):
        np.testing.assert_array_equal(result.output, [value, 2 * value])  # type: ignore[union-attr]
    # and the worker is still alive
    assert asyncio.run(batcher.submit(item(5))).output[0] == 5
    batcher.stop()


def test_a_model_returning_the_wrong_number_of_outputs_fails_that_batch():
    calls = []

    def short(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return np.zeros((len(batch) - 1 if len(calls) == 1 else len(batch), 2))

    batcher = make(Model(), max_batch_size=4)
    batcher.predict = short
    with pytest.raises(InferenceError, match="0 outputs for 1 inputs"):
        asyncio.run(batcher.submit(item(1)))
    assert asyncio.run(batcher.submit(item(1))).output.shape == (2,)
    batcher.stop()


def test_full_queue_pushes_back_then_recovers():
    model = Model()
    model.gate.clear()
    batcher = make(model, max_batch_size=1, queue_limit=2)

    async def main() -> tuple[OverloadedError, list[float]]:
        running = asyncio.ensure_future(batcher.submit(item(0)))
        await asyncio.to_thread(model.entered.wait, 5)  # taken by the worker: no longer queued
        waiting = [asyncio.ensure_future(batcher.submit(item(v))) for v in (1, 2)]
        await asyncio.sleep(0)
        assert batcher.depth == 2
        with pytest.raises(OverloadedError) as refused:
            await batcher.submit(item(3))
        model.gate.set()
        done = await asyncio.gather(running, *waiting)
        return refused.value, [float(r.output[0]) for r in done]

    refused, values = asyncio.run(main())
    assert refused.retry_after and refused.retry_after > 0
    assert values == [0, 1, 2]
    assert asyncio.run(batcher.submit(item(4))).output[0] == 4  # accepted again once drained
    batcher.stop()


def test_stop_refuses_new_work_and_drains_the_queue():
    model = Model()
    model.gate.clear()
    batcher = make(model, max_batch_size=2)

    async def main() -> list[float]:
        futures = [asyncio.ensure_future(batcher.submit(item(v))) for v in range(7)]
        await asyncio.to_thread(model.entered.wait, 5)
        stopper = asyncio.ensure_future(asyncio.to_thread(batcher.stop, 10))
        await asyncio.sleep(0.02)
        with pytest.raises(NotReadyError):
            await batcher.submit(item(99))
        model.gate.set()
        await stopper
        return [float(r.output[0]) for r in await asyncio.gather(*futures)]

    assert asyncio.run(main()) == list(range(7))
    assert not batcher.running
    assert sum(model.sizes()) >= 7


def test_cancelled_requests_are_not_computed():
    model = Model()
    model.gate.clear()
    batcher = make(model, max_batch_size=4)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(item(0)))
        await asyncio.to_thread(model.entered.wait, 5)
        gone = asyncio.ensure_future(batcher.submit(item(7)))
        kept = asyncio.ensure_future(batcher.submit(item(8)))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while its image waited
        await asyncio.sleep(0.01)
        model.gate.set()
        await first
        assert (await kept).output[0] == 8

    asyncio.run(main())
    batcher.stop()
    assert not any((b == 7).any() for b in model.batches)


def test_inputs_of_the_wrong_shape_are_refused_at_submit():
    batcher = make(Model())
    with pytest.raises(InvalidInputError, match="shape"):
        asyncio.run(batcher.submit(np.zeros((3, 3, 1), dtype=np.float32)))
    batcher.stop()


def test_metrics_hooks_see_batches_and_a_broken_hook_does_not_kill_the_worker():
    seen: list[int] = []
    depths: list[int] = []

    def on_batch(size: int, seconds: float) -> None:
        seen.append(size)
        if len(seen) == 1:
            raise ValueError("metrics backend down")

    batcher = DynamicBatcher(Model(), max_batch_size=4, max_delay_s=0.001, queue_limit=8,
                             observer=BatchObserver(on_batch=on_batch, on_queue_depth=depths.append))
    batcher.start()
    asyncio.run(batcher.submit(item(1)))  # results are delivered before the hook runs
    assert asyncio.run(batcher.submit(item(2))).output[0] == 2
    batcher.stop()
    assert seen == [1, 1]
    assert depths and depths[-1] == 0


def test_submit_before_start_is_refused():
    batcher = DynamicBatcher(Model(), max_batch_size=2, max_delay_s=0, queue_limit=2)
    with pytest.raises(NotReadyError):
        asyncio.run(batcher.submit(item(1)))


# -- submit_or_run: a lone request runs in the caller's thread, without the worker --------------------------
class ThreadModel(Model):
    """Also records the thread of every call and the most calls it ever saw running at once."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.threads: list[str] = []
        self.running = 0
        self.most_at_once = 0
        self._count = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._count:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.threads.append(threading.current_thread().name)
        try:
            return super().__call__(batch)
        finally:
            with self._count:
                self.running -= 1


def in_thread(fn: Callable[[], object], name: str) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.append(fn()), name=name)
    thread.start()
    return thread, out


def test_a_lone_request_runs_in_the_callers_thread_not_the_worker():
    model = ThreadModel()
    seen: list[int] = []
    batcher = make(model, name="worker", observer=BatchObserver(on_batch=lambda size, s: seen.append(size)))
    with batcher.expecting() as announcement:
        future = batcher.submit_or_run(item(3), announcement)
        assert future.done(), "an idle batcher answers before submit_or_run returns"
    result = future.result()
    np.testing.assert_array_equal(result.output, [3, 6])
    assert result.batch_size == 1
    assert model.threads == [threading.current_thread().name]
    assert seen == [1]  # the batch size histogram still sees it
    assert batcher.expected == 0 and batcher.depth == 0
    batcher.stop()


def test_under_load_submit_or_run_queues_and_batches_still_form():
    model = ThreadModel()
    model.gate.clear()  # the first (inline) call holds the model
    batcher = make(model, name="worker", max_batch_size=4, max_delay_s=5.0)
    first, first_out = in_thread(lambda: batcher.submit_or_run(item(0)).result(), "decode-a")
    assert model.entered.wait(5)
    with announced_elsewhere(batcher):  # more work on its way: the worker collects a full batch, whatever the timing
        # the model is busy: these are queued, not run inline (nor concurrently with the running call)
        futures = [batcher.submit_or_run(item(v)) for v in (1, 2, 3, 4)]
        assert not any(f.done() for f in futures)
        assert batcher.depth == 4
        model.gate.set()
        first.join(10)
    assert [float(r.output[0]) for r in (first_out[0], *(f.result(10) for f in futures))] == [0, 1, 2, 3, 4]
    assert model.sizes() == [1, 4]  # one batch of the four queued while the first ran
    assert model.threads == ["decode-a", "worker"]
    assert model.most_at_once == 1  # one model call at a time
    batcher.stop()


def test_an_item_queued_while_the_worker_waits_for_announced_work_joins_that_batch():
    model = ThreadModel()
    batcher = make(model, name="worker", max_delay_s=0.3)

    async def main() -> list[int]:
        with announced_elsewhere(batcher):  # another request is still decoding (until after both answers)
            with batcher.expecting() as announcement:
                first = batcher.submit_or_run(item(1), announcement)  # someone else announced: queued
            assert not first.done()
            second = batcher.submit_or_run(item(2))  # the worker holds the first: this joins it
            results = await asyncio.gather(asyncio.wrap_future(first), asyncio.wrap_future(second))
        return [r.batch_size for r in results]

    assert asyncio.run(main()) == [2, 2]  # one batch, run by the worker once the delay passed
    assert model.threads == ["worker"]
    batcher.stop()


def test_a_failing_inline_call_fails_only_its_request():
    model = ThreadModel(fail_if=lambda batch: bool((batch == -1).any()))
    batcher = make(model)
    with pytest.raises(InferenceError):
        batcher.submit_or_run(item(-1)).result()
    assert float(batcher.submit_or_run(item(5)).result().output[0]) == 5  # and the batcher goes on
    assert float(asyncio.run(batcher.submit(item(6))).output[0]) == 6  # the worker too
    batcher.stop()


def test_stop_waits_for_an_inline_call_and_then_refuses_new_work():
    model = ThreadModel()
    model.gate.clear()
    batcher = make(model)
    caller, out = in_thread(lambda: batcher.submit_or_run(item(7)).result(), "decode-a")
    assert model.entered.wait(5)
    stopper, _ = in_thread(lambda: batcher.stop(10), "stopper")
    stopper.join(0.2)
    assert stopper.is_alive(), "stop() must not return while an accepted inline call is still running"
    with pytest.raises(NotReadyError):
        batcher.submit_or_run(item(8))
    model.gate.set()
    stopper.join(10)
    caller.join(10)
    assert not stopper.is_alive()
    assert float(out[0].output[0]) == 7  # type: ignore[attr-defined]
    assert not batcher.running


def test_items_the_worker_holds_while_an_inline_call_runs_still_count_against_the_queue_limit():
    model = ThreadModel()
    model.gate.clear()
    batcher = make(model, max_batch_size=1, queue_limit=1)
    caller, _ = in_thread(lambda: batcher.submit_or_run(item(0)).result(), "decode-a")
    assert model.entered.wait(5)
    waiting = batcher.submit_or_run(item(1))  # queued; the worker takes it and waits for the model
    time.sleep(0.05)
    assert batcher.depth == 1
    with pytest.raises(OverloadedError):
        batcher.submit_or_run(item(2))
    model.gate.set()
    caller.join(10)
    assert float(waiting.result(10).output[0]) == 1
    assert model.most_at_once == 1
    batcher.stop()


def test_a_lone_request_asked_wide_runs_on_the_wide_predict_and_a_queued_one_never_does():
    narrow, wide = ThreadModel(), ThreadModel()
    batcher = make(narrow, wide=wide)
    assert float(batcher.submit_or_run(item(1), wide=True).result().output[0]) == 1
    assert float(batcher.submit_or_run(item(2)).result().output[0]) == 2  # not asked: the runtime's own
    assert len(wide.batches) == 1 and len(narrow.batches) == 1
    narrow.gate.clear()  # hold the worker on a batch: the next wide request finds the batcher busy and queues
    held = batcher.submit_nowait(item(3))
    assert narrow.entered.wait(5)
    queued = batcher.submit_or_run(item(4), wide=True)
    narrow.gate.set()
    assert float(held.result(5).output[0]) == 3 and float(queued.result(5).output[0]) == 4
    assert len(wide.batches) == 1, "a queued image ran on the wide predict"
    batcher.stop()
    without = make(ThreadModel())  # a runtime without a wide mode: wide=True changes nothing
    assert float(without.submit_or_run(item(5), wide=True).result().output[0]) == 5
    without.stop()
