"""Every module the service imports at module level comes with its runtime dependencies (what the image installs:
pyproject's [project] dependencies and theirs), not only with the dev extra the tests run under. The image build
found httpx missing once; this finds such a gap in seconds."""

from __future__ import annotations

import ast
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "model_store", "training")


def _module_level_imports(path: Path) -> set[str]:
    """Top-level names imported at module level, outside try blocks (an import guarded by ``except ImportError``
    is optional by design)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _runtime_closure(root: str) -> set[str]:
    """The distributions installed by ``pip install <root>`` without extras, with the extras each one names."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # a marker excluded it on this platform, or an optional native part
        seen.add(key)
        for line in requires:
            req = Requirement(line)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            wanted = req.marker is None or any(req.marker.evaluate(env) for env in environments)
            if wanted and canonicalize_name(req.name) not in seen:
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_module_level_imports_are_runtime_dependencies() -> None:
    runtime = _runtime_closure("cxr-serve")
    owners = metadata.packages_distributions()
    missing: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for name in _module_level_imports(path):
                if name in sys.stdlib_module_names or name in PACKAGES:
                    continue
                dists = {canonicalize_name(d) for d in owners.get(name, [])}
                assert dists, f"{path.relative_to(REPO)} imports {name}, which no installed distribution provides"
                if not dists & runtime:
                    missing.setdefault(name, set()).add(str(path.relative_to(REPO)))
    assert not missing, f"imported by the service but not a runtime dependency (pyproject [project]): {missing}"
