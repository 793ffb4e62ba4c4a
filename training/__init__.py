"""Offline training of the pneumonia ConvNet: data loading, model, fit, evaluation, export."""

from __future__ import annotations

import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


@cache
def code_version() -> str:
    """Package version plus the git commit when run from a checkout (recorded in every artifact)."""
    try:
        base = version("cxr-serve")
    except PackageNotFoundError:
        base = "0+unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return f"{base}+g{commit}"
    except (OSError, subprocess.SubprocessError):
        return base
