"""Shared by tests/deploy: YAML loading, a small kustomize renderer, compose interpolation, Dockerfile parsing.

Everything here runs offline and in milliseconds. The renderer implements only the kustomize features that
deploy/kubernetes uses and refuses any other, so a new feature cannot be silently ignored; where `kubectl` is on
PATH, test_kubernetes.py also compares its output with `kubectl kustomize`.
"""

from __future__ import annotations

import copy
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"
KUBERNETES = REPO / "deploy" / "kubernetes"
KSERVE_FILE = REPO / "deploy" / "kserve" / "inferenceservice.yaml"
KUSTOMIZATIONS = {
    "base": KUBERNETES / "base",
    "cpu": KUBERNETES / "overlays" / "cpu",
    "gpu": KUBERNETES / "overlays" / "gpu",
}
VENV_BIN = Path(sys.executable).parent


def load_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def app_present() -> bool:
    return any((REPO / "app").glob("*.py"))


def require_app() -> None:
    if not app_present():
        pytest.skip("app/ has no Python modules yet: the server this checks is not written")


# --- kustomize (the subset deploy/kubernetes uses) -------------------------------------------------------------

_KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "images", "patches"}
# Strategic merge: lists merged by key (from the Kubernetes API's patchMergeKey); every other list is replaced.
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}


def _strategic_merge(base: Any, patch: Any, field: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if key.startswith("$"):
                raise ValueError(f"patch directive {key} is not supported by this renderer")
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _strategic_merge(merged[key], value, key)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in _MERGE_KEYS:
        key = _MERGE_KEYS[field]
        merged_list = [copy.deepcopy(item) for item in base]
        for item in patch:
            for i, existing in enumerate(merged_list):
                if existing.get(key) == item.get(key):
                    merged_list[i] = _strategic_merge(existing, item)
                    break
            else:
                merged_list.append(copy.deepcopy(item))
        return merged_list
    return copy.deepcopy(patch)


def _set_images(resource: dict[str, Any], images: list[dict[str, str]]) -> None:
    pod = resource.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name = re.split(r"[@]|:(?=[^/]*$)", container["image"])[0]
        for image in images:
            if image["name"] == name:
                container["image"] = image.get("newName", name) + (f":{image['newTag']}" if "newTag" in image else "")


def render_kustomization(folder: Path) -> list[dict[str, Any]]:
    """What ``kubectl kustomize folder`` prints, for resources, strategic-merge patches and images."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text(encoding="utf-8"))
    unknown = set(kustomization) - _KUSTOMIZATION_KEYS
    if unknown:
        raise ValueError(f"{folder}: kustomization fields {sorted(unknown)} are not supported by this renderer")
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (folder / entry).resolve()
        resources += render_kustomization(path) if path.is_dir() else load_documents(path)
    for patch_entry in kustomization.get("patches", []):
        if set(patch_entry) != {"path"}:
            raise ValueError(f"{folder}: only `patches: - path: <strategic merge patch>` is supported")
        patch = yaml.safe_load((folder / patch_entry["path"]).read_text(encoding="utf-8"))
        ident = (patch["apiVersion"], patch["kind"], patch["metadata"]["name"])
        matches = [i for i, r in enumerate(resources) if (r["apiVersion"], r["kind"], r["metadata"]["name"]) == ident]
        if len(matches) != 1:
            raise ValueError(f"{folder}: patch {patch_entry['path']} matches {len(matches)} resources")
        resources[matches[0]] = _strategic_merge(resources[matches[0]], patch)
    for resource in resources:
        _set_images(resource, kustomization.get("images", []))
    return resources


def by_kind(resources: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The one resource of each kind (each render holds exactly one of each)."""
    kinds: dict[str, dict[str, Any]] = {}
    for resource in resources:
        assert resource["kind"] not in kinds, f"two {resource['kind']} resources"
        kinds[resource["kind"]] = resource
    return kinds


# --- compose ----------------------------------------------------------------------------------------------------

_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        escaped, name, operator, argument, bare = match.groups()
        if escaped:
            return "$"
        name = name or bare
        current = env.get(name)
        if (operator in (":-", ":?") and not current) or (operator in ("-", "?") and current is None):
            if operator.endswith("?"):
                raise ValueError(f"required variable {name} is missing: {argument}")
            return argument
        return current or ""

    return _VARIABLE.sub(substitute, value)


def compose_file(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as `docker compose config` sees it: YAML anchors and merge keys resolved, variables
    substituted (from ``env``, not from this process, so the result does not depend on who runs the tests)."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return interpolate(raw, env or {})


# --- Dockerfile -------------------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_stages(path: Path = DOCKERFILE) -> list[dict[str, Any]]:
    """Stages in order: {"from": image, "name": alias or None, "instructions": [...]} ."""
    stages: list[dict[str, Any]] = []
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "FROM":
            parts = arguments.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append({"from": parts[0], "name": name, "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, arguments))
    return stages


def env_instruction(arguments: str) -> dict[str, str]:
    """The KEY=value pairs of one ENV instruction (values here have no spaces or quotes)."""
    return dict(pair.split("=", 1) for pair in arguments.split())


def image_env(flavor: str) -> dict[str, str]:
    """The environment the image sets for ``flavor``: the runtime stage's ENV plus the flavour stage's."""
    stages = {stage["name"]: stage for stage in dockerfile_stages()}
    env: dict[str, str] = {}
    for name in ("runtime", f"runtime-{flavor}"):
        for keyword, arguments in stages[name]["instructions"]:
            if keyword == "ENV":
                env.update(env_instruction(arguments))
    return env


def which(name: str) -> str | None:
    """A tool from this virtual environment first (where the dev extra installs it), then from PATH."""
    candidate = VENV_BIN / name
    if candidate.exists():
        return str(candidate)
    from shutil import which as path_which

    return path_which(name, path=os.environ.get("PATH"))
