"""Model runtimes: golden-set storage, verification at load, the choice among runtimes and the fallback, and what
the API shows. Real model (the shipped artifact), real conversions; a corrupted runtime is made by perturbing
the weights it is converted from."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil

import h5py
import numpy as np
import pytest
from app_harness import SERVER_SETTINGS, started

from app.main import create_app
from app.runtimes import RUNTIMES, select_runtime
from app.runtimes import lite as lite_module
from app.runtimes.base import CONVERSIONS, cpu_flags
from app.runtimes.keras_runtime import KerasBf16Runtime
from app.runtimes.verify import TOLERANCE, decisions, verify
from app.settings import Settings
from model_store import golden
from model_store.artifact import file_sha256, inspect_artifact, load_artifact
from model_store.imaging import decode
from model_store.preprocessing import preprocess
from model_store.registry import DEFAULT_STORE, ModelRegistry
from model_store.site_calibration import final_probabilities

BUCKETS = [1, 2, 4, 8, 16]


@pytest.fixture(autouse=True)
def fresh_conversions():
    CONVERSIONS.clear()  # a test that converts perturbed weights must not leave them for the next
    yield
    CONVERSIONS.clear()


@pytest.fixture(scope="module")
def artifact(shipped_model):
    return load_artifact(shipped_model)


@pytest.fixture(scope="module")
def test_inputs(artifact, xray_224_dir) -> np.ndarray:
    """Real test-split images, preprocessed by the service's own code (every 8th: 39 images)."""
    spec = artifact.metadata.preprocessing
    files = sorted(xray_224_dir.glob("test/*/*.jpeg"))[::8]
    return np.stack([preprocess(decode(f.read_bytes(), min_size=2 * spec.input_size, max_pixels=50_000_000), spec)
                     for f in files]).astype(np.float32)


@pytest.fixture(scope="module")
def golden_set(artifact) -> golden.GoldenSet:
    """What the service verifies runtimes on: the shipped artifact's own set (v2 stores one at export)."""
    return golden.load_or_compute(artifact.path, artifact.model, artifact.metadata)


@pytest.fixture(scope="module")
def v1_artifact():
    """v1, shipped without a golden set: the synthetic path."""
    path = ModelRegistry(DEFAULT_STORE).path_for("pneumonia", 1)
    if not path.is_file():
        pytest.skip(f"no v1 artifact at {path}")
    return load_artifact(path)


@pytest.fixture(scope="module")
def synthetic(v1_artifact) -> golden.GoldenSet:
    return golden.load_or_compute(v1_artifact.path, v1_artifact.model, v1_artifact.metadata)


# -- the golden set ------------------------------------------------------------------------------------------
def test_golden_set_round_trips_packed_in_the_artifact(tmp_path, artifact, test_inputs):
    path = tmp_path / "model.h5"
    shutil.copy(artifact.path, path)
    sha = golden.store_golden(path, artifact.model, test_inputs, artifact.metadata, size=24)
    assert sha == file_sha256(path) != artifact.sha256
    inspect_artifact(path)  # still a valid, safe artifact (numeric datasets only)
    back = golden.read_golden(path)
    assert back is not None and back.source == "artifact" and 0 < len(back) <= 24
    assert set(np.unique(back.inputs)) <= {0.0, 1.0}  # binarized inputs, unpacked exactly
    reloaded = load_artifact(path)  # Keras ignores the extra group; the weights are the same
    np.testing.assert_allclose(golden.reference_probabilities(reloaded.model, back.inputs), back.probabilities,
                               atol=1e-5)
    # packed 8 per byte: far smaller than the float32 inputs it stands for
    assert path.stat().st_size - artifact.path.stat().st_size < back.inputs.nbytes / 16


def test_non_binary_inputs_are_stored_exactly(tmp_path):
    path = tmp_path / "g.h5"
    levels = (np.arange(2 * 4 * 4).reshape(2, 4, 4, 1) % 256 / 255.0).astype(np.float32)
    for inputs, encoding in ((levels, "uint8"), (levels * 0.37, "float32")):
        golden.write_golden(path, inputs, np.array([[0.2, 0.8], [0.6, 0.4]], np.float32))
        back = golden.read_golden(path)
        assert back is not None
        np.testing.assert_array_equal(back.inputs, inputs)
        with h5py.File(path) as handle:
            assert handle[golden.GROUP].attrs["encoding"] == encoding


def test_selection_spreads_and_skips_inputs_on_the_threshold():
    probabilities = np.stack([1 - np.linspace(0, 1, 101), np.linspace(0, 1, 101)], axis=1).astype(np.float32)
    inputs = np.arange(101, dtype=np.float32).reshape(101, 1, 1, 1)
    chosen, probs = golden.select(inputs, probabilities, positive_index=1, threshold=0.5, size=20)
    assert len(chosen) == 20
    assert np.abs(probs[:, 1] - 0.5).min() >= golden.MIN_MARGIN  # 0.50 itself is left out
    assert probs[:, 1].min() == 0.0 and probs[:, 1].max() == 1.0  # spread over the whole range


def test_the_shipped_artifact_brings_its_own_golden_set(artifact, golden_set):
    assert golden_set.source == "artifact" and 16 <= len(golden_set) <= 32
    assert golden_set.inputs.shape[1:] == artifact.metadata.preprocessing.input_shape
    assert set(np.unique(golden_set.inputs)) <= {0.0, 1.0}  # real binarized validation films
    np.testing.assert_allclose(golden.reference_probabilities(artifact.model, golden_set.inputs),
                               golden_set.probabilities, atol=1e-5)


def test_synthetic_golden_inputs_are_deterministic_and_spread(v1_artifact, synthetic):
    artifact = v1_artifact
    again = golden.load_or_compute(artifact.path, artifact.model, artifact.metadata)
    np.testing.assert_array_equal(again.inputs, synthetic.inputs)
    assert synthetic.source == "synthetic" and len(synthetic) >= 16
    positive = synthetic.probabilities[:, artifact.metadata.positive_index]
    # both decisions represented, so a runtime that shifts outputs shows up as flips, not only as |dp|
    assert decisions(synthetic.probabilities, artifact.metadata).any()
    assert not decisions(synthetic.probabilities, artifact.metadata).all()
    assert positive.max() - positive.min() > 0.3


# -- runtimes against the reference on real images -----------------------------------------------------------
@pytest.mark.parametrize("name", ["tflite-int8", "keras-bf16"])
def test_accelerated_runtime_matches_the_reference_on_real_test_images(name, artifact, test_inputs, golden_set):
    cls = RUNTIMES[name]
    if cls.unavailable_reason():
        pytest.skip(f"{name} unavailable here: {cls.unavailable_reason()}")
    runtime = cls.load(artifact, BUCKETS)
    runtime.warm(len(artifact.metadata.class_names))
    want = golden.reference_probabilities(artifact.model, test_inputs)
    got = runtime.predict_any(test_inputs)
    assert np.abs(got - want).max() <= TOLERANCE
    assert (decisions(got, artifact.metadata) == decisions(want, artifact.metadata)).all()
    # an image's result does not depend on what else is in its batch: exactly for int8 (per-image activation
    # quantization, one image per interpreter call); bf16 Keras only to rounding, because oneDNN picks its
    # kernels (and so its order of bf16 sums) by batch shape
    atol = 1e-6 if name == "tflite-int8" else 1e-3
    np.testing.assert_allclose(runtime.predict(test_inputs[:1]), runtime.predict(test_inputs[:16])[:1], atol=atol)
    if not runtime.needs_padding:  # any batch size, each image as in any other batch
        np.testing.assert_allclose(runtime.predict(test_inputs[3:6]), runtime.predict(test_inputs[:16])[3:6],
                                   atol=atol)
    assert verify(runtime, golden_set, artifact.metadata).passed


def test_auto_picks_an_accelerated_runtime_that_passes(artifact, golden_set):
    selection = select_runtime("auto", artifact, BUCKETS, golden_set)
    assert selection.runtime.name == "tflite-int8"  # the fastest measured here, available on every x86 CPU
    assert selection.verification is not None and selection.verification.passed
    assert selection.verification.max_abs_diff <= TOLERANCE and selection.verification.decision_flips == 0
    assert selection.fallback is None


def test_keras_is_the_reference_without_acceleration(artifact):
    selection = select_runtime("keras", artifact, BUCKETS, None)
    assert selection.runtime.name == "keras" and selection.verification is None and selection.fallback is None


def test_a_corrupted_runtime_falls_back_to_the_reference_with_one_warning(artifact, golden_set, monkeypatch,
                                                                        caplog):
    real_convert = lite_module.convert_int8

    def perturbed(model):  # what a broken converter or a damaged cache entry would hand over
        import keras

        clone = keras.models.clone_model(model)
        rng = np.random.default_rng(0)
        clone.set_weights([w + rng.normal(0, 0.05 * (np.std(w) + 1e-3), w.shape).astype(w.dtype)
                           for w in model.get_weights()])
        return real_convert(clone)

    monkeypatch.setattr(lite_module, "convert_int8", perturbed)
    with caplog.at_level(logging.WARNING, logger="cxr.runtimes"):
        selection = select_runtime("tflite-int8", artifact, BUCKETS, golden_set)
    assert selection.runtime.name == "keras"
    assert selection.fallback is not None and "tflite-int8 failed verification" in selection.fallback
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "fallback to keras" in warnings[0].getMessage() and "max |dp|" in warnings[0].getMessage()
    assert selection.verification is not None and selection.verification.passed  # the reference itself


def test_a_runtime_this_cpu_cannot_run_falls_back_when_forced_and_is_skipped_by_auto(artifact, golden_set,
                                                                                    monkeypatch, caplog):
    monkeypatch.setattr(KerasBf16Runtime, "unavailable_reason", classmethod(lambda cls: "no avx512_bf16 (test)"))
    with caplog.at_level(logging.WARNING, logger="cxr.runtimes"):
        forced = select_runtime("keras-bf16", artifact, BUCKETS, golden_set)
    assert forced.runtime.name == "keras" and "no avx512_bf16" in (forced.fallback or "")
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    monkeypatch.setattr(lite_module.TFLiteInt8Runtime, "unavailable_reason", classmethod(lambda cls: "test"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxr.runtimes"):
        auto = select_runtime("auto", artifact, BUCKETS, golden_set)
    assert auto.runtime.name == "keras" and auto.fallback is None
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # nothing failed: nothing to warn


def test_a_runtime_returning_non_finite_values_fails_and_reports_json_safely(artifact, golden_set):
    runtime = RUNTIMES["keras"].load(artifact, BUCKETS)
    runtime.predict = lambda batch: np.full((len(batch), 2), np.nan, np.float32)  # type: ignore[method-assign]
    check = verify(runtime, golden_set, artifact.metadata)
    assert not check.passed and check.to_dict()["max_abs_diff"] is None


def test_verification_checks_decisions_at_every_operating_point(artifact, golden_set):
    """A site version decides at several thresholds after its own recalibration: a runtime that flips one
    input at one point only (its probabilities well within tolerance) is refused."""
    runtime = RUNTIMES["keras"].load(artifact, BUCKETS)
    shift = np.array([-0.004, 0.004], np.float32)  # P(positive) up by 0.004 everywhere
    runtime.predict = lambda batch, real=runtime.predict: np.clip(real(batch) + shift, 0, 1)  # type: ignore[method-assign]
    want = golden_set.probabilities
    got = np.clip(want + shift, 0, 1)
    site = {"intercept": -0.5, "slope": 0.9, "method": "logistic"}
    probe = dataclasses.replace(artifact.metadata, site_calibration=site)
    before, after = (final_probabilities(p, probe)[:, 1] for p in (want, got))
    k = int(np.argmax(after - before))
    crossed = float((before[k] + after[k]) / 2)  # only input k lies on both sides of it
    spared = 0.0  # every input is positive here, before and after
    meta = dataclasses.replace(probe, operating_points={"screening": spared, "balanced": crossed},
                               default_operating_point="screening", decision_threshold=spared)
    assert decisions(want, meta).shape == (len(want), 2)
    check = verify(runtime, golden_set, meta)
    assert check.max_abs_diff <= TOLERANCE and check.decision_flips == 1 and not check.passed
    single = dataclasses.replace(meta, operating_points={"screening": spared})
    assert verify(runtime, golden_set, single).passed  # the same runtime passes where that point is absent


def test_bf16_is_offered_only_where_the_cpu_has_it():
    has = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    assert (KerasBf16Runtime.unavailable_reason() is None) == has


# -- the service -----------------------------------------------------------------------------------------------
def test_the_service_shows_and_uses_the_verified_runtime_and_reloads(shipped_model, artifact, xray_224_dir):
    data = sorted(xray_224_dir.glob("test/PNEUMONIA/*.jpeg"))[0].read_bytes()
    settings = Settings(**{**SERVER_SETTINGS, "runtime": "auto"})

    async def scenario() -> None:
        app = create_app(settings)
        async with started(app) as client:
            models = (await client.get("/models")).json()
            assert models["runtime"]["name"] == "tflite-int8"
            assert models["runtime"]["verification"]["passed"] is True
            assert models["runtime"]["verification"]["golden_source"] == "artifact"  # stored at export
            body = (await client.post("/predict", files={"file": ("x.jpeg", data, "image/jpeg")})).json()
            assert body["model"]["runtime"] == "tflite-int8"
            spec = artifact.metadata.preprocessing
            x = preprocess(decode(data, min_size=2 * spec.input_size, max_pixels=50_000_000), spec)[np.newaxis]
            temperature = float(getattr(artifact.metadata, "temperature", 1.0))
            want = golden.calibrated(golden.reference_probabilities(artifact.model, x), temperature)[0]
            got = np.array(list(body["probabilities"].values()))
            assert np.abs(got - want).max() <= TOLERANCE
            metrics = (await client.get("/metrics")).text
            assert 'runtime="tflite-int8"' in metrics
            before = app.state.manager.current
            await asyncio.to_thread(app.state.manager.reload)  # hot reload: a new verified runtime, same kind
            after = app.state.manager.current
            assert after is not before and after.runtime_name == "tflite-int8"
            assert (await client.post("/predict", files={"file": ("x.jpeg", data, "image/jpeg")})).status_code == 200

    asyncio.run(scenario())


def test_decode_threads_default_to_the_usable_cores():
    import os

    assert Settings().decode_threads == min(64, len(os.sched_getaffinity(0)))
    assert Settings(decode_threads=3).decode_threads == 3


def test_runtime_setting_is_validated():
    from app.settings import SettingsError

    assert Settings.load(runtime="TFLite-Int8").runtime == "tflite-int8"
    with pytest.raises(SettingsError, match="CXR_RUNTIME"):
        Settings.load(runtime="onnx")


