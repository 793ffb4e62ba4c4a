"""What the image runs, run here without Docker: the CMD's console script, the settings every deployment file
passes to it, and one start -> ready -> SIGTERM -> exit 0 cycle with the image's environment."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from app_harness import free_port as _free_port
from deploy_helpers import (
    KSERVE_FILE,
    REPO,
    VENV_BIN,
    by_kind,
    compose_file,
    dockerfile_stages,
    image_env,
    load_documents,
    pyproject,
    render_kustomization,
    require_app,
)
from deploy_helpers import KUSTOMIZATIONS as K8S

HEALTHCHECK_SCRIPT = REPO / "deploy" / "docker" / "healthcheck.py"
IMAGE_STORE = "/models"
LONG_KEY = "k" * 32  # the server refuses keys shorter than 16 characters


def _image_command() -> list[str]:
    runtime = next(s for s in dockerfile_stages() if s["name"] == "runtime")
    return json.loads([a for k, a in runtime["instructions"] if k == "CMD"][-1])


def _entry_point(script: str) -> str:
    scripts = pyproject()["project"]["scripts"]
    assert script in scripts, f"{script} is not a console script in pyproject.toml [project.scripts]"
    return scripts[script]


def _command(script: str) -> list[str]:
    """The installed console script, or (in a venv installed before it was declared) its entry point."""
    installed = VENV_BIN / script
    if installed.exists():
        return [str(installed)]
    module, function = _entry_point(script).split(":")
    return [sys.executable, "-c", f"import sys; sys.argv[0] = {script!r}; from {module} import {function} as f; "
            "sys.exit(f())"]


def _assert_defined(entry_point: str) -> None:
    """module:function names a top-level function in the module's source (read, not imported: no TensorFlow)."""
    module, function = entry_point.split(":")
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin, f"{module} is not importable"
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, f"{entry_point} is missing"


def test_image_command_is_a_console_script():
    require_app()
    command = _image_command()
    assert command == ["cxr-serve"]
    _assert_defined(_entry_point(command[0]))


def test_compose_train_command_is_a_console_script_with_those_options():
    entrypoint = compose_file()["services"]["train"]["entrypoint"]
    _assert_defined(_entry_point(entrypoint[0]))
    # Every option the service passes is one the CLI declares (read from its source: importing it loads TF).
    module = _entry_point(entrypoint[0]).split(":")[0]
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text(encoding="utf-8"))
    declared = {node.args[0].value for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
                and node.args and isinstance(node.args[0], ast.Constant)}
    passed = {arg for arg in entrypoint[1:] if arg.startswith("--")}
    assert passed <= declared, f"cxr-train does not know {sorted(passed - declared)}"


def test_cxr_serve_help_runs():
    require_app()
    result = subprocess.run([*_command("cxr-serve"), "--help"], capture_output=True, text=True, timeout=120,
                            check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "usage: cxr-serve" in result.stdout


# --- settings ---------------------------------------------------------------------------------------------------


def _deployment_envs() -> dict[str, dict[str, str]]:
    """Every set of CXR_ values a deployment file hands the server, over the image's own ENV."""
    compose = compose_file({"CXR_API_KEYS": LONG_KEY})
    envs = {
        "image-cpu": image_env("cpu"),
        "image-gpu": image_env("gpu"),
        "compose-api": image_env("cpu") | compose["services"]["api"]["environment"],
        "compose-api-gpu": image_env("gpu") | compose["services"]["api-gpu"]["environment"],
    }
    for name, folder in K8S.items():
        envs[f"kubernetes-{name}"] = image_env(name if name == "gpu" else "cpu") | by_kind(
            render_kustomization(folder))["ConfigMap"]["data"]
    (isvc,) = load_documents(KSERVE_FILE)
    container = isvc["spec"]["predictor"]["containers"][0]
    envs["kserve"] = image_env("cpu") | {e["name"]: e["value"] for e in container["env"]}
    return {name: {k: str(v) for k, v in env.items() if k.startswith("CXR_")} for name, env in envs.items()}


def _settings(env: dict[str, str], store: Path, monkeypatch: pytest.MonkeyPatch):
    from app.settings import Settings

    for key in [k for k in os.environ if k.startswith("CXR_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(store) if key == "CXR_MODEL_STORE" and value == IMAGE_STORE else value)
    return Settings()


@pytest.fixture
def image_store(tmp_path: Path) -> Path:
    """A folder laid out as the image's /models: every model folder the Dockerfile bakes in."""
    store = tmp_path / "models"
    runtime = next(stage for stage in dockerfile_stages() if stage["name"] == "runtime")
    for keyword, arguments in runtime["instructions"]:
        source, target = arguments.split()[-2:] if keyword == "COPY" else ("", "")
        if source.startswith("model_store/") and target.startswith(f"{IMAGE_STORE}/"):
            shutil.copytree(REPO / source, store / target.removeprefix(f"{IMAGE_STORE}/"))
    assert (store / "pneumonia").is_dir()
    return store


@pytest.mark.parametrize("source", list(_deployment_envs()))
def test_server_accepts_the_settings(source, image_store, monkeypatch):
    require_app()
    env = _deployment_envs()[source]
    assert env["CXR_MODEL_STORE"] == IMAGE_STORE
    settings = _settings(env, image_store, monkeypatch)
    assert settings.host == "0.0.0.0", "reachable from outside the container"
    assert settings.port == 8000
    # auto: a worker per CPU of the container's quota (1 with a GPU); tests/app/test_workers.py covers how
    assert settings.workers == "auto", "every core used: one process is GIL-bound"


def test_shutdown_fits_in_every_grace_period(image_store, monkeypatch):
    require_app()
    compose = compose_file()
    for name in ("api", "api-gpu"):
        env = image_env("cpu") | compose["services"][name]["environment"]
        drain = _settings({k: str(v) for k, v in env.items() if k.startswith("CXR_")}, image_store,
                          monkeypatch).graceful_timeout
        grace = int(compose["services"][name]["stop_grace_period"].rstrip("s"))
        assert grace >= drain + 5, f"compose {name}: stop_grace_period {grace}s, drain up to {drain}s"
    for name, folder in K8S.items():
        env = image_env("cpu") | by_kind(render_kustomization(folder))["ConfigMap"]["data"]
        drain = _settings({k: v for k, v in env.items() if k.startswith("CXR_")}, image_store,
                          monkeypatch).graceful_timeout
        pod = by_kind(render_kustomization(folder))["Deployment"]["spec"]["template"]["spec"]
        pre_stop = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
        grace = pod["terminationGracePeriodSeconds"]
        assert grace >= pre_stop + drain + 5, f"kubernetes {name}: grace {grace}s < {pre_stop}s + {drain}s drain"


# --- the container's life, without the container ----------------------------------------------------------------



def _healthy(port: int) -> bool:
    env = {"CXR_PORT": str(port), "CXR_HEALTHCHECK_TIMEOUT": "2"}
    return subprocess.run([sys.executable, str(HEALTHCHECK_SCRIPT)], env=env, capture_output=True, timeout=30,
                          check=False).returncode == 0


def _probe_paths() -> set[str]:
    """Every path an orchestrator polls without credentials: probes and metrics scraping, in all manifests."""
    paths = set()
    for folder in K8S.values():
        template = by_kind(render_kustomization(folder))["Deployment"]["spec"]["template"]
        container = template["spec"]["containers"][0]
        paths |= {container[p]["httpGet"]["path"] for p in ("startupProbe", "livenessProbe", "readinessProbe")}
        paths.add(template["metadata"]["annotations"]["prometheus.io/path"])
    (isvc,) = load_documents(KSERVE_FILE)
    container = isvc["spec"]["predictor"]["containers"][0]
    paths |= {container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")}
    paths.add(isvc["metadata"]["annotations"]["prometheus.kserve.io/path"])
    return paths


def _status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_serves_like_the_image_and_stops_cleanly_on_sigterm(image_store, tmp_path):
    require_app()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env |= {k: v for k, v in image_env("cpu").items() if k != "PATH"}
    # Loopback instead of the image's 0.0.0.0: a test listens on this machine only. API keys on: probes and
    # metrics scraping must not need one.
    env |= {"CXR_HOST": "127.0.0.1", "CXR_PORT": str(port), "CXR_MODEL_STORE": str(image_store),
            "KERAS_HOME": str(tmp_path / "keras"), "MPLCONFIGDIR": str(tmp_path / "mpl"),
            "CXR_GRACEFUL_TIMEOUT": "10", "CXR_API_KEYS": LONG_KEY,
            # The image runs CXR_WORKERS=auto; one worker here (tests/app/test_multiworker.py runs several).
            "CXR_WORKERS": "1",
            # The image's audit volume (CXR_AUDIT_PATH=/var/lib/cxr-serve/...), here a folder of the test.
            "CXR_AUDIT_PATH": str(tmp_path / "audit" / "audit.db"),
            # The image's user has no home (useradd --home-dir /nonexistent): nothing may need one.
            "HOME": "/nonexistent"}
    log = (tmp_path / "server.log").open("w+")
    process = subprocess.Popen(_command("cxr-serve"), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while not _healthy(port):
            assert process.poll() is None, f"cxr-serve exited with {process.returncode}"
            assert time.monotonic() < deadline, "not ready within 180 s"
            time.sleep(0.5)
        statuses = {path: _status(port, path) for path in sorted(_probe_paths())}
        assert statuses == dict.fromkeys(statuses, 200), statuses
        assert _status(port, "/v2/models/pneumonia/ready") == 401, "API keys were not in force"
        process.send_signal(signal.SIGTERM)
        # The contract: drain, then exit 0 (plain uvicorn would re-raise SIGTERM and end with 143; app.cli
        # swallows it, so Docker and Kubernetes see a clean stop).
        assert process.wait(timeout=30) == 0
        assert not _healthy(port)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log.seek(0)
        output = log.read()
        log.close()
        print(output[-4000:])
    assert "Application shutdown complete" in output, "the lifespan shutdown (batcher drain) did not finish"
