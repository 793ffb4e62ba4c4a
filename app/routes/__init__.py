"""All routers, gathered in one place, each with the scope it needs (app.security): predict (prediction, v2
inference, the review page's preview), feedback (POST /feedback), monitor (/monitoring, /models) and admin
(reload). Health, the v2 health/metadata routes and the review page's static files stay open for
orchestration; /metrics too unless CXR_PROTECT_METRICS=true."""

from collections.abc import Sequence

from fastapi import APIRouter, Depends, FastAPI
from fastapi.params import Depends as DependsParam

from app.routes import admin, dicomweb, feedback, health, models, monitoring, predict, prometheus, ui, v2
from app.security import require_admin, require_feedback, require_metrics_access, require_monitor, require_predict

# (router, its dependencies), in matching order
ROUTERS: list[tuple[APIRouter, Sequence[DependsParam]]] = [
    (predict.router, [Depends(require_predict)]),
    (models.router, [Depends(require_monitor)]),
    (admin.router, [Depends(require_admin)]),
    (v2.router, [Depends(require_predict)]),
    (feedback.router, [Depends(require_feedback)]),
    (monitoring.router, [Depends(require_monitor)]),
    (dicomweb.router, [Depends(require_predict)]),  # STOW-RS in: the predict scope
    (v2.open_router, []),
    (health.router, []),
    (prometheus.router, [Depends(require_metrics_access)]),
    (ui.router, []),  # the review page: static, holds no data
    (ui.protected_router, [Depends(require_predict)]),
]


def include_routers(app: FastAPI) -> None:
    """Each router straight into the app: one level of inclusion, not two, because FastAPI walks the whole
    include tree on every request to see whether routes changed (measured: benchmarks/asgi_cost.py)."""
    for router, dependencies in ROUTERS:
        app.include_router(router, dependencies=dependencies)
