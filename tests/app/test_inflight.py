"""app/inflight.py: the workers' in-flight counts in the shared run folder, and the runtime's every-core predict
that a lone image takes when every count but its own is zero."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.inflight import SLOTS, InFlight
from app.runtimes import lite as lite_module
from app.workers import usable_cpus
from model_store.artifact import load_artifact
from model_store.imaging import decode
from model_store.preprocessing import preprocess


def test_each_worker_sees_the_others_requests_and_images_in_flight_not_its_own(tmp_path: Path):
    first, second = InFlight(tmp_path), InFlight(tmp_path)
    try:
        assert not first.others_busy() and not second.others_busy()
        with first.request():
            assert second.others_busy() and not first.others_busy()  # a request still reading its body counts
            with first.image() as alone:
                assert alone and (first.requests, first.images) == (1, 1)
                with first.image() as alone_again:  # a second image of the same request (/predict/batch)
                    assert not alone_again
            with second.request(), first.image() as alone:
                assert alone, "another worker's request does not make this one less alone"
        with first.request(), first.request(), first.image() as alone:
            assert not alone, "another request in this worker: not alone"
        with first.image() as alone:
            assert alone, "an image without a request (the DICOM node) is alone"
        assert (first.requests, first.images) == (0, 0) and not second.others_busy()
    finally:
        first.close()
        second.close()


def test_a_dead_workers_count_is_cleared_by_the_next_worker_to_start(tmp_path: Path):
    watcher, dead = InFlight(tmp_path), InFlight(tmp_path)
    with dead.image():
        dead.close()  # as if killed mid-request: its count stays in the file, its slot lock is released
    assert watcher.others_busy()
    replacement = InFlight(tmp_path)  # takes the free slot and zeroes it
    try:
        assert not watcher.others_busy()
    finally:
        replacement.close()
    low, high = InFlight(tmp_path), InFlight(tmp_path)
    with high.image():
        high.close()  # dies in a higher slot than the one the next worker takes
    low.close()
    assert watcher.others_busy()
    newcomer = InFlight(tmp_path)  # takes the lower free slot; the higher one's stale count is cleared too
    try:
        assert not watcher.others_busy()
    finally:
        newcomer.close()
        watcher.close()


def test_one_process_has_no_others_and_a_worker_without_a_slot_assumes_they_are_busy(tmp_path: Path):
    assert not InFlight(None).others_busy()
    workers = [InFlight(tmp_path) for _ in range(SLOTS)]
    extra = InFlight(tmp_path)
    try:
        assert extra.others_busy()
        with extra.image():  # publishes nowhere
            assert not any(w.others_busy() for w in workers)
    finally:
        for worker in [*workers, extra]:
            worker.close()


@pytest.mark.skipif(usable_cpus() < 2, reason="one usable core: a worker's share is already every core")
def test_the_int8_runtimes_every_core_predict_answers_bit_for_bit_as_its_one_thread_predict(
        shipped_model: Path, xray_224_dir: Path):
    artifact = load_artifact(shipped_model)
    spec = artifact.metadata.preprocessing
    files = sorted(xray_224_dir.glob("test/*/*.jpeg"))[::20]
    x = np.stack([preprocess(decode(f.read_bytes(), min_size=2 * spec.input_size, max_pixels=50_000_000), spec)
                  for f in files]).astype(np.float32)
    runtime = lite_module.TFLiteInt8Runtime(lite_module.convert_int8(artifact.model), spec.input_shape,
                                            [1, 2, 4, 8, 16], threads=1)  # one worker's share of two cores
    assert runtime.wide is not None
    assert np.array_equal(runtime.wide(x), runtime.predict(x))
    single = lite_module.TFLiteInt8Runtime(runtime.flatbuffer, spec.input_shape, [1, 2, 4, 8, 16],
                                           threads=usable_cpus())
    assert single.wide is None  # one process on every core: predict is already wide
