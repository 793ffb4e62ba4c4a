"""What the input gate costs per image, as ratios measured in one run (the machine is shared and noisy).

Prints, for the shipped classifier (batched, as the batcher calls it) and the shipped gate (one image per call,
as the decode threads call it): ms per image, and the gate's cost as a share of the classifier's; plus the
decode stage with and without the gate on real 224x224 and full-resolution uploads.

    .venv/bin/python benchmarks/gate_cost.py [--data ../shared/data] [--repeat 5] [--gate-version 1 --gate-version 2]

With several ``--gate-version`` the gates are timed in turn in the same run, so their costs compare.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from app.gate import GateModel
from model_store.artifact import load_artifact
from model_store.imaging import decode
from model_store.preprocessing import preprocess
from model_store.registry import ModelRegistry


def best_of(repeat: int, run) -> float:
    """Seconds of the fastest of ``repeat`` runs (the least disturbed by other processes)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--gate-version", action="append", help="gate version(s) to time (default: the latest)")
    args = parser.parse_args()
    import tensorflow as tf

    registry = ModelRegistry()
    classifier = load_artifact(registry.resolve("pneumonia")[1])
    gates = [GateModel(load_artifact(path), number)
             for number, path in (registry.resolve("gate", v) for v in (args.gate_version or [None]))]
    spec = classifier.metadata.preprocessing
    small = sorted(Path(args.data, "chest_xray_224", "test").rglob("*.jpeg"))[:64]
    full = sorted(Path(args.data, "fullres_samples").rglob("*.jp*g"))
    images = [decode(p.read_bytes(), max_pixels=50_000_000) for p in small]
    batch = np.stack([preprocess(img, spec) for img in images[:16]])

    @tf.function(input_signature=[tf.TensorSpec((16, *spec.input_shape), tf.float32)])
    def classify(x: tf.Tensor) -> tf.Tensor:
        return classifier.model(x, training=False)

    classify(batch)
    classifier_ms = best_of(args.repeat, lambda: [classify(batch).numpy() for _ in range(4)]) / 64 * 1000
    print(f"classifier v{registry.latest('pneumonia')} batch 16: {classifier_ms:.3f} ms/image")
    gate_ms = {}
    for gate in gates:
        gate_ms[gate.version] = best_of(args.repeat, lambda gate=gate: [gate.score(img) for img in images]) \
            / len(images) * 1000
        print(f"gate v{gate.version} batch 1 (preprocess + model): {gate_ms[gate.version]:.3f} ms/image "
              f"= {gate_ms[gate.version] / classifier_ms:.1%} of the classifier (target <= 20%)")
    if len(gates) > 1:
        first, last = gates[0].version, gates[-1].version
        print(f"gate v{last} / gate v{first}: x{gate_ms[last] / gate_ms[first]:.2f} per image")
    for gate in gates:
        for name, paths in (("224x224 JPEG", small), ("full-resolution", full)):
            blobs = [p.read_bytes() for p in paths]

            def decode_only(blobs=blobs) -> None:
                for data in blobs:
                    preprocess(decode(data, min_size=2 * spec.input_size, max_pixels=50_000_000), spec)

            def decode_gated(blobs=blobs, gate=gate) -> None:
                for data in blobs:
                    image = decode(data, min_size=2 * spec.input_size, max_pixels=50_000_000)
                    gate.score(image)
                    preprocess(image, spec)

            plain = best_of(args.repeat, decode_only) / len(blobs) * 1000
            gated = best_of(args.repeat, decode_gated) / len(blobs) * 1000
            print(f"decode stage, {name} ({len(blobs)} files): {plain:.2f} ms -> {gated:.2f} ms with gate "
                  f"v{gate.version} (x{gated / plain:.2f})")


if __name__ == "__main__":
    main()
