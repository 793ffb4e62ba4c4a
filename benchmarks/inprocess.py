"""The in-process ceiling for the load benchmark: decode + preprocess + model calls, no HTTP, no queue.

Started by ``load.py`` as a subprocess: loads the model and warms it while the servers start, prints ``ready``,
then, for each ``go`` line on stdin (sent while the servers are frozen, so that nothing of ours competes),
prints one JSON document of timings. Everything is timed in one thread, in this process, with the very code
the service runs: ``model_store.imaging.decode`` (same reduced JPEG decoding), the service's input gate (shape
check, colour check and gate model, ``app.gate``, loaded from the same ``CXR_*`` settings as the service),
``preprocess`` with the artifact's spec, and the model compiled and padded to power-of-two buckets as the
service does (``model_runner.py``).

``single_ms_p50`` is one image through the same per-image work the service does (decode + gate + preprocess +
model on a batch of 1; not the audit record, HTTP or the batcher); ``single_no_gate_ms_p50`` the same without
the gate (what this figure was before the gate existed) and ``gate_ms_p50`` the gate alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.dataplane import check_shape
from app.gate import InputGate, load_gate
from app.settings import Settings
from benchmarks.model_runner import load_runnable
from model_store.imaging import decode, sniff_format
from model_store.preprocessing import preprocess

MAX_PIXELS = 50_000_000


def timed_repeats(fn, repeats: int, budget_s: float) -> list[float]:
    """Seconds per call, for at most ``repeats`` calls and about ``budget_s`` seconds (at least 3 calls)."""
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
        if len(times) >= 3 and time.perf_counter() > deadline:
            break
    return times


def measure(data: bytes, spec, predict, batch_size: int, budget_s: float, *, gate: InputGate,
            settings: Settings) -> dict[str, float]:
    min_size = 2 * spec.input_size

    def prepare() -> np.ndarray:
        return preprocess(decode(data, min_size=min_size, max_pixels=MAX_PIXELS), spec)

    def check(image: np.ndarray) -> None:
        """The service's checks between decode and preprocess (app.dataplane.DataPlane._prepare)."""
        check_shape(image, settings.min_image_side, settings.max_aspect_ratio)
        fmt = sniff_format(data)
        gate.check_header(data, fmt)
        gate.check_image(image, data, fmt)

    def prepare_gated() -> np.ndarray:
        image = decode(data, min_size=min_size, max_pixels=MAX_PIXELS)
        check(image)
        return preprocess(image, spec)

    x1 = prepare()[np.newaxis]
    decoded = decode(data, min_size=min_size, max_pixels=MAX_PIXELS)
    # interleaved, so that a drift of the machine hits both alike
    single, single_no_gate = [], []
    for _ in range(4):
        single += timed_repeats(lambda: predict(prepare_gated()[np.newaxis]), 100, budget_s / 4)
        single_no_gate += timed_repeats(lambda: predict(prepare()[np.newaxis]), 100, budget_s / 8)
    gate_only = timed_repeats(lambda: check(decoded), 400, budget_s / 4)
    prep = timed_repeats(prepare, 400, budget_s / 2)
    model1 = timed_repeats(lambda: predict(x1), 400, budget_s / 2)
    xb = np.repeat(x1, batch_size, axis=0)
    model_b = timed_repeats(lambda: predict(xb), 200, budget_s / 2)

    def one_batch() -> None:
        predict(np.stack([prepare() for _ in range(batch_size)]))

    batches = timed_repeats(one_batch, 100, budget_s)
    ms = 1000.0
    return {
        # decode + gate + preprocess + model on a batch of 1: the service's per-image work
        "single_ms_p50": statistics.median(single) * ms,
        "single_ms_min": min(single) * ms,
        "single_no_gate_ms_p50": statistics.median(single_no_gate) * ms,  # decode + preprocess + model
        "gate_ms_p50": statistics.median(gate_only) * ms,  # shape check + colour check + gate model
        "decode_preprocess_ms_p50": statistics.median(prep) * ms,
        "model_batch1_ms_p50": statistics.median(model1) * ms,
        f"model_batch{batch_size}_ms_p50": statistics.median(model_b) * ms,
        "model_ms_per_image_at_batch": statistics.median(model_b) * ms / batch_size,
        # sequential, one thread: decode+preprocess B images, then one model call on the B batch
        "images_per_s": batch_size / statistics.median(batches),
        "batches_timed": len(batches),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="model_store")
    parser.add_argument("--name", default="pneumonia")
    parser.add_argument("--version")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--budget-s", type=float, default=3.0, help="seconds per measurement (bounded)")
    parser.add_argument("--runtime", default="keras", help="keras, or a cxr-serve runtime name (auto: the one "
                        "the service picks, verified the same way)")
    parser.add_argument("uploads", nargs="+", help="LABEL=PATH of each upload to time")
    args = parser.parse_args()
    model = load_runnable(args.store, args.name, args.version, args.max_batch_size, args.runtime)
    settings = Settings()  # the gate as the service configures it (CXR_GATE, CXR_GATE_MODEL_STORE, ...)
    gate = load_gate(settings)
    spec, predict = model.spec, model.predict
    uploads = {label: Path(file).read_bytes() for label, file in (item.split("=", 1) for item in args.uploads)}
    print("ready", flush=True)
    for _ in range(10):  # one measurement per "go" line; the driver may ask again if the machine was busy
        if sys.stdin.readline().strip() != "go":  # "quit", or the driver went away
            return
        cpu, wall = time.process_time(), time.perf_counter()
        results = {label: measure(data, spec, predict, args.max_batch_size, args.budget_s, gate=gate,
                                  settings=settings)
                   for label, data in uploads.items()}
        print(json.dumps({"input_size": spec.input_size, "batch_size": args.max_batch_size, "uploads": results,
                          "runtime": model.runtime, "gate": gate.mode,
                          "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}), flush=True)


if __name__ == "__main__":
    main()
