"""deploy/kubernetes: every rendered object against the Kubernetes schemas, and the wiring between them."""

from __future__ import annotations

import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from deploy_helpers import KUSTOMIZATIONS, KustomizeError, by_kind, image_env, render_kustomization
from kubernetes_validate.utils import latest_version

from app.workers import AUTO_MAX

# The oldest Kubernetes these manifests promise to work on, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ["1.29", latest_version()]
POD_LABELS = {"app.kubernetes.io/name": "cxr-serve", "app.kubernetes.io/component": "api"}


@pytest.mark.parametrize("render", list(KUSTOMIZATIONS))
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_objects_match_the_kubernetes_schema(renders, render, version):
    resources = renders[render]
    assert {r["kind"] for r in resources} == {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                                             "PodDisruptionBudget"}
    for resource in resources:
        try:
            kubernetes_validate.validate(resource, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{render}: {resource['kind']} at {'.'.join(map(str, e.path))}: {e.message}")


def test_validation_catches_a_misspelt_field(renders):
    deployment = by_kind(renders["base"])["Deployment"]
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readynessProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kustomize_refuses_a_broken_overlay(tmp_path):
    # A patch for an object the base does not have must fail the render, not be dropped.
    (tmp_path / "patch.yaml").write_text("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: nothing\n"
                                         "spec:\n  replicas: 3\n")
    (tmp_path / "kustomization.yaml").write_text(
        f"resources:\n- {os.path.relpath(KUSTOMIZATIONS['base'], tmp_path)}\npatches:\n- path: patch.yaml\n")
    with pytest.raises(KustomizeError, match="nothing"):
        render_kustomization(tmp_path)


def test_overlays_change_only_what_they_say(renders):
    # The render is kustomize's own: the GPU overlay's image and patches land, the base's objects stay.
    assert [r["kind"] for r in renders["base"]] == [r["kind"] for r in renders["gpu"]]
    images = {name: _pod(renders[name])["spec"]["containers"][0]["image"] for name in KUSTOMIZATIONS}
    assert len(set(images.values())) == 3, images


def _pod(resources):
    return by_kind(resources)["Deployment"]["spec"]["template"]


@pytest.mark.parametrize("render", list(KUSTOMIZATIONS))
def test_deployment(renders, render):
    kinds = by_kind(renders[render])
    deployment = kinds["Deployment"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert deployment["spec"]["selector"]["matchLabels"] == POD_LABELS
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = _pod(renders[render])
    assert pod["metadata"]["labels"] == POD_LABELS
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001, "the Dockerfile's USER"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in spec["volumes"] if v["name"] == tmp["name"])
    (port,) = container["ports"]
    assert port["containerPort"] == int(image_env("cpu")["CXR_PORT"])
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/health/live"
    assert probes["readinessProbe"]["path"] == "/health/ready"
    assert probes["startupProbe"]["path"] == "/health/ready", "the startup probe waits for the model"
    assert all(p["port"] == port["name"] for p in probes.values())
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "time to load and warm the model"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    config = kinds["ConfigMap"]["data"]
    drain = float(config["CXR_GRACEFUL_TIMEOUT"]) + float(config["CXR_AUDIT_FLUSH_TIMEOUT_S"])
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + drain, "preStop, drain, audit flush, SIGKILL"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    limits = container["resources"]["limits"]
    if "nvidia.com/gpu" not in limits:  # CXR_WORKERS=auto: a worker per CPU of the limit, each ~0.9 GiB
        workers = min(AUTO_MAX, int(float(limits["cpu"])))
        assert float(limits["memory"].removesuffix("Gi")) >= workers * 0.9 + 0.5, "room for every worker's model"
    (config,) = container["envFrom"]
    assert config["configMapRef"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    audit_url = next(e for e in container["env"] if e["name"] == "CXR_AUDIT_URL")["valueFrom"]["secretKeyRef"]
    assert audit_url["optional"] is True, "a shared audit store is optional (a Secret: the URL holds a password)"
    # the API key file comes from a Secret mounted as a folder (updates reach the pod: no subPath)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert mount["readOnly"] is True and "subPath" not in mount
    secret = next(v for v in spec["volumes"] if v["name"] == "api-keys")["secret"]
    assert secret["optional"] is True, "the pod starts without it (and refuses protected routes with 401)"
    key_file = Path(kinds["ConfigMap"]["data"]["CXR_API_KEYS_FILE"])
    assert key_file.parent == Path(mount["mountPath"])


@pytest.mark.parametrize("render", list(KUSTOMIZATIONS))
def test_service_hpa_pdb_point_at_the_deployment(renders, render):
    kinds = by_kind(renders[render])
    deployment = kinds["Deployment"]
    container_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    service = kinds["Service"]
    assert service["spec"]["selector"] == POD_LABELS
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= container_ports
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    hpa = kinds["HorizontalPodAutoscaler"]["spec"]
    assert 1 <= hpa["minReplicas"] < hpa["maxReplicas"]
    pdb = kinds["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"] == POD_LABELS
    assert pdb.get("maxUnavailable") == 1, "drains proceed one pod at a time, even with a single replica"


@pytest.mark.parametrize("render", list(KUSTOMIZATIONS))
def test_configmap_settings(renders, render):
    data = by_kind(renders[render])["ConfigMap"]["data"]
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values are strings"
    assert data["CXR_HOST"] == "0.0.0.0"
    assert data["CXR_WORKERS"] == "auto", "a worker per CPU of the pod's limit (its cgroup quota)"
    if data["CXR_DEVICE"] != "gpu":  # on the GPU auto is one worker, with the overlay's own thread count
        assert "TF_NUM_INTRAOP_THREADS" not in data, "cxr-serve gives each worker its share of the limit"
    assert data["CXR_MODEL_STORE"] == image_env("cpu")["CXR_MODEL_STORE"]
    assert data["CXR_PORT"] == image_env("cpu")["CXR_PORT"]


def test_overlays(renders):
    for render in ("cpu", "gpu"):
        image = _pod(renders[render])["spec"]["containers"][0]["image"]
        tag = image.rsplit(":", 1)[1]
        assert tag.endswith(f"-{render}") and tag != "latest", image
    gpu_pod = _pod(renders["gpu"])["spec"]
    gpu_container = gpu_pod["containers"][0]
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu_pod["nodeSelector"] and gpu_pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    gpu_config = by_kind(renders["gpu"])["ConfigMap"]["data"]
    assert gpu_config["CXR_MAX_BATCH_SIZE"] == image_env("gpu")["CXR_MAX_BATCH_SIZE"]
    assert gpu_config["CXR_DEVICE"] == "gpu"
    cpu_pod = _pod(renders["cpu"])["spec"]
    assert "nvidia.com/gpu" not in cpu_pod["containers"][0]["resources"]["limits"]
    assert by_kind(renders["cpu"])["ConfigMap"]["data"]["CXR_DEVICE"] == "cpu"
    # The patch merged into the base's container instead of adding a second one.
    assert [c["name"] for c in gpu_pod["containers"]] == ["cxr-serve"]
    assert gpu_container["readinessProbe"] == _pod(renders["base"])["spec"]["containers"][0]["readinessProbe"]
