"""Property tests of the decoder + preprocessing on random bytes, mutated real files and random valid images:
only our own error types ever come out (never a Pillow/pydicom/numpy exception), with client-safe messages,
and every success is a valid model input. Plus a bounded coverage-guided fuzz run (atheris) of the same
target."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import fuzz_decode
import hostile
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_support import fresh_memory_accounting

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow/pydicom warn on the garbage, as they should

SEEDS = fuzz_decode.seed_corpus()
MAGICS = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM", b"GIF87a", b"GIF89a",
          b"\x00" * 128 + b"DICM", b"\x02\x00\x10\x00UI", b"\x08\x00\x05\x00CS"]


def bounded(examples: int) -> settings:
    """No per-example deadline (two shared CPU cores), a fixed number of examples per run."""
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def test_every_seed_decodes():
    for name, data in SEEDS.items():
        if name == "dicom-nopixels":
            assert fuzz_decode.check_one(data) is None
        else:
            assert fuzz_decode.check_one(data) is not None, name


@bounded(300)
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    fuzz_decode.check_one(data)


@bounded(400)
@given(st.sampled_from(MAGICS), st.binary(max_size=2048))
def test_random_bytes_behind_every_magic_number(magic, tail):
    fuzz_decode.check_one(magic + tail)


@st.composite
def mutated(draw):
    """A real file of some format with a few random edits: flips, overwrites, cuts, insertions."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "int32"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:  # a plausible header field (width, length, offset) set to an extreme
            value = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            order = draw(st.sampled_from(["little", "big"]))
            data[at : at + 4] = value.to_bytes(4, order)
    return bytes(data)


@bounded(600)
@given(mutated())
def test_mutated_real_files(data):
    fuzz_decode.check_one(data)


@st.composite
def valid_images(draw):
    h, w = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    kind = draw(st.sampled_from(["uint8", "uint16", "float"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "uint8":
        array = rng.integers(0, 256, (h, w), dtype=np.uint8)
        fmt = draw(st.sampled_from(["PNG", "TIFF", "BMP", "GIF", "JPEG", "DICOM"]))
    elif kind == "uint16":
        array = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        fmt = draw(st.sampled_from(["PNG", "TIFF"]))
    else:
        array = rng.random((h, w), dtype=np.float32)
        fmt = "TIFF"
    data = hostile.dicom(array) if fmt == "DICOM" else hostile.encode(array, fmt)
    return array, fmt, data


@bounded(200)
@given(valid_images())
def test_random_valid_images_decode_to_their_own_pixels(case):
    array, fmt, data = case
    x = fuzz_decode.check_one(data)
    assert x is not None, (fmt, array.shape, array.dtype)
    from model_store.imaging import decode

    image = decode(data, max_pixels=fuzz_decode.MAX_PIXELS)
    assert image.shape == array.shape
    if fmt in ("PNG", "TIFF", "BMP") and array.dtype != np.float32:
        np.testing.assert_array_equal(image, array)  # lossless formats give back the very pixels


@pytest.mark.slow
def test_bounded_coverage_guided_fuzz_run(tmp_path):
    """atheris (libFuzzer) on the same target for a bounded time; CXR_FUZZ_SECONDS sets it (default 20)."""
    if importlib.util.find_spec("atheris") is None:
        pytest.skip("atheris is not installed (the dev extra installs it on Linux x86_64); the hypothesis "
                    "tests above still fuzz the decoder")
    seconds = int(os.environ.get("CXR_FUZZ_SECONDS", "20"))
    harness = Path(fuzz_decode.__file__)
    command = [sys.executable, str(harness), str(tmp_path / "corpus"), f"-max_total_time={seconds}", "-timeout=10",
               "-rss_limit_mb=2048", "-max_len=65536", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"]
    result = subprocess.run(fresh_memory_accounting(command), capture_output=True, text=True,
                            timeout=seconds + 120, check=False)
    output = result.stdout + result.stderr
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-")))
    assert result.returncode == 0 and not crashes, f"fuzzer found {crashes}:\n{output[-4000:]}"
    runs = [line for line in output.splitlines() if "stat::number_of_executed_units" in line]
    print(f"atheris: {runs[-1].split(':')[-1].strip() if runs else '?'} inputs in {seconds}s, no crash")
