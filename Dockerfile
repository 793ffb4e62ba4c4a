# cxr-serve image. CPU (default):  docker build -t cxr-serve:cpu .
#                  NVIDIA GPU:     docker build --build-arg TF_FLAVOR=gpu -t cxr-serve:gpu .
# Both flavours share one slim Python base; the GPU one gets CUDA and cuDNN from the NVIDIA wheels that
# tensorflow[and-cuda] pulls in, so the host needs only the driver and the NVIDIA container toolkit.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG TF_FLAVOR=cpu

FROM ${PYTHON_IMAGE} AS builder
ARG TF_FLAVOR
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, from pyproject.toml alone: this layer survives code changes.
COPY pyproject.toml deploy/docker/requirements.py ./
RUN python requirements.py "${TF_FLAVOR}" > requirements.txt \
    && pip install --no-cache-dir -r requirements.txt
COPY README.md ./
COPY app ./app
COPY model_store ./model_store
COPY training ./training
RUN pip install --no-cache-dir --no-deps . \
    && cxr-serve --help > /dev/null

FROM ${PYTHON_IMAGE} AS runtime
# The default model store. Mount a volume here to serve other versions (compose does, with a named volume
# that Docker seeds from this folder on first use); cxr-train writes <store>/pneumonia/<N>/model.h5.
# CXR_WORKERS=auto: one worker process per CPU the container may use (its cgroup CPU quota, e.g. --cpus or a
# Kubernetes limit, included; at most 8, 1 with a GPU); each holds its own model copy (~0.9 GiB).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CXR_HOST=0.0.0.0 \
    CXR_PORT=8000 \
    CXR_WORKERS=auto \
    CXR_MODEL_STORE=/models \
    CXR_AUDIT_PATH=/var/lib/cxr-serve/audit.db \
    KERAS_HOME=/tmp/keras \
    MPLCONFIGDIR=/tmp/matplotlib \
    TF_CPP_MIN_LOG_LEVEL=1
# A fixed numeric uid, so Kubernetes' runAsNonRoot can verify it without a runAsUser. The user owns the model
# store, /runs (the compose train service's checkpoints) and /var/lib/cxr-serve (the SQLite audit trail, a
# volume where the root filesystem is read-only), so volumes seeded from them are writable by it.
RUN groupadd --system --gid 10001 cxr \
    && useradd --system --uid 10001 --gid cxr --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin cxr \
    && install -d -o 10001 -g 10001 /models /runs /var/lib/cxr-serve
COPY --from=builder /opt/venv /opt/venv
COPY --chown=10001:10001 model_store/pneumonia /models/pneumonia
# The input gate (is this a frontal chest radiograph?) is a model of the store too: serving needs both.
COPY --chown=10001:10001 model_store/gate /models/gate
COPY deploy/docker/healthcheck.py /opt/cxr-serve/healthcheck.py
WORKDIR /opt/cxr-serve
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/cxr-serve/healthcheck.py"]
# Exec form: cxr-serve is PID 1 and gets SIGTERM itself, then stops accepting, drains its batch queue and exits.
STOPSIGNAL SIGTERM
CMD ["cxr-serve"]

FROM runtime AS runtime-cpu

FROM runtime AS runtime-gpu
ENV CXR_MAX_BATCH_SIZE=64

# The last stage is the image: the flavour's runtime. hadolint cannot resolve a stage name built from an ARG and
# takes it for an untagged image (DL3006).
# hadolint ignore=DL3006
FROM runtime-${TF_FLAVOR}
