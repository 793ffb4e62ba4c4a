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
the gate (what this figure was before the gate existed) and ``gate_ms_p50`` the gate alone. ``images_per_s``
is gate-free (decode + preprocess of a batch, then one model call), kept as it was measured before the gate.

The same process is also a worker of the throughput ceilings (``ceilings.py``): a ``ceiling LABEL START END``
line runs the full per-image work (decode + gate + preprocess, ``--max-batch-size`` images, then one model call
on that batch) over and over from monotonic time START until a batch ends at or after END, and prints the images
done, its CPU seconds (``time.process_time``: every thread of this process) and its wall seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
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


def gate_check(data: bytes, gate: InputGate, settings: Settings) -> Callable[[np.ndarray], None]:
    def check(image: np.ndarray) -> None:
        """The service's checks between decode and preprocess (app.dataplane.DataPlane._prepare)."""
        check_shape(image, settings.min_image_side, settings.max_aspect_ratio)
        fmt = sniff_format(data)
        gate.check_header(data, fmt)
        gate.check_image(image, data, fmt)

    return check


def gated_prepare(data: bytes, spec, gate: InputGate, settings: Settings) -> Callable[[], np.ndarray]:
    """decode + gate + preprocess of one upload: the service's per-image work before the model."""
    min_size, check = 2 * spec.input_size, gate_check(data, gate, settings)

    def prepare_gated() -> np.ndarray:
        image = decode(data, min_size=min_size, max_pixels=MAX_PIXELS)
        check(image)
        return preprocess(image, spec)

    return prepare_gated


def ceiling_run(data: bytes, spec, predict, batch_size: int, *, start: float, end: float, gate: InputGate,
                settings: Settings) -> dict[str, float]:
    """Full per-image work, batch after batch, from monotonic time ``start`` until a batch ends at or after
    ``end`` (time.monotonic is one clock for every process of the machine, so workers share the window)."""
    prepare_gated = gated_prepare(data, spec, gate, settings)
    while time.monotonic() < start:
        time.sleep(min(0.01, max(0.0, start - time.monotonic())))
    cpu, images, now = time.process_time(), 0, time.monotonic()
    while now < end:
        predict(np.stack([prepare_gated() for _ in range(batch_size)]))
        images += batch_size
        now = time.monotonic()
    return {"images": images, "cpu_s": time.process_time() - cpu, "wall_s": now - start}


def measure(data: bytes, spec, predict, batch_size: int, budget_s: float, *, gate: InputGate,
            settings: Settings) -> dict[str, float]:
    min_size = 2 * spec.input_size

    def prepare() -> np.ndarray:
        return preprocess(decode(data, min_size=min_size, max_pixels=MAX_PIXELS), spec)

    check = gate_check(data, gate, settings)
    prepare_gated = gated_prepare(data, spec, gate, settings)

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
        # GATE-FREE, sequential: decode+preprocess B images, then one model call on the B batch (the runtime's
        # own threads as the service sets them); the gated ceilings are ceilings.py's
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
    for line in sys.stdin:  # one measurement per line; the driver may ask again if the machine was busy
        words = line.split()
        if words[:1] == ["ceiling"] and len(words) == 4:
            label, start, end = words[1], float(words[2]), float(words[3])
            result = ceiling_run(uploads[label], spec, predict, args.max_batch_size, start=start, end=end, gate=gate,
                                 settings=settings)
            print(json.dumps({"upload": label, **result}), flush=True)
            continue
        if words != ["go"]:  # "quit"
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
