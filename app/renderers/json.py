"""Prediction -> the JSON body of /predict (the default representation; FastAPI serialises it through
``PredictionResponse``, so the OpenAPI document describes it)."""

from __future__ import annotations

from app.dataplane import Prediction

MEDIA_TYPE = "application/json"


def render(prediction: Prediction, request_id: str) -> dict[str, object]:
    return prediction.as_dict(request_id)
