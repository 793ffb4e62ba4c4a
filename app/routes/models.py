"""GET /models: the active model's metadata, metrics and the versions in the store (each with its operating
points, calibration and provenance, so an operator sees what a reload would serve)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter

from app.dependencies import ManagerDep, SettingsDep
from app.operating_points import describe
from app.schemas import ErrorResponse, ModelsResponse
from model_store.artifact import ArtifactError, read_metadata
from model_store.registry import ModelNotFoundError, ModelRegistry

router = APIRouter(tags=["models"])


def version_details(registry: ModelRegistry, name: str, configured: str | None) -> list[dict[str, object]]:
    """Each stored version's points, read from its metadata alone (no Keras: a file read per version)."""
    details: list[dict[str, object]] = []
    for version in registry.versions(name):
        try:
            meta = read_metadata(registry.resolve(name, version)[1])
        except (ArtifactError, ModelNotFoundError, OSError) as exc:
            details.append({"version": version, "operating_points": None, "default_operating_point": None,
                            "error": type(exc).__name__})  # the message may hold server paths
            continue
        details.append({"version": version, **describe(meta, configured), "provenance": meta.provenance})
    return details


@router.get("/models", response_model=ModelsResponse, responses={503: {"model": ErrorResponse}})
async def models(manager: ManagerDep, settings: SettingsDep) -> dict[str, object]:
    active = manager.current
    meta = active.metadata
    versions = await asyncio.to_thread(version_details, manager.registry, meta.name, settings.operating_point)
    return {
        "name": meta.name, "active_version": str(active.version),
        "versions": manager.registry.versions(meta.name), "sha256": active.artifact.sha256,
        "class_names": meta.class_names, "decision_threshold": meta.decision_threshold,
        "preprocessing": meta.preprocessing.to_dict(), "metrics": meta.metrics, "dataset": meta.dataset,
        "created_at": meta.created_at, "code_version": meta.code_version,
        "max_batch_size": active.batcher.max_batch_size, "device": "gpu" if manager.gpu else "cpu",
        "runtime": active.runtime.describe() if active.runtime is not None else {"name": active.runtime_name},
        "gate": manager.gate.describe() if manager.gate is not None else {"mode": "not loaded"},
        **describe(meta, settings.operating_point), "provenance": meta.provenance,
        "version_details": versions,
    }
