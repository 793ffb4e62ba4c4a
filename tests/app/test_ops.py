"""Health, model information, Prometheus metrics, settings and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.settings import CPU_DEFAULT_BATCH, GPU_DEFAULT_BATCH, Settings, SettingsError
from model_store.registry import DEFAULT_STORE

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_health(server, reference):
    assert server.client.get("/health/live").json()["status"] == "alive"
    ready = server.client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["model"]["version"] == reference.metadata.version


def test_models_describes_the_active_model(server, reference):
    body = server.client.get("/models").json()
    meta = reference.metadata
    version = reference.metadata.version  # the latest shipped version is the default
    assert body["name"] == "pneumonia" and body["active_version"] == version and int(version) in body["versions"]
    assert body["class_names"] == meta.class_names
    assert body["decision_threshold"] == meta.decision_threshold
    assert body["preprocessing"] == meta.preprocessing.to_dict()
    assert body["metrics"]["test"]["roc_auc"] == meta.metrics["test"]["roc_auc"]
    assert body["device"] == "cpu" and body["max_batch_size"] == CPU_DEFAULT_BATCH


def test_metrics_parse_and_cover_requests_stages_batches_and_the_model(server, fullres_images, reference):
    for path in fullres_images[:3]:
        assert server.client.post("/predict", files={"file": (path.name, path.read_bytes())}).status_code == 200
    server.client.get("/nowhere/secret-probe")
    text = server.client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {f: [s for s in fam.samples] for f, fam in families.items()}

    requests = [s for s in samples["cxr_http_requests"] if s.name == "cxr_http_requests_total"]
    assert any(s.labels == {"route": "/predict", "method": "POST", "status": "200"} and s.value >= 3
               for s in requests)
    stages = {s.labels["stage"] for s in samples["cxr_stage_duration_seconds"] if s.name.endswith("_count")}
    assert {"decode", "queue", "inference"} <= stages
    batch_count = next(s.value for s in samples["cxr_batch_size"] if s.name == "cxr_batch_size_count")
    batch_sum = next(s.value for s in samples["cxr_batch_size"] if s.name == "cxr_batch_size_sum")
    predictions = sum(s.value for s in samples["cxr_predictions"] if s.name == "cxr_predictions_total")
    assert batch_sum == predictions >= 3  # every prediction went through exactly one model call
    assert 1 <= batch_count <= batch_sum
    assert families["cxr_queue_depth"].type == "gauge"
    info = next(s for s in samples["cxr_model_info"] if s.name == "cxr_model_info")
    assert info.labels["name"] == "pneumonia" and info.labels["version"] == reference.metadata.version
    assert len(info.labels["sha256"]) == 64
    assert [s.value for s in samples["cxr_ready"]] == [1.0]
    assert [s for s in samples["cxr_http_request_duration_seconds"] if s.labels.get("route") == "/predict"]
    assert 'route="unmatched"' in text and "secret-probe" not in text  # unknown paths never become labels


def test_openapi_documents_the_api(server):
    schema = server.client.get("/openapi.json").json()
    assert {"/predict", "/predict/batch", "/health/live", "/health/ready", "/models"} <= set(schema["paths"])
    responses = schema["paths"]["/predict"]["post"]["responses"]
    assert {"200", "413", "415", "503"} <= set(responses)


# -- settings --------------------------------------------------------------------------------------------------

def test_defaults_serve_the_shipped_model_on_the_cpu(monkeypatch):
    for name in list(Settings.model_fields):
        monkeypatch.delenv(f"CXR_{name.upper()}", raising=False)
    settings = Settings()
    assert settings.model_store == DEFAULT_STORE and settings.model_name == "pneumonia"
    assert settings.model_version is None  # latest
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, "auto")
    assert settings.batch_size_for(gpu=False) == CPU_DEFAULT_BATCH
    assert settings.batch_size_for(gpu=True) == GPU_DEFAULT_BATCH
    assert settings.api_keys == [] and settings.cors_origins == []


def test_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("CXR_PORT", "9001")
    monkeypatch.setenv("CXR_MODEL_VERSION", "latest")
    monkeypatch.setenv("CXR_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("CXR_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("CXR_MAX_BATCH_SIZE", "8")
    settings = Settings()
    assert settings.port == 9001 and settings.model_version is None and settings.log_level == "debug"
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.batch_size_for(gpu=True) == 8


@pytest.mark.parametrize(("env", "value", "says"), [
    ("CXR_PORT", "http", "e.g. 8000"),
    ("CXR_MAX_BATCH_SIZE", "0", "1-1024"),
    ("CXR_MODEL_VERSION", "v2", "positive integer"),
    ("CXR_DEVICE", "tpu", "auto, cpu or gpu"),
    ("CXR_API_KEYS", "short", "16 characters"),
])
def test_bad_settings_say_what_a_correct_value_looks_like(monkeypatch, env, value, says):
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError) as caught:
        Settings.load()
    assert env in str(caught.value) and says in str(caught.value)


def test_a_missing_model_store_is_refused_up_front(tmp_path):
    with pytest.raises(SettingsError, match="is not a directory"):
        Settings.load(model_store=tmp_path / "nowhere")

# Every setting being documented is checked in tests/docs/test_docs.py (docs/configuration.md).

