"""The naive baseline for the load benchmark: one FastAPI endpoint that decodes, preprocesses and calls Keras'
``model.predict`` on every request, the way a first prototype serves a model (no batching, no compiled
function: ``predict`` builds its data pipeline on every call). Same decoder and preprocessing as the service.
Run: ``python benchmarks/naive_server.py --port 8004``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn
from fastapi import FastAPI, File, UploadFile

from model_store.artifact import load_artifact
from model_store.imaging import decode
from model_store.preprocessing import preprocess
from model_store.registry import ModelRegistry

MAX_PIXELS = 50_000_000


def build(store: str, name: str, version: str | None) -> FastAPI:
    artifact = load_artifact(ModelRegistry(store).resolve(name, version)[1])
    model, spec, classes = artifact.model, artifact.metadata.preprocessing, artifact.metadata.class_names
    app = FastAPI(title="naive")

    @app.post("/predict")
    def predict(file: Annotated[UploadFile, File()]) -> dict[str, object]:  # sync: FastAPI's thread pool
        x = preprocess(decode(file.file.read(), min_size=2 * spec.input_size, max_pixels=MAX_PIXELS), spec)
        probabilities = model.predict(x[None], verbose=0)[0]
        return {"probabilities": {c: float(p) for c, p in zip(classes, probabilities, strict=True)}}

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--store", default="model_store")
    parser.add_argument("--name", default="pneumonia")
    parser.add_argument("--version")
    args = parser.parse_args()
    uvicorn.run(build(args.store, args.name, args.version), host="127.0.0.1", port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
