"""In-process comparison of the model runtimes on the real test split: speed, agreement with the float32
reference, and the test figures each one would serve.

For every runtime available here (``app.runtimes.RUNTIMES``): images/s at batch 1 and batch 16 (wall clock and
per CPU-second: on a shared machine the second is the steadier one, and at saturation it is what throughput
follows), max |dp| against ``model(x, training=False)`` in float32, decisions changed at the stored threshold
(after the stored temperature), and sensitivity / specificity / ROC AUC on the test split. Rounds are
interleaved so that drifts of a shared machine hit every runtime alike; medians are printed.

Usage: ``python benchmarks/runtimes.py [--data DIR] [--rounds 5] [--out runtimes.json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.runtimes import RUNTIMES
from app.runtimes.verify import decisions
from model_store import golden
from model_store.artifact import load_artifact
from model_store.imaging import decode
from model_store.preprocessing import preprocess
from model_store.registry import ModelRegistry

BUCKETS = [1, 2, 4, 8, 16]


def load_test_split(data: Path, spec) -> tuple[np.ndarray, np.ndarray]:
    files = sorted((data / "chest_xray_224" / "test").glob("*/*.jpeg"))
    if not files:
        sys.exit(f"no test images under {data / 'chest_xray_224' / 'test'} (set --data or CXR_DATA_DIR)")
    x = np.stack([preprocess(decode(f.read_bytes(), min_size=2 * spec.input_size, max_pixels=50_000_000), spec)
                  for f in files]).astype(np.float32)
    labels = np.array([1 if f.parent.name == "PNEUMONIA" else 0 for f in files])
    return x, labels


def figures(labels: np.ndarray, score: np.ndarray, decided: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    positives, negatives = labels == 1, labels == 0
    return {"sensitivity": float(decided[positives].mean()), "specificity": float((~decided[negatives]).mean()),
            "accuracy": float((decided == positives).mean()), "roc_auc": float(roc_auc_score(labels, score))}


def speed(runtime, x: np.ndarray, batch: int, repeats: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second) over ``repeats`` passes of 16 images."""
    chunks = [x[i : i + batch] for i in range(0, 16, batch)]
    runtime.predict(chunks[0])
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(repeats):
        for chunk in chunks:
            runtime.predict(chunk)
    images = 16 * repeats
    return images / (time.perf_counter() - wall), images / max(time.process_time() - cpu, 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("CXR_DATA_DIR", "../shared/data")))
    parser.add_argument("--store", default="model_store")
    parser.add_argument("--name", default="pneumonia")
    parser.add_argument("--version")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="passes of 16 images per timing")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    artifact = load_artifact(ModelRegistry(args.store).resolve(args.name, args.version)[1])
    meta = artifact.metadata
    x, labels = load_test_split(args.data, meta.preprocessing)
    reference = golden.reference_probabilities(artifact.model, x)
    runtimes = {}
    for name, cls in RUNTIMES.items():
        reason = cls.unavailable_reason()
        if reason:
            print(f"{name}: unavailable here ({reason})")
            continue
        try:
            runtimes[name] = cls.load(artifact, BUCKETS)
        except Exception as exc:  # e.g. a GPU-only runtime on a CPU
            print(f"{name}: not loaded ({type(exc).__name__}: {exc})")
    timings: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for name, runtime in runtimes.items():
            for batch in (1, 16):
                timings.setdefault((name, batch), []).append(speed(runtime, x, batch, args.repeats))
    ref_decided = decisions(reference, meta)
    rows = []
    for name, runtime in runtimes.items():
        probabilities = runtime.predict_any(x)
        decided = decisions(probabilities, meta)
        row = {"runtime": name, "max_abs_dp": float(np.abs(probabilities - reference).max()),
               "decisions_changed": int((decided != ref_decided).sum()), "images": len(x),
               **figures(labels, probabilities[:, meta.positive_index], decided)}
        for batch in (1, 16):
            walls, cpus = zip(*timings[(name, batch)], strict=True)
            row[f"img_s_b{batch}"] = statistics.median(walls)
            row[f"img_per_cpu_s_b{batch}"] = statistics.median(cpus)
        rows.append(row)
    header = (f"{'runtime':<13}{'b1 img/s':>9}{'b16 img/s':>10}{'b1 /cpu-s':>10}{'b16 /cpu-s':>11}{'max|dp|':>9}"
              f"{'flips':>6}{'sens':>7}{'spec':>7}{'AUC':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['runtime']:<13}{r['img_s_b1']:>9.0f}{r['img_s_b16']:>10.0f}{r['img_per_cpu_s_b1']:>10.0f}"
              f"{r['img_per_cpu_s_b16']:>11.0f}{r['max_abs_dp']:>9.1e}{r['decisions_changed']:>6}"
              f"{r['sensitivity']:>7.3f}{r['specificity']:>7.3f}{r['roc_auc']:>7.4f}")
    print(f"\n{len(x)} test images, model {meta.name} v{meta.version} (sha256 {artifact.sha256[:12]}), load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.out:
        args.out.write_text(json.dumps({"model": {"name": meta.name, "version": meta.version,
                                                  "sha256": artifact.sha256}, "rows": rows,
                                        "loadavg": os.getloadavg()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
