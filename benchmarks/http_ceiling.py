"""The HTTP ceiling for the load benchmark: a FastAPI app that only reads the multipart upload and answers a
constant. Same stack as the service (FastAPI + python-multipart + uvicorn with uvloop/httptools, access log
off), so ``service / ceiling`` is the share of the HTTP stack's capacity left after decode, preprocess and the
model. Run: ``python -m uvicorn benchmarks.http_ceiling:app --port 8002 --no-access-log``."""

from typing import Annotated

from fastapi import FastAPI, File, UploadFile

app = FastAPI(title="http-ceiling")

CONSTANT = {"prediction": "NORMAL", "probabilities": {"NORMAL": 0.9, "PNEUMONIA": 0.1}}


@app.post("/predict")
async def predict(file: Annotated[UploadFile, File()]) -> dict[str, object]:
    data = await file.read()
    return {**CONSTANT, "bytes": len(data)}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
