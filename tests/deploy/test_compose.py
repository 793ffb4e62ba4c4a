"""docker-compose.yml against the Compose Specification's JSON schema, plus what the schema cannot know."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest
from deploy_helpers import compose_file, image_env, interpolate, pyproject

# The Compose Specification schema as vendored (and kept current) by the check-jsonschema package.
_SCHEMA = json.loads(
    resources.files("check_jsonschema").joinpath("builtin_schemas/vendor/compose-spec.json").read_text("utf-8"))


def _errors(document: dict) -> list[str]:
    validator = jsonschema.validators.validator_for(_SCHEMA)(_SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.mark.parametrize("env", [{}, {"CXR_API_KEYS": "a,b", "CXR_PORT": "9000", "CXR_BIND": "0.0.0.0",
                                      "CXR_DATA_DIR": "/srv/xray", "CXR_TAG": "0.1.0-cpu"}],
                         ids=["defaults", "overridden"])
def test_compose_file_matches_the_specification(env):
    assert _errors(compose_file(env)) == []


def test_schema_is_strict_enough_to_catch_mistakes():
    broken = compose_file()
    broken["services"]["api"]["restart_policy"] = "always"  # belongs under deploy:
    broken["services"]["api"]["ports"] = "8000:8000"  # a list, not a string
    errors = _errors(broken)
    assert any("restart_policy" in e for e in errors) and any("ports" in e for e in errors), errors


def test_interpolation_rules():
    assert interpolate("${A:-x}/${B-y}/$$C/${D}", {"A": "", "B": ""}) == "x//$C/"
    with pytest.raises(ValueError, match="needed"):
        interpolate("${E:?needed}", {})


def test_api_service():
    compose = compose_file()
    api = compose["services"]["api"]
    assert "profiles" not in api, "`docker compose up` must start the CPU API"
    assert api["build"]["args"]["TF_FLAVOR"] == "cpu"
    assert api["ports"] == ["127.0.0.1:8000:8000"]
    assert api["restart"] == "unless-stopped"
    assert api["healthcheck"]["test"] == ["CMD", "python", "/opt/cxr-serve/healthcheck.py"]
    assert api["deploy"]["resources"]["limits"]["memory"]
    assert api["read_only"] is True and "/tmp" in api["tmpfs"]
    assert int(api["stop_grace_period"].rstrip("s")) >= 20, "room for the batch queue to drain after SIGTERM"


def test_gpu_profile_requests_an_nvidia_device():
    gpu = compose_file()["services"]["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["TF_FLAVOR"] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["CXR_MAX_BATCH_SIZE"] == image_env("gpu")["CXR_MAX_BATCH_SIZE"]
    api_port = compose_file()["services"]["api"]["ports"][0].split(":")[1]
    assert gpu["ports"][0].split(":")[1] != api_port, "both may run at once on one host"


def test_every_service_uses_the_model_store_volume_where_the_server_looks():
    compose = compose_file()
    store = image_env("cpu")["CXR_MODEL_STORE"]
    for name in ("api", "api-gpu"):
        service = compose["services"][name]
        assert f"model-store:{store}:ro" in service["volumes"]
        assert service["environment"]["CXR_MODEL_STORE"] == store
    assert f"model-store:{store}" in compose["services"]["train"]["volumes"], "train writes into the shared store"
    declared = set(compose["volumes"])
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"named volume {source} is not declared"


def test_train_service_runs_cxr_train_into_the_store():
    compose = compose_file({"CXR_DATA_DIR": "/srv/xray"})
    train = compose["services"]["train"]
    assert train["profiles"] == ["train"]
    entrypoint = train["entrypoint"]
    assert entrypoint[0] in pyproject()["project"]["scripts"]
    args = dict(zip(entrypoint[1::2], entrypoint[2::2], strict=True))
    assert args["--store"] == image_env("cpu")["CXR_MODEL_STORE"]
    assert "/srv/xray:/data:ro" in train["volumes"] and args["--data"] == "/data"


def test_api_keys_come_from_a_secret():
    compose = compose_file({"CXR_API_KEYS_SECRET": "/srv/cxr/keys.jsonl"})
    assert compose["secrets"]["cxr-api-keys"]["file"] == "/srv/cxr/keys.jsonl"
    assert compose_file()["secrets"]["cxr-api-keys"]["file"] == "./secrets/cxr-api-keys.jsonl"
    for name in ("api", "api-gpu"):
        service = compose["services"][name]
        (secret,) = service["secrets"]
        assert secret == {"source": "cxr-api-keys", "target": "cxr-api-keys"}
        # Compose mounts a secret with target NAME at /run/secrets/NAME
        assert service["environment"]["CXR_API_KEYS_FILE"] == "/run/secrets/cxr-api-keys"
    assert "secrets" not in compose["services"]["train"], "training needs no API keys"
