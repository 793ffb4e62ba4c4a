"""Security: model files never run code, uploads never touch the disk, API keys are compared in constant time
and never logged, limits are configurable, and no error body carries a stack trace, a path or a secret."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import tempfile

import h5py
import hostile
import numpy as np
import pytest
import starlette.formparsers
from fastapi.testclient import TestClient
from reliability_support import (
    SHIPPED_MODEL,
    assert_error,
    assert_prediction,
    assert_ready,
    fresh_memory_accounting,
    require_shipped_model,
    running_app,
)

KEY = "k3y-" + "s3cr3t-" * 4  # 32 characters
OTHER_KEY = "another-valid-key-0123456789"


# -- model files ------------------------------------------------------------------------------------------
def _tiny_metadata() -> str:
    from model_store.artifact import ModelMetadata
    from model_store.preprocessing import PreprocessingSpec

    meta = ModelMetadata(name="pneumonia", version="2", class_names=["NORMAL", "PNEUMONIA"],
                         preprocessing=PreprocessingSpec(input_size=16))
    return json.dumps(meta.to_dict())


def lambda_model_file(path, marker) -> None:
    """A real Keras model whose Lambda layer writes ``marker`` when it runs, saved as our artifact."""
    import keras

    # the path is a constant in the function's own code (Keras serialises the bytecode, no defaults/closure)
    payload = eval(f"lambda x: (open({str(marker)!r}, 'w').close(), x)[1]")
    model = keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Lambda(payload),
        keras.layers.Flatten(),
        keras.layers.Dense(2, activation="softmax"),
    ])
    if marker.exists():  # building the model above ran the layer once; start clean
        marker.unlink()
    model.save(path)
    with h5py.File(path, "a") as handle:
        handle.attrs["cxr_metadata"] = _tiny_metadata()


def custom_object_model_file(path) -> None:
    import keras

    @keras.saving.register_keras_serializable(package="evil")
    class Exfiltrate(keras.layers.Layer):
        def call(self, x):
            return x

    model = keras.Sequential([keras.Input((16, 16, 1)), Exfiltrate(), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    model.save(path)
    with h5py.File(path, "a") as handle:
        handle.attrs["cxr_metadata"] = _tiny_metadata()


def pickled_payload_model_file(path) -> None:
    """The shipped (safe) model plus an opaque dataset holding a pickle, as a tampered file might carry."""
    shutil.copyfile(SHIPPED_MODEL, path)
    payload = pickle.dumps({"cmd": "rm -rf /"})
    with h5py.File(path, "a") as handle:
        handle["model_weights"].create_dataset("payload", data=np.void(payload))


CRAFTED = {
    "lambda layer": lambda_model_file,
    "custom registered layer": lambda path, marker: custom_object_model_file(path),
    "pickled payload dataset": lambda path, marker: pickled_payload_model_file(path),
}


@pytest.mark.parametrize("kind", list(CRAFTED))
def test_crafted_model_file_is_refused_and_runs_no_code(tmp_path, kind):
    from model_store.artifact import ArtifactError, load_artifact

    require_shipped_model()
    path, marker = tmp_path / "model.h5", tmp_path / "code-ran"
    CRAFTED[kind](path, marker)
    with pytest.raises(ArtifactError, match="refusing model"):
        load_artifact(path)
    assert not marker.exists()


def test_the_lambda_file_really_would_run_code_without_our_check(tmp_path):
    """Guards the test above: the crafted file is dangerous when loaded unsafely, so refusing it matters."""
    import keras

    path, marker = tmp_path / "model.h5", tmp_path / "code-ran"
    lambda_model_file(path, marker)
    try:
        keras.models.load_model(path, compile=False, safe_mode=False)
    except Exception as exc:  # a Keras version that cannot rebuild legacy lambdas at all is safe too
        pytest.skip(f"this Keras cannot load HDF5 lambdas even unsafely: {type(exc).__name__}")
    assert marker.exists()


def test_reload_to_a_malicious_version_is_refused_and_the_old_one_keeps_serving(tmp_path):
    require_shipped_model()
    store = tmp_path / "store"
    (store / "pneumonia" / "1").mkdir(parents=True)
    (store / "pneumonia" / "2").mkdir()
    shutil.copyfile(SHIPPED_MODEL, store / "pneumonia" / "1" / "model.h5")
    marker = tmp_path / "code-ran"
    lambda_model_file(store / "pneumonia" / "2" / "model.h5", marker)
    with running_app(model_store=store, model_version="1", gate="off") as client:  # synthetic film below
        error = assert_error(client.post("/admin/reload", json={"version": 2}), 422, "invalid_input")
        assert "Lambda" in error["message"] and "keeps serving" in error["message"]
        assert str(store) not in error["message"]
        assert client.get("/health/ready").json()["model"]["version"] == "1"
        assert_prediction(client.post("/predict", files={"file": ("x.png", hostile.png(), "image/png")}))
    assert not marker.exists()


# -- decompression bombs cost nothing --------------------------------------------------------------------
BOMB_PROBE = """
import resource, sys
sys.path.insert(0, sys.argv[1])
import hostile
from model_store.imaging import ImageTooLargeError, decode
bombs = [hostile.png_bomb(12000, 14000), hostile.gif_bomb(12000, 14000), hostile.dicom_bomb(12000, 14000),
         hostile.gif_bomb(12000, 14000, stray=b"\\x00junk")]
decode(hostile.png(), max_pixels=50_000_000)  # every import and plug-in loaded before measuring
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for bomb in bombs:
    try:
        decode(bomb, max_pixels=50_000_000)
    except ImageTooLargeError:
        pass
    else:
        raise SystemExit("a bomb was decoded")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


@pytest.mark.slow  # a fresh interpreter, so that its peak memory means something
def test_decompression_bombs_are_refused_before_any_pixel_memory_is_allocated():
    """168 M pixels declared by files under a kilobyte (PNG, GIF, DICOM): refused from the header, with no
    allocation on the way (Pillow's GIF plug-in allocates the first frame while opening; the service checks the
    frame size in the bytes before that)."""
    import subprocess
    import sys
    from pathlib import Path

    command = [sys.executable, "-c", BOMB_PROBE, str(Path(hostile.__file__).parent)]
    probe = subprocess.run(fresh_memory_accounting(command), capture_output=True, text=True, timeout=120,
                           check=True)
    assert int(probe.stdout.strip()) < 32, f"peak memory grew by {probe.stdout.strip()} MiB"


# -- uploads stay in memory -------------------------------------------------------------------------------
class RecordingSpool(tempfile.SpooledTemporaryFile):
    rolled: list[int] = []  # noqa: RUF012 (a class-level record on purpose)

    def rollover(self) -> None:
        RecordingSpool.rolled.append(self.tell())
        super().rollover()


def test_uploads_are_never_spooled_to_disk(ungated_client, monkeypatch):
    """Starlette spools multipart files over 1 MiB to a temporary file; X-ray uploads (PHI) must not be
    written to disk, so the service keeps every file up to its upload limit in memory."""
    client = ungated_client  # a noise picture: the input gate would refuse it before the full path runs
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", RecordingSpool)
    RecordingSpool.rolled.clear()
    noisy = np.random.default_rng(0).integers(0, 256, (1800, 1800), dtype=np.uint8)
    big = hostile.png(noisy)  # about 3 MiB: incompressible noise
    assert len(big) > 2 * 1024 * 1024
    assert_prediction(client.post("/predict", files={"file": ("big.png", big, "image/png")}))
    response = client.post("/predict/batch", files=[("files", ("a.png", big, "image/png")),
                                                    ("files", ("b.png", big, "image/png"))])
    assert [item["status"] for item in response.json()["results"]] == [200, 200]
    assert RecordingSpool.rolled == []


# -- API keys ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed_app():
    """API keys and small limits on; the model is not loaded (no lifespan), so a request that passes the key
    check ends at 503 not_ready: enough to tell authentication apart without paying for a model load."""
    from app.main import create_app
    from app.settings import Settings

    settings = Settings(api_keys=[KEY, OTHER_KEY], max_batch_files=2, max_upload_bytes=64 * 1024)
    return TestClient(create_app(settings), raise_server_exceptions=False)


PROTECTED = [("POST", "/predict"), ("POST", "/predict/batch"), ("GET", "/models"), ("POST", "/admin/reload"),
             ("GET", "/v2/models/pneumonia"), ("POST", "/v2/models/pneumonia/infer")]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_protected_routes_need_a_key(keyed_app, method, path):
    error = assert_error(keyed_app.request(method, path), 401, "unauthorized")
    assert "missing" in error["message"]
    for headers in ({"X-API-Key": KEY[:-1]}, {"Authorization": f"Bearer {KEY}x"}, {"Authorization": f"Basic {KEY}"},
                    {"X-API-Key": ""}, {"X-API-Key": KEY.upper()}):
        response = keyed_app.request(method, path, headers=headers)
        assert_error(response, 401, "unauthorized")
        assert KEY not in response.text


@pytest.mark.parametrize("headers", [{"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"},
                                     {"Authorization": f"bearer {OTHER_KEY}"}])
def test_a_valid_key_passes(keyed_app, headers):
    files = {"file": ("x.png", hostile.png(), "image/png")}
    assert_error(keyed_app.post("/predict", files=files, headers=headers), 503, "not_ready")


@pytest.mark.parametrize("path", ["/health/live", "/health/ready", "/metrics", "/v2/health/live", "/v2",
                                  "/openapi.json"])
def test_probes_and_metrics_stay_open(keyed_app, path):
    assert keyed_app.get(path).status_code in (200, 503)  # 503: not ready, but never 401


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    from app import security

    calls = []
    real = security.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(security.hmac, "compare_digest", spy)
    for candidate in (KEY, OTHER_KEY, "wrong-key-of-some-length", ""):
        calls.clear()
        security.key_matches(candidate, [KEY, OTHER_KEY])
        assert len(calls) == 2  # no early exit on the first match or mismatch


def test_keys_are_never_logged(keyed_app, caplog):
    caplog.set_level(logging.DEBUG)
    files = {"file": ("x.png", hostile.png(), "image/png")}
    keyed_app.post("/predict", files=files, headers={"X-API-Key": KEY})
    keyed_app.post("/predict", files=files, headers={"Authorization": f"Bearer {OTHER_KEY}"})
    keyed_app.post("/predict", files=files, headers={"X-API-Key": "guess-" + KEY[6:]})
    logged = "\n".join(record.getMessage() + str(record.__dict__) for record in caplog.records)
    assert logged  # the requests were logged...
    for secret in (KEY, OTHER_KEY, KEY[6:]):
        assert secret not in logged  # ...without any key, right or wrong


def test_configured_limits_apply(keyed_app):
    headers = {"X-API-Key": KEY}
    files = [("files", (f"{i}.png", hostile.png(), "image/png")) for i in range(3)]
    assert_error(keyed_app.post("/predict/batch", files=files, headers=headers), 413, "too_many_files")
    big = {"file": ("big.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * (200 * 1024), "image/png")}
    assert_error(keyed_app.post("/predict", files=big, headers=headers), 413, "upload_too_large")


def test_pixel_limit_is_configurable():
    with running_app(max_pixels=300 * 300, gate="off") as client:  # synthetic films
        ok = hostile.png(hostile.chest_like((300, 300)))
        assert_prediction(client.post("/predict", files={"file": ("ok.png", ok, "image/png")}))
        over = hostile.png(hostile.chest_like((301, 300)))
        error = assert_error(client.post("/predict", files={"file": ("big.png", over, "image/png")}), 413,
                             "image_too_large")
        assert "90,000" in error["message"]
        assert_ready(client)


# -- nothing internal leaks -------------------------------------------------------------------------------
def test_unexpected_exception_gives_a_bare_500(client, monkeypatch):
    dataplane = client.app.state.dataplane

    async def broken(data, model=None):
        raise KeyError("/srv/secret/config.yaml: password=hunter2")

    monkeypatch.setattr(dataplane, "predict_image", broken)
    response = client.post("/predict", files={"file": ("x.png", hostile.png(), "image/png")})
    assert_error(response, 500, "internal_error")
    assert "hunter2" not in response.text and "/srv" not in response.text and "KeyError" not in response.text
    monkeypatch.undo()
    assert_ready(client)
