"""The event loop's share of a request, exactly: CPU microseconds per ``POST /predict`` through the real ASGI app
(middleware, routing, access control, FastAPI dependencies, multipart parsing, the audit ticket and row,
response model and JSON), in one thread, with the data plane answering a canned prediction (decode, gate and
model are the decode and batcher threads' work, not the loop's). No sockets, no uvicorn.

``python benchmarks/asgi_cost.py`` prints this checkout's figure; ``--base REV`` runs the committed revision and
the working tree in alternating subprocesses (ABAB, ``--rounds``) and prints their ratio. CPU time of one thread
is steady on a busy machine where req/s is not (it still grows a little with cache pressure from other work).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BOUNDARY = "cxrbenchboundary7d3f9a"


def body_of(path: Path) -> bytes:
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()
    return head + path.read_bytes() + f"\r\n--{BOUNDARY}--\r\n".encode()


def predict_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of a ``POST /predict`` carrying ``body`` (from :func:`body_of`)."""
    return [(b"host", b"bench"), (b"content-type", f"multipart/form-data; boundary={BOUNDARY}".encode()),
            (b"content-length", str(len(body)).encode())]


async def post_predict(app: Any, body: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """One ``POST /predict`` through the ASGI app, without sockets; its status."""
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/predict", "raw_path": b"/predict", "root_path": "",
             "query_string": b"", "headers": headers, "client": ("127.0.0.1", 5000),
             "server": ("127.0.0.1", 8000)}
    await app(scope, receive, send)
    return status


async def wait_loaded(app: Any) -> None:
    """Inside the app's lifespan: until its model is loaded (raises if the load failed)."""
    manager = app.state.manager
    while manager.not_ready_reason() is not None:
        if manager.load_error is not None:
            raise RuntimeError(manager.load_error)
        await asyncio.sleep(0.05)


def canned(dataplane: Any) -> Any:
    """A ``predict_image`` for ``dataplane`` that computes its first answer and then returns it, after the audit's
    input hash (a decode thread's work in the service, kept in the figure)."""
    real = dataplane.predict_image
    answer: list[Any] = []

    async def predict_image(data: bytes, model: Any = None, ticket: Any = None, **kwargs: Any) -> Any:
        if not answer:
            answer.append(await real(data, model, **kwargs))
        if ticket is not None:
            ticket.describe_bytes(data)
            ticket.prediction = answer[0]
        return answer[0]

    return predict_image


async def measure(requests: int, upload: Path, profile: Path | None = None, real: bool = False) -> float:
    """CPU microseconds of this thread per request, after a warm-up (``profile``: a cProfile dump of the timed
    requests, on a CPU clock; it slows them down several times, so read its shares, not its times)."""
    from app.main import create_app
    from app.settings import Settings

    workdir = Path(tempfile.mkdtemp(prefix="cxr-asgi-cost-"))
    app = create_app(Settings(access_log=False, audit_path=workdir / "audit.db"))
    body = body_of(upload)
    headers = predict_headers(body)
    async with app.router.lifespan_context(app):
        await wait_loaded(app)
        dataplane = app.state.dataplane
        real_predict = dataplane.predict_image
        if not real:  # else: the real data plane, so the loop's share includes its thread hand-offs
            dataplane.predict_image = canned(dataplane)
        statuses: list[int] = []

        async def one() -> None:
            statuses.append(await post_predict(app, body, headers))

        for _ in range(200):
            await one()
        profiler = cProfile.Profile(time.thread_time) if profile else None
        started = time.thread_time()
        if profiler is not None:
            profiler.enable()
        for _ in range(requests):
            await one()
        used = time.thread_time() - started
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)
        dataplane.predict_image = real_predict
        if set(statuses) != {200}:
            raise RuntimeError(f"unexpected statuses {sorted(set(statuses))}")
    return 1e6 * used / requests


def default_upload() -> Path:
    data = Path(os.environ.get("CXR_DATA_DIR", REPO.parent / "shared" / "data"))
    return sorted((data / "chest_xray_224" / "train").glob("*/*.jpeg"))[0]


def run_child(pythonpath: Path, args: argparse.Namespace) -> float:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "TF_CPP_MIN_LOG_LEVEL": "3", "CXR_LOG_LEVEL": "warning",
           "CXR_MODEL_STORE": os.environ.get("CXR_MODEL_STORE", str(REPO / "model_store"))}
    profile = ["--profile", str(args.profile.resolve())] if args.profile else []
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--requests",
                          str(args.requests), "--upload", str(args.upload), *profile,
                          *(["--real"] if args.real else [])], env=env, cwd=pythonpath,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--upload", type=Path, default=None)
    parser.add_argument("--base", help="a git revision to compare the working tree with (ABAB subprocesses)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="write a cProfile dump of the timed requests here (no --base)")
    parser.add_argument("--real", action="store_true", help="the real data plane (decode threads, batcher, model), "
                        "one request at a time: the loop's share then includes the thread hand-offs")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.upload = args.upload or default_upload()
    if args.child:
        sys.path.insert(0, os.getcwd())
        print(f"{asyncio.run(measure(args.requests, args.upload, args.profile, args.real)):.1f}")
        return 0
    if not args.base:
        print(f"{run_child(REPO, args):.1f} CPU-us per request (event-loop side, in-process)")
        return 0
    sys.path.insert(0, str(REPO))
    from benchmarks.ab_code import export

    base = export(args.base)
    (base / "benchmarks").mkdir(exist_ok=True)
    figures: dict[str, list[float]] = {"base": [], "tree": []}
    for round_no in range(args.rounds):
        order = ("base", "tree") if round_no % 2 == 0 else ("tree", "base")
        for name in order:
            figures[name].append(run_child(base if name == "base" else REPO, args))
            print(f"  round {round_no + 1} {name}: {figures[name][-1]:.1f} CPU-us per request", flush=True)
    b, t = statistics.median(figures["base"]), statistics.median(figures["tree"])
    print(f"median base {args.base} {b:.1f}, working tree {t:.1f} CPU-us per request: tree / base {t / b:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
