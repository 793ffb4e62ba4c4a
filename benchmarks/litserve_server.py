"""The same model served by LitServe (for the load benchmark's comparison). Not part of the service.

Fairness: the same artifact, the same decoder (``model_store.imaging.decode`` with the same reduced JPEG
decoding), the same ``preprocess``, the model compiled and padded to power-of-two buckets as the service does
(``model_runner.py``) and warmed at every bucket, the same max batch size and batch timeout, one inference
worker and one API server (LitServe's default for one worker), uvicorn underneath as in ours. What differs is
only the serving machinery: LitServe's HTTP layer, its queue between processes and its batching loop (which
decodes in the worker).

Run: ``python benchmarks/litserve_server.py --port 8001 --store model_store --max-batch-size 16 --delay-ms 5``.
Every batch is counted in the file given by ``--stats`` ("batches images"), for the mean batch size.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import litserve as ls

from benchmarks.model_runner import load_runnable
from model_store.imaging import decode
from model_store.preprocessing import preprocess

MAX_PIXELS = 50_000_000  # the service's default CXR_MAX_PIXELS


class CxrLitAPI(ls.LitAPI):
    def __init__(self, store: str, name: str, version: str | None, stats: str | None, runtime: str = "keras",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store, self.name, self.version, self.stats_path = store, name, version, stats
        self.runtime = runtime
        self.batches = self.images = 0

    def setup(self, device: str) -> None:
        self.model = load_runnable(self.store, self.name, self.version, self.max_batch_size, self.runtime)
        self.spec = self.model.spec

    def decode_request(self, request):
        # LitServe picks how to parse the body from this annotation; none means "the Request's form/JSON"
        data = request["file"].file.read()
        image = decode(data, min_size=2 * self.spec.input_size, max_pixels=MAX_PIXELS)
        return preprocess(image, self.spec)

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = self.model.predict(x)
        self.batches += 1
        self.images += len(x)
        if self.stats_path:  # replaced atomically: the benchmark reads it at any moment
            partial = Path(f"{self.stats_path}.tmp")
            partial.write_text(f"{self.batches} {self.images}\n")
            partial.replace(self.stats_path)
        return out

    def unbatch(self, output: np.ndarray) -> list[np.ndarray]:
        return list(output)

    def encode_response(self, output: np.ndarray) -> dict[str, Any]:
        return {"probabilities": {name: float(p) for name, p in zip(self.model.class_names, output, strict=True)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", default="model_store")
    parser.add_argument("--name", default="pneumonia")
    parser.add_argument("--version")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--fast-queue", action="store_true", help="LitServe's ZeroMQ queue instead of mp.Queue")
    parser.add_argument("--stats")
    parser.add_argument("--runtime", default="keras", help="keras (float32, default) or a cxr-serve runtime name")
    args = parser.parse_args()
    api = CxrLitAPI(args.store, args.name, args.version, args.stats, args.runtime, max_batch_size=args.max_batch_size,
                    batch_timeout=args.delay_ms / 1000)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=60,
                          fast_queue=args.fast_queue)
    server.run(host="127.0.0.1", port=args.port, log_level="warning", generate_client_file=False,
               num_api_servers=1, access_log=False)


if __name__ == "__main__":
    main()
