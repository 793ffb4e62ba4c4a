"""Where the service's CPU goes by native library, next to the in-process ceiling doing the same work: cxr-serve
driven by wrk while ``perf record`` samples its processes, then the in-process all-cores ceiling workers
(``ceilings.py``: decode + gate + preprocess per image, the model at batch 16, no HTTP) sampled the same way.
Each library's share of the samples times the CPU-ms per request (or per image) gives its CPU-ms, so the rows
say which code the service runs beyond the work itself (py-spy cannot: it charges native time to the Python
frame that called it).

Usage: ``python benchmarks/native_profile.py --upload fullres --connections 64 --duration 8`` (about a minute;
needs ``perf`` (Debian ``linux-perf``) allowed to sample this user's processes, and ``wrk``).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.workers import usable_cpus
from benchmarks.ab import load_arguments, prepare, service_env, start, wait_ready
from benchmarks.ceilings import START_DELAY_S, CeilingWorkers, inprocess_argv
from benchmarks.loadgen import run_wrk
from benchmarks.servers import REPO, free_ports, tree_cpu_seconds, tree_pids

# a shared object's file name -> the row it is counted in (first match wins)
GROUPS = [
    ("libjpeg (JPEG decode)", r"libjpeg"),
    ("TFLite / XNNPACK (gate and model)", r"tflite|tensorflow|xnnpack"),
    ("Pillow (resize, convert)", r"_imaging"),
    ("numpy", r"_multiarray|numpy"),
    ("Python interpreter", r"libpython|^python"),
    ("libc (memcpy, malloc)", r"^libc[.-]|libm[.-]"),
    ("kernel (sockets, futex, page faults)", r"kernel|vmlinux|\[vdso\]"),
    ("OpenSSL (audit hash)", r"libcrypto|_hashlib"),
    ("uvloop / httptools / multipart", r"uvloop|loop\.cpython|httptools|parser\.cpython|multipart"),
    ("pydantic", r"pydantic"),
    ("SQLite (audit)", r"sqlite"),
]
OTHER = "other"
DSO_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s*$")


def group_of(dso: str) -> str:
    name = Path(dso).name
    return next((label for label, pattern in GROUPS if re.search(pattern, name)), OTHER)


def perf_shares(data: Path) -> dict[str, float]:
    """Share (0-1) of the samples in each library group, from ``perf report --sort dso``."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "--stdio",
                          "-g", "none"], capture_output=True, text=True, check=True).stdout
    shares: collections.Counter[str] = collections.Counter()
    for line in out.splitlines():
        match = DSO_LINE.match(line)
        if match:
            shares[group_of(match[2])] += float(match[1]) / 100
    return dict(shares)


def record(pids: list[int], seconds: float, output: Path, frequency: int) -> subprocess.Popen:
    return subprocess.Popen(["perf", "record", "-F", str(frequency), "-p", ",".join(map(str, pids)), "-o",
                             str(output), "--", "sleep", str(seconds)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        sys.exit(f"perf record of {what} failed ({proc.returncode}): {err.strip()[-500:]}")


def profile_service(args: argparse.Namespace, upload, workdir: Path) -> tuple[float, dict[str, float], str]:
    """CPU-ms per successful request of the whole service, its library shares, and a one-line summary."""
    port = free_ports(1)[0]
    env = {**service_env(args.env), "CXR_PORT": str(port)}
    server = start("service", port, env, workdir)
    try:
        wait_ready({"service": server})
        assert server.proc is not None
        url = server.url("/predict")
        run_wrk(url, upload, connections=args.connections, seconds=args.warmup, threads=1, workdir=workdir)
        root = server.proc.pid
        result: dict = {}
        load = threading.Thread(target=lambda: result.update(run_wrk(
            url, upload, connections=args.connections, seconds=args.duration + 2, threads=1, workdir=workdir)))
        load.start()
        time.sleep(1.0)  # perf's window lies inside wrk's
        cpu_before = tree_cpu_seconds(root)
        perf = record(tree_pids(root), args.duration, workdir / "service.data", args.frequency)
        finish(perf, "the service")
        cpu = tree_cpu_seconds(root) - cpu_before
        load.join()
    finally:
        server.stop()
    seconds = result["duration_us"] / 1e6
    ok = sum(n for status, n in result["statuses"].items() if str(status).startswith("2"))
    errors = {s: n for s, n in result["statuses"].items() if not str(s).startswith("2")}
    rps = ok / seconds
    # the CPU of perf's window over the requests answered in it (wrk's rate times the window)
    per_request = 1000 * cpu / (rps * args.duration)
    summary = (f"service, {args.connections} connections: {rps:.1f} req/s, {per_request:.2f} CPU-ms/request"
               + (f", errors {errors}" if errors else ""))
    return per_request, perf_shares(workdir / "service.data"), summary


def profile_ceiling(args: argparse.Namespace, upload, workdir: Path) -> tuple[float, dict[str, float], str]:
    """CPU-ms per image of the all-cores in-process ceiling, and its library shares."""
    argv = inprocess_argv([(upload.label, upload.path)], store=os.environ.get("CXR_MODEL_STORE", str(
        REPO / "model_store")), name="pneumonia", version=None, batch_size=16, runtime="auto")
    workers = CeilingWorkers(argv, usable_cpus())
    try:
        if not workers.ready():
            sys.exit("the in-process ceiling workers did not start")
        result: dict = {}
        window = threading.Thread(target=lambda: result.update(
            workers.window(upload.label, args.duration + 1.0, len(workers.procs))))
        window.start()
        time.sleep(START_DELAY_S + 0.5)
        perf = record([p.pid for p in workers.procs], args.duration, workdir / "ceiling.data", args.frequency)
        finish(perf, "the ceiling workers")
        window.join()
    finally:
        workers.close()
    per_image = result["cpu_ms_per_image"]
    summary = (f"in-process all-cores ceiling ({result['processes']} processes): {result['images_per_s']:.1f} "
               f"images/s, {per_image:.2f} CPU-ms/image")
    return per_image, perf_shares(workdir / "ceiling.data"), summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load_arguments(parser)
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE settings for the service")
    parser.add_argument("--frequency", type=int, default=999, help="perf samples per second per CPU")
    args = parser.parse_args()
    workdir, upload = prepare(args, "cxr-native-")
    workdir = Path(tempfile.mkdtemp(prefix="cxr-perf-", dir=workdir))
    served_ms, served, served_line = profile_service(args, upload, workdir)
    work_ms, work, work_line = profile_ceiling(args, upload, workdir)
    print(f"upload {upload.label}; {served_line}; {work_line}\n")
    print("| library | service CPU-ms/request | in-process CPU-ms/image | difference |\n| --- | --- | --- | --- |")
    rows = sorted(set(served) | set(work), key=lambda g: -served.get(g, 0.0))
    for group in rows:
        a, b = served_ms * served.get(group, 0.0), work_ms * work.get(group, 0.0)
        print(f"| {group} | {a:.2f} | {b:.2f} | {a - b:+.2f} |")
    print(f"| **total** | {served_ms:.2f} | {work_ms:.2f} | {served_ms - work_ms:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
