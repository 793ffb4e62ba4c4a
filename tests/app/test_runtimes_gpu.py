"""On an NVIDIA GPU (skipped elsewhere; ``benchmarks/gpu_check.sh`` runs them): the batcher's model on the GPU,
float16 mixed precision verified like any runtime, larger buckets warmed at load."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from app_harness import SERVER_SETTINGS, started

from app.main import create_app
from app.runtimes import select_runtime
from app.runtimes.verify import TOLERANCE, decisions
from app.settings import GPU_DEFAULT_BATCH, Settings
from model_store import golden
from model_store.artifact import load_artifact

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def gpu():
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        pytest.skip("no GPU visible to TensorFlow (install the gpu extra on an NVIDIA machine)")


@pytest.fixture(scope="module")
def artifact(shipped_model):
    return load_artifact(shipped_model)


def test_fp16_runtime_on_the_gpu_passes_verification_and_matches_on_real_images(artifact, xray_224_dir):
    from model_store.imaging import decode
    from model_store.preprocessing import preprocess

    spec = artifact.metadata.preprocessing
    files = sorted(xray_224_dir.glob("test/*/*.jpeg"))[::4]
    x = np.stack([preprocess(decode(f.read_bytes(), min_size=2 * spec.input_size, max_pixels=50_000_000), spec)
                  for f in files]).astype(np.float32)
    synthetic = golden.load_or_compute(artifact.path, artifact.model, artifact.metadata)
    buckets = [1, 2, 4, 8, 16, 32, 64]
    selection = select_runtime("auto", artifact, buckets, synthetic, gpu=True)
    assert selection.runtime.name == "keras-fp16" and selection.verification.passed
    got = selection.runtime.predict_any(x)
    want = golden.reference_probabilities(artifact.model, x)
    assert np.abs(got - want).max() <= TOLERANCE
    assert (decisions(got, artifact.metadata) == decisions(want, artifact.metadata)).all()


def test_service_batches_on_the_gpu_with_larger_buckets(xray_224_dir):
    import tensorflow as tf

    data = [f.read_bytes() for f in sorted(xray_224_dir.glob("test/*/*.jpeg"))[:96]]
    settings = Settings(**{**SERVER_SETTINGS, "runtime": "auto", "device": "gpu", "gate": "off"})

    async def scenario() -> list[int]:
        app = create_app(settings)
        async with started(app) as client:
            manager = app.state.manager
            assert manager.gpu
            model = manager.current
            assert model.batcher.max_batch_size == GPU_DEFAULT_BATCH and model.batcher.buckets[-1] == 64
            assert model.runtime_name == "keras-fp16"
            # the runtime's variables live on the GPU: the batcher's model call runs there
            assert any("GPU" in getattr(getattr(v, "value", v), "device", "")
                       for v in model.runtime.runtime.model.variables)
            responses = await asyncio.gather(*(client.post("/predict", files={"file": ("x.jpeg", d, "image/jpeg")})
                                               for d in data))
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
            assert {r.json()["model"]["runtime"] for r in responses} == {"keras-fp16"}
            return [len(data)]

    assert asyncio.run(scenario()) == [96]
    assert tf.config.list_logical_devices("GPU")
