#!/usr/bin/env bash
# GPU check, prepared for a machine with an NVIDIA GPU (none was available where it was written: run it there).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]       (default OUT_DIR: ${OUT:-gpu-check})
#
# 1. a venv with the project's `gpu` extra (tensorflow[and-cuda]) + dev + bench extras, and wrk where apt works;
# 2. nvidia-smi and what TensorFlow sees;
# 3. the GPU-marked tests (batcher on the GPU, float16 mixed precision verified, buckets up to 64) and the runtime
#    tests, with a JUnit report;
# 4. the load benchmark with decode threads = all cores (to feed the GPU), batch 64, concurrency up to 128;
# 5. OUT_DIR/gpu-check.json: environment, test outcome, the benchmark's results (its --out JSON).
# Every step runs even if an earlier one failed; the JSON says which did. Data: $CXR_DATA_DIR or ../shared/data.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-gpu-check}}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu-check.log"
exec > >(tee -a "$LOG") 2>&1
VENV="${GPU_VENV:-.venv-gpu}"
step() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

step "venv + gpu extra"
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install -q --upgrade pip
# the gpu extra brings tensorflow[and-cuda]; tensorflow-cpu from the base dependencies must not shadow it
"$VENV/bin/pip" install -q -e '.[gpu,dev,bench]'; PIP_RC=$?
"$VENV/bin/pip" uninstall -y -q tensorflow-cpu >/dev/null 2>&1
"$VENV/bin/pip" install -q --force-reinstall --no-deps 'tensorflow[and-cuda]>=2.20,<2.22' || PIP_RC=$?
if ! command -v wrk >/dev/null 2>&1; then (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null 2>&1; fi

step "devices"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/nvidia-smi.csv"
"$VENV/bin/python" - <<'PY' | tee "$OUT_DIR/tf-devices.json"
import json, tensorflow as tf
print(json.dumps({"tensorflow": tf.__version__, "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
                  "built_with_cuda": tf.test.is_built_with_cuda()}))
PY

step "GPU-marked tests + runtime tests"
"$VENV/bin/python" -m pytest tests/app/test_runtimes_gpu.py tests/app/test_runtimes.py tests/app/test_batching.py \
  -q -rs --junitxml="$OUT_DIR/pytest.xml"; TEST_RC=$?

step "load benchmark (decode threads = all cores, batch 64)"
CORES=$(nproc)
CXR_DECODE_THREADS=$CORES CXR_DEVICE=gpu CXR_GATE=off timeout 1500 "$VENV/bin/python" benchmarks/load.py \
  --max-batch-size 64 --concurrency 1,16,64,128 --duration 8 --warmup 2 --targets service,nobatch,litserve,naive \
  --out "$OUT_DIR/load.json"; LOAD_RC=$?

step "summary"
"$VENV/bin/python" - "$OUT_DIR" "$PIP_RC" "$TEST_RC" "$LOAD_RC" <<'PY'
import json, sys, pathlib, platform
out, pip_rc, test_rc, load_rc = pathlib.Path(sys.argv[1]), *map(int, sys.argv[2:])
def read(name):
    path = out / name
    try:
        return json.loads(path.read_text()) if path.suffix == ".json" else path.read_text()
    except (OSError, ValueError):
        return None
load = read("load.json") or {}
summary = {"platform": platform.platform(), "nvidia_smi": read("nvidia-smi.csv"), "tensorflow": read("tf-devices.json"),
           "pip_rc": pip_rc, "tests_rc": test_rc, "load_rc": load_rc, "targets": load.get("targets"),
           "inprocess": load.get("inprocess"), "runs": load.get("runs")}
(out / "gpu-check.json").write_text(json.dumps(summary, indent=2) + "\n")
print(json.dumps({k: summary[k] for k in ("nvidia_smi", "tensorflow", "pip_rc", "tests_rc", "load_rc")}, indent=1))
PY
echo "results: $OUT_DIR/gpu-check.json"
