"""All routers, gathered in one place. Prediction, model, admin, feedback and monitoring routes need an API key
when keys are configured; health, metrics and the v2 health/metadata routes stay open for orchestration."""

from fastapi import APIRouter, Depends

from app.routes import admin, dicomweb, feedback, health, models, monitoring, predict, prometheus, ui, v2
from app.security import require_api_key

router = APIRouter()
protected = [Depends(require_api_key)]
router.include_router(predict.router, dependencies=protected)
router.include_router(models.router, dependencies=protected)
router.include_router(admin.router, dependencies=protected)
router.include_router(v2.router, dependencies=protected)
router.include_router(feedback.router, dependencies=protected)
router.include_router(monitoring.router, dependencies=protected)
router.include_router(dicomweb.router, dependencies=protected)  # STOW-RS in: the predict scope
router.include_router(v2.open_router)
router.include_router(health.router)
router.include_router(prometheus.router)
router.include_router(ui.router)  # the review page: static, holds no data
router.include_router(ui.protected_router, dependencies=protected)
