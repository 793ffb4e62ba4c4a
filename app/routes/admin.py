"""POST /admin/reload: load another model version beside the active one, then switch with no downtime."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from pydantic import BaseModel, Field

from app.dependencies import ManagerDep
from app.errors import InvalidInputError, ModelNotFound, OperatingPointUnavailableError, ServiceError
from app.schemas import ErrorResponse, ModelRef
from model_store.artifact import ArtifactError
from model_store.registry import ModelNotFoundError

log = logging.getLogger("cxr.admin")
router = APIRouter(prefix="/admin", tags=["admin"])


class ReloadRequest(BaseModel):
    version: int | None = Field(None, ge=1, description="version to activate; default: the latest in the store")


class ReloadResponse(BaseModel):
    previous: ModelRef
    active: ModelRef


class ReloadFailedError(ServiceError):
    code, status = "reload_failed", 500


@router.post("/reload", response_model=ReloadResponse,
             responses={status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 422, 500, 503)})
async def reload(manager: ManagerDep, body: ReloadRequest | None = None) -> dict[str, object]:
    previous = manager.current.describe()
    version = body.version if body else None
    try:
        active = await asyncio.to_thread(manager.reload, version)
    except ModelNotFoundError as exc:  # message without the store's path
        available = manager.registry.versions(previous["name"])
        raise ModelNotFound(f"model {previous['name']!r} has no version {version} (available: {available}); "
                            f"version {previous['version']} keeps serving") from exc
    except OperatingPointUnavailableError as exc:  # CXR_OPERATING_POINT names a point this version lacks
        raise OperatingPointUnavailableError(f"refused: {exc.message}; version {previous['version']} keeps serving",
                                             details=exc.details) from exc
    except ArtifactError as exc:
        reason = str(exc).replace(str(manager.registry.root), "<store>")  # no server paths to clients
        raise InvalidInputError(f"refused: {reason}; version {previous['version']} keeps serving") from exc
    except Exception as exc:
        log.error("reload to %s failed; %s v%s keeps serving", version or "latest", previous["name"],
                  previous["version"], exc_info=exc)
        raise ReloadFailedError(f"reload failed ({type(exc).__name__}); version {previous['version']} "
                                "keeps serving") from exc
    log.info("reloaded: %s v%s -> v%s", previous["name"], previous["version"], active.version)
    return {"previous": previous, "active": active.describe()}
