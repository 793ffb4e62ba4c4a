"""model_store's modules import each other one way: no cycle, lazy imports inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "model_store"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / PACKAGE


def module_name(path: Path, package_dir: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path: Path, package_dir: Path, modules: set[str]) -> set[str]:
    """The package's own modules that ``path`` imports anywhere in its body (top level or inside functions)."""
    this = module_name(path, package_dir)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from pkg import sub" imports the submodule sub where there is one, else a name of pkg itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for name in targets:
            target = name
            while target and target not in modules:  # "model_store.imaging.decode" -> "model_store.imaging"
                target = target.rpartition(".")[0]
            if target and target != this:
                found.add(target)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    files = sorted(package_dir.rglob("*.py"))
    modules = {module_name(p, package_dir) for p in files}
    return {module_name(p, package_dir): internal_imports(p, package_dir, modules) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_model_store_imports_form_no_cycle():
    graph = import_graph(PACKAGE_DIR)
    assert "model_store.imaging" in graph and "model_store.dicom" in graph
    assert find_cycle(graph) is None, f"import cycle in model_store: {' -> '.join(find_cycle(graph))}"


def test_the_decoders_depend_one_way_on_their_errors():
    graph = import_graph(PACKAGE_DIR)
    assert "model_store.dicom" in graph["model_store.imaging"]
    assert "model_store.errors" in graph["model_store.dicom"]
    assert graph["model_store.errors"] == set()


def test_the_old_import_names_still_work():
    from model_store import errors, imaging

    for name in ("DecodeError", "UnsupportedFormatError", "ImageTooLargeError", "check_pixel_count"):
        assert getattr(imaging, name) is getattr(errors, name)


@pytest.mark.parametrize(("sources", "cycle"), [
    ({"a.py": "from pkg import b\n", "b.py": "def f():\n    from pkg.a import x\n"}, ["pkg.a", "pkg.b", "pkg.a"]),
    ({"a.py": "from . import b\n", "b.py": "from .c import y\n", "c.py": "import pkg.a\n"},
     ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]),
    ({"a.py": "from pkg.b import x\n", "b.py": "import os\nfrom pkg import c\n", "c.py": ""}, None),
])
def test_the_checker_sees_top_level_lazy_and_relative_imports(tmp_path, sources, cycle):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, text in sources.items():
        (package / name).write_text(text)
    assert find_cycle(import_graph(package)) == cycle
