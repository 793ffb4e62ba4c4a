"""deploy/kserve/inferenceservice.yaml against (a minimal copy of) KServe's CRD schema, plus KServe's webhook rules."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
from deploy_helpers import KSERVE_FILE, REPO, image_env, load_documents
from kubernetes_validate.utils import latest_version
from referencing import Registry, Resource

SCHEMA_FILE = REPO / "deploy" / "schemas" / "kserve-inferenceservice-v1beta1.json"
# The pod-spec parts of KServe's CRD are generated from k8s.io/api/core/v1: resolve them against the strict
# Kubernetes definitions that kubernetes-validate ships (see deploy/schemas/README.md).
_K8S_DEFINITIONS = resources.files("kubernetes_validate").joinpath(
    f"kubernetes-json-schema/v{latest_version()}-local-strict/_definitions.json")


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    definitions = json.loads(_K8S_DEFINITIONS.read_text(encoding="utf-8"))
    registry = Registry().with_resource("/api/_definitions.json", Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.fixture(scope="module")
def isvc() -> dict:
    (document,) = load_documents(KSERVE_FILE)
    return document


def _errors(validator, document) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def test_matches_the_crd_schema(validator, isvc):
    assert _errors(validator, isvc) == []


@pytest.mark.parametrize("mistake", ["misspelt predictor field", "bad scaleMetric", "misspelt container field",
                                     "port as text"])
def test_schema_catches_mistakes(validator, isvc, mistake):
    broken = copy.deepcopy(isvc)
    predictor = broken["spec"]["predictor"]
    container = predictor["containers"][0]
    if mistake == "misspelt predictor field":
        predictor["minReplica"] = 1
    elif mistake == "bad scaleMetric":
        predictor["scaleMetric"] = "gpu"
    elif mistake == "misspelt container field":
        container["readynessProbe"] = container.pop("readinessProbe")
    else:
        container["ports"][0]["containerPort"] = "8000"
    assert _errors(validator, broken), mistake


def test_custom_predictor_speaks_v2_on_our_port(isvc):
    predictor = isvc["spec"]["predictor"]
    # KServe's webhook: exactly one implementation per component; here the custom container.
    implementations = {"containers", "model", "sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx",
                       "huggingface", "pmml", "lightgbm", "paddle"}
    assert implementations & set(predictor) == {"containers"}
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container", "KServe reads PROTOCOL from the container of this name"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["PROTOCOL"] == "v2"
    port = int(image_env("cpu")["CXR_PORT"])
    assert env["CXR_PORT"] == str(port) and env["CXR_HOST"] == "0.0.0.0"
    assert [p["containerPort"] for p in container["ports"]] == [port], "Knative allows one port"
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"]["port"] == port
    assert "startupProbe" not in container, "Knative refuses it"
    # Knative accepts Secret (and ConfigMap/projected) volumes only: the API key file, where the service reads it
    (volume,) = predictor["volumes"]
    assert set(volume) == {"name", "secret"} and volume["secret"]["optional"] is True
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"] and mount["readOnly"] is True
    assert Path(env["CXR_API_KEYS_FILE"]).parent == Path(mount["mountPath"])
    assert not container["image"].endswith(":latest") and ":" in container["image"]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert isvc["metadata"]["name"].replace("-", "").isalnum() and isvc["metadata"]["name"][0].isalpha()
