"""The review page: static HTML/CSS/JS from app/ui/ (no CDN, no build step), its configuration, and the one
endpoint it needs besides /predict: the upload rendered to PNG as the server decoded it (DICOM included).

The page and its assets are open (they hold no data); the preview decodes uploads, so it needs an API key when
keys are configured, like /predict.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
from functools import cache
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.dataplane import NOTICE
from app.dependencies import DataPlaneDep, ManagerDep, SettingsDep
from app.errors import NotReadyError
from app.explain import preview_png
from app.operating_points import describe
from app.routes.predict import ERRORS, read_upload
from app.settings import Settings
from model_store.imaging import decode

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
ASSETS = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}
PREVIEW_SIDE = 1024  # longer side of the preview PNG: enough for a screen, a fraction of a full film's pixels
# Everything the page loads comes from this service; images are the preview (blob:) and the overlay (data:).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: "
                               "blob:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(tags=["review page"])
protected_router = APIRouter(tags=["review page"])


@cache
def _page() -> str:
    return (UI_DIR / "index.html").read_text(encoding="utf-8").replace("{{NOTICE}}", html.escape(NOTICE))


@cache
def _asset(name: str) -> bytes:
    return (UI_DIR / name).read_bytes()


@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("ui", status_code=307)  # relative: stays under any path prefix of a proxy


@router.get("/ui", include_in_schema=False)
async def page(dataplane: DataPlaneDep, manager: ManagerDep) -> HTMLResponse:
    # someone is about to ask for heatmaps: trace the gradient function now, in a decode thread, not in their wait
    with contextlib.suppress(NotReadyError):  # not loaded yet: the first explanation traces it
        asyncio.get_running_loop().run_in_executor(dataplane.pool, dataplane.explainers.prepare, manager.current)
    return HTMLResponse(_page(), headers=SECURITY_HEADERS)


@router.get("/ui/assets/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:  # a fixed allowlist: no path from the client ever reaches the file system
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(_asset(name), media_type=media_type, headers=SECURITY_HEADERS)


@router.get("/ui/config", summary="What the review page needs to know before an upload")
async def config(settings: SettingsDep, manager: ManagerDep) -> dict[str, object]:
    # the names of the active version's operating points (not their thresholds: this route is open)
    try:
        points = describe(manager.current.metadata, settings.operating_point)
        names, default = sorted(points["operating_points"]), points["default_operating_point"]
    except NotReadyError:
        names, default = [], None
    return {"notice": NOTICE, "api_key_required": bool(settings.api_keys),
            "max_upload_bytes": settings.max_upload_bytes, "operating_points": names,
            "default_operating_point": default}


def render_preview(data: bytes, settings: Settings) -> bytes:
    image = decode(data, min_size=PREVIEW_SIDE, max_pixels=settings.max_pixels)
    return preview_png(image, PREVIEW_SIDE)


@protected_router.post(
    "/ui/preview", response_class=Response, summary="The upload as the server decoded it, as a PNG",
    responses={**ERRORS, 200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                               "description": "8-bit grayscale PNG, the upload's aspect ratio, longer side at most "
                                              f"{PREVIEW_SIDE} px (DICOM after its rescale and photometric handling)"}})
async def preview(dataplane: DataPlaneDep, settings: SettingsDep,
                  file: Annotated[UploadFile, File(description="the image file")]) -> Response:
    data = await read_upload(file, settings)
    loop = asyncio.get_running_loop()
    png = await loop.run_in_executor(dataplane.pool, render_preview, data, settings)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
