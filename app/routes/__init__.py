"""All routers, gathered in one place, each with the scope it needs (app.security): predict (prediction, v2
inference, the review page's preview), feedback (POST /feedback), monitor (/monitoring, /models) and admin
(reload). Health, the v2 health/metadata routes and the review page's static files stay open for
orchestration; /metrics too unless CXR_PROTECT_METRICS=true."""

from fastapi import APIRouter, Depends

from app.routes import admin, dicomweb, feedback, health, models, monitoring, predict, prometheus, ui, v2
from app.security import require_admin, require_feedback, require_metrics_access, require_monitor, require_predict

router = APIRouter()
router.include_router(predict.router, dependencies=[Depends(require_predict)])
router.include_router(models.router, dependencies=[Depends(require_monitor)])
router.include_router(admin.router, dependencies=[Depends(require_admin)])
router.include_router(v2.router, dependencies=[Depends(require_predict)])
router.include_router(feedback.router, dependencies=[Depends(require_feedback)])
router.include_router(monitoring.router, dependencies=[Depends(require_monitor)])
router.include_router(dicomweb.router, dependencies=[Depends(require_predict)])  # STOW-RS in: the predict scope
router.include_router(v2.open_router)
router.include_router(health.router)
router.include_router(prometheus.router, dependencies=[Depends(require_metrics_access)])
router.include_router(ui.router)  # the review page: static, holds no data
router.include_router(ui.protected_router, dependencies=[Depends(require_predict)])
