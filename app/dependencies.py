"""``Annotated`` dependency aliases: routes receive the objects they need, never reach for globals.

They are ``async def`` on purpose: plain ``def`` dependencies each cost a thread-pool hop per request (the load
benchmark measured about 5 % of throughput).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from app.dataplane import DataPlane
from app.metrics import Metrics
from app.model_manager import ModelManager
from app.settings import Settings


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _dataplane(request: Request) -> DataPlane:
    return request.app.state.dataplane


async def _manager(request: Request) -> ModelManager:
    return request.app.state.manager


async def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def _request_id(request: Request) -> str:
    return request.state.request_id


@dataclass(frozen=True)
class PredictContext:
    """What a prediction route needs, as one dependency: FastAPI resolves each dependency of a request in turn
    (parameters, cache keys, scopes), and on /predict three separate ones cost ~3 % of the event loop's work
    per request more (benchmarks/asgi_cost.py: x0.972 over 12 paired rounds)."""

    dataplane: DataPlane
    settings: Settings
    request_id: str


async def _predict_context(request: Request) -> PredictContext:
    state = request.app.state
    return PredictContext(state.dataplane, state.settings, request.state.request_id)


SettingsDep = Annotated[Settings, Depends(_settings)]
DataPlaneDep = Annotated[DataPlane, Depends(_dataplane)]
ManagerDep = Annotated[ModelManager, Depends(_manager)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
RequestIdDep = Annotated[str, Depends(_request_id)]
PredictContextDep = Annotated[PredictContext, Depends(_predict_context)]
