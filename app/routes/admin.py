"""POST /admin/reload: load another model version beside the active one, then switch with no downtime. With
several worker processes the one that receives it reloads first (so a refusal, e.g. 409, changes nothing
anywhere), then every other worker follows (app.worker_sync); the answer lists them all."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.dependencies import ManagerDep
from app.errors import InvalidInputError, ModelNotFound, OperatingPointUnavailableError, ServiceError
from app.schemas import ErrorResponse, ModelRef, WorkerState
from app.security import access_of
from app.worker_sync import ReloadIncompleteError
from model_store.artifact import ArtifactError
from model_store.registry import ModelNotFoundError

log = logging.getLogger("cxr.admin")
router = APIRouter(prefix="/admin", tags=["admin"])


class ReloadRequest(BaseModel):
    version: int | None = Field(None, ge=1, description="version to activate; default: the latest in the store")


class ReloadResponse(BaseModel):
    previous: ModelRef
    active: ModelRef
    workers: list[WorkerState] | None = Field(None, description="with several worker processes: each one, all "
                                              "serving the active version")


class ReloadFailedError(ServiceError):
    code, status = "reload_failed", 500


@router.post("/reload", response_model=ReloadResponse,
             responses={status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 422, 500, 503)})
async def reload(request: Request, manager: ManagerDep, body: ReloadRequest | None = None) -> dict[str, object]:
    access_of(request).reload()  # a reload also re-reads the API key file
    previous = manager.current.describe()
    version = body.version if body else None
    sync = request.app.state.worker_sync
    workers = None
    try:
        if sync is None:
            active = await asyncio.to_thread(manager.reload, version)
        else:
            active, workers = await asyncio.to_thread(sync.reload, version)
    except ReloadIncompleteError as exc:
        log.error("reload to %s incomplete: %s", version or "latest", exc.message)
        raise
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
    log.info("reloaded: %s v%s -> v%s (by %s)", previous["name"], previous["version"], active.version,
             request.state.caller.name)
    answer: dict[str, object] = {"previous": previous, "active": active.describe()}
    if workers is not None:
        answer["workers"] = workers
    return answer
