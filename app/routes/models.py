"""GET /models: the active model's metadata, metrics and the versions in the store."""

from __future__ import annotations

from fastapi import APIRouter

from app.dependencies import ManagerDep
from app.schemas import ErrorResponse, ModelsResponse

router = APIRouter(tags=["models"])


@router.get("/models", response_model=ModelsResponse, responses={503: {"model": ErrorResponse}})
async def models(manager: ManagerDep) -> dict[str, object]:
    active = manager.current
    meta = active.metadata
    return {
        "name": meta.name, "active_version": str(active.version),
        "versions": manager.registry.versions(meta.name), "sha256": active.artifact.sha256,
        "class_names": meta.class_names, "decision_threshold": meta.decision_threshold,
        "preprocessing": meta.preprocessing.to_dict(), "metrics": meta.metrics, "dataset": meta.dataset,
        "created_at": meta.created_at, "code_version": meta.code_version,
        "max_batch_size": active.batcher.max_batch_size, "device": "gpu" if manager.gpu else "cpu",
        "runtime": active.runtime.describe() if active.runtime is not None else {"name": active.runtime_name},
        "gate": manager.gate.describe() if manager.gate is not None else {"mode": "not loaded"},
    }
