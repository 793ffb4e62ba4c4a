"""In-process inference speed of model artifacts at one batch size, measured in the same run.

    python -m training.benchmark model_store/pneumonia/1/model.h5 model_store/pneumonia/2/model.h5

Each model runs as the service's Keras reference runtime does (one traced ``tf.function`` per batch
shape, float32), or with ``--runtime NAME`` on that serving runtime (e.g. ``tflite-int8``, the service's
default on CPU), loaded as the service loads it; rounds alternate between the models so background load
hits all of them alike. Prints images/s per round and the median, plus the ratio of each model's median to
the first one's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.benchmark", description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="model.h5 artifacts")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=3.0, help="per model per round")
    p.add_argument("--runtime", default="reference", help="reference (traced float32 Keras) or a serving "
                   "runtime name from app.runtimes (tflite-int8, keras-bf16, ...)")
    args = p.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from model_store.artifact import load_artifact

    runners = {}
    for path in args.models:
        loaded = load_artifact(path)
        shape = loaded.metadata.preprocessing.input_shape
        x = tf.constant((np.random.default_rng(0).random((args.batch_size, *shape)) > 0.5).astype(np.float32))
        if args.runtime == "reference":
            traced = tf.function(lambda t, m=loaded.model: m(t, training=False))
            fn = lambda t, f=traced: f(t).numpy()  # noqa: E731
        else:  # the service's own runtime classes (imported here only: training does not depend on app/)
            from app.batching import bucket_sizes
            from app.runtimes import RUNTIMES

            fn = RUNTIMES[args.runtime].load(loaded, bucket_sizes(args.batch_size)).predict
        fn(x)  # trace and warm
        runners[path] = (fn, x, Path(path).stat().st_size)
    rates: dict[str, list[float]] = {path: [] for path in runners}
    for _ in range(args.rounds):
        for path, (fn, x, _) in runners.items():
            images, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                fn(x)
                images += args.batch_size
            rates[path].append(images / (time.perf_counter() - start))
    first = statistics.median(rates[args.models[0]])
    summary = {path: {"images_per_s_median": round(statistics.median(r), 1),
                      "images_per_s_rounds": [round(v, 1) for v in r],
                      "ratio_to_first": round(statistics.median(r) / first, 3),
                      "file_mb": round(runners[path][2] / 1e6, 2), "batch_size": args.batch_size,
                      "runtime": args.runtime}
               for path, r in rates.items()}
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
