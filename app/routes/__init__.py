"""All routers, gathered in one place."""

from fastapi import APIRouter

from app.routes import health, models, predict, prometheus

router = APIRouter()
for module in (predict, health, models, prometheus):
    router.include_router(module.router)
