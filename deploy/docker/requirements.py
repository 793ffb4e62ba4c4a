"""Print the runtime requirements of one TensorFlow flavour, one per line, read from pyproject.toml.

The Dockerfile installs these before the source is copied (so the dependency layer is cached across code
changes), then installs the project itself with ``--no-deps``. The GPU flavour drops the CPU-only wheel: on
x86_64 ``pip install ".[gpu]"`` would install ``tensorflow-cpu`` and ``tensorflow`` side by side, two
distributions writing the same ``tensorflow`` package.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

FLAVORS = ("cpu", "gpu")
_TENSORFLOW = {"tensorflow", "tensorflow-cpu"}


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def requirements(pyproject: Path, flavor: str) -> list[str]:
    """The requirement lines to install for ``flavor`` ("cpu" or "gpu")."""
    if flavor not in FLAVORS:
        raise ValueError(f"TF_FLAVOR must be one of {', '.join(FLAVORS)}, got {flavor!r}")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    dependencies = list(project["dependencies"])
    if flavor == "cpu":
        return dependencies
    return [d for d in dependencies if _name(d) not in _TENSORFLOW] + list(project["optional-dependencies"]["gpu"])


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(f"usage: {Path(__file__).name} cpu|gpu [pyproject.toml]", file=sys.stderr)
        return 2
    pyproject = Path(argv[2] if len(argv) > 2 else "pyproject.toml")
    try:
        lines = requirements(pyproject, argv[1])
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
