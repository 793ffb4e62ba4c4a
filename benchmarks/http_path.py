"""What a request costs beside its image work, and what the image work costs inside the service: one worker's CPU
per ``POST /predict`` split into the HTTP path and the work, each against the same work in a tight loop.

Three measurements, all on one CPU (``--cpu``, default the last), the configuration of one ``cxr-serve`` worker
(one decode thread, the model on one thread, another worker taken to be busy, as under load):

1. **whole**: a server running the service's app, driven by wrk (``--connections``);
2. **HTTP path**: the same server with its data plane answering a prediction computed once (uvicorn, middleware,
   the ``/predict`` fast path, access control, the audit ticket, row and input hash, the JSON answer: everything
   but decode, gate, preprocess and model); the two servers take turns (ABBA, the idle one frozen);
3. **the work alone**: decode + gate + preprocess + model (``DataPlane._prepare`` and the runtime) in one thread,
   image after image; then the same interleaved, in the same thread, with one pass of the app's request path
   (the canned server's work without sockets), with the upload's bytes received over a loopback TCP connection
   (the kernel's part, no HTTP), and with a 1 ms sleep after each image.

``whole - HTTP path`` is what the work costs inside the serving worker; against (3) it shows how much slower the
same code runs there. Issue 23's figures (benchmarks/README.md) read it: a faster HTTP front end can win back at
most the HTTP path.

Usage: ``python benchmarks/http_path.py --upload fullres`` (about 3 minutes; needs ``wrk``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ab import load_arguments, prepare, run_turns, service_env, wait_ready
from benchmarks.asgi_cost import body_of, canned, post_predict, predict_headers, wait_loaded
from benchmarks.servers import REPO, Server, free_ports

# one cxr-serve worker's share on a machine it splits with others (app/workers.py sets the same)
WORKER_SHARE = {"CXR_DECODE_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"}


def pin(cpu: int) -> None:
    """This process on one CPU, before TensorFlow starts threads (they inherit it)."""
    os.sched_setaffinity(0, {cpu})
    os.environ.update(WORKER_SHARE)


def worker_like(app: Any) -> None:
    """As in a cxr-serve worker under load: another worker is busy, so a lone image is not spread over every
    core (app/inflight.py)."""
    app.state.dataplane.inflight.others_busy = lambda: True


def serve(mode: str, port: int, cpu: int) -> None:
    pin(cpu)
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings())
    worker_like(app)
    if mode == "canned":
        app.state.dataplane.predict_image = canned(app.state.dataplane)
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False,
                                  loop="uvloop", http="httptools")).run()


def upload_over_tcp(body: bytes, cpu: int) -> Callable[[], None]:
    """A function that receives ``body`` over a loopback TCP connection, sent by a thread on the other CPUs (as
    wrk sends an upload): the kernel's share of a request's network work, without HTTP."""
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    listener.close()

    def send_forever() -> None:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)) - {cpu} or {cpu})  # this thread only
        with contextlib.suppress(OSError):
            while True:
                sender.sendall(body)

    threading.Thread(target=send_forever, daemon=True).start()
    size = len(body)
    buffer = bytearray(size)

    def receive() -> None:
        view, got = memoryview(buffer), 0
        while got < size:
            got += receiver.recv_into(view[got:])

    return receive


async def tight(upload: Path, *, cpu: int, images: int, repeats: int) -> dict:
    """CPU-ms per image of the work alone, and interleaved with the app's request path, with the upload received
    over TCP, or with a 1 ms sleep."""
    pin(cpu)
    from app.main import create_app
    from app.settings import Settings

    data = upload.read_bytes()
    body = body_of(upload)
    headers = predict_headers(body)
    app = create_app(Settings())
    worker_like(app)

    async def request() -> None:
        status = await post_predict(app, body, headers)
        if status != 200:
            raise RuntimeError(f"the app answered {status}")

    async with app.router.lifespan_context(app):
        await wait_loaded(app)
        dataplane, model = app.state.dataplane, app.state.manager.current
        predict = model.batcher.predict  # the runtime, as the batcher calls it
        dataplane.predict_image = canned(dataplane)

        def work() -> None:
            predict(dataplane._prepare(data, model).x[None])

        receive_upload = upload_over_tcp(body, cpu)
        figures: dict[str, list[float]] = {"alone": [], "with the request path": [], "with the upload over TCP": [],
                                           "with a 1 ms sleep": []}
        for _ in range(50):
            work()
            await request()
        for _ in range(repeats):  # interleaved, so that a drift of the machine hits every mode alike
            for mode, values in figures.items():
                spent = 0.0
                for _ in range(images):
                    started = time.thread_time()
                    work()
                    spent += time.thread_time() - started
                    if mode == "with the request path":
                        await request()
                    elif mode == "with the upload over TCP":
                        receive_upload()
                    elif mode == "with a 1 ms sleep":
                        time.sleep(0.001)
                values.append(1000 * spent / images)
    return {mode: statistics.median(values) for mode, values in figures.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    load_arguments(parser)
    parser.add_argument("--cpu", type=int, default=max(os.sched_getaffinity(0)), help="the CPU the service runs on")
    parser.add_argument("--images", type=int, default=0, help="images per tight-loop turn (0: by upload)")
    parser.add_argument("--serve", choices=("real", "canned"), help=argparse.SUPPRESS)
    parser.add_argument("--tight", type=Path, metavar="UPLOAD", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.cpu)
        return 0
    if args.tight:
        images = args.images or (400 if args.tight.stat().st_size < 100_000 else 100)
        print(json.dumps(asyncio.run(tight(args.tight, cpu=args.cpu, images=images, repeats=args.rounds))))
        return 0

    workdir, upload = prepare(args, "cxr-http-path-")
    env = {**service_env([]), "CXR_WORKERS": "1"}

    def work_alone() -> dict[str, float]:
        out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--tight", str(upload.path),
                              "--cpu", str(args.cpu), "--rounds", str(args.rounds), "--images", str(args.images)],
                             env={**env, "CXR_AUDIT_PATH": str(workdir / "audit-tight.db")}, cwd=REPO,
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    before = work_alone()  # before and after the servers' turns: the machine's drift shows, and averages out
    servers: dict[str, Server] = {}
    try:
        for mode, port in zip(("whole", "HTTP path"), free_ports(2), strict=True):
            argv = [sys.executable, str(Path(__file__).resolve()), "--serve", "real" if mode == "whole" else "canned",
                    "--port", str(port), "--cpu", str(args.cpu)]
            servers[mode] = Server(mode, argv, {**env, "CXR_AUDIT_PATH": str(workdir / f"audit-{port}.db")}, port,
                                   "/health/ready", workdir / f"{mode.replace(' ', '-')}.log")
            servers[mode].start()
        wait_ready(servers)
        _, cpu_ms = run_turns(servers, upload, args, workdir, note=f"the server on CPU {args.cpu}")
    finally:
        for server in servers.values():
            server.stop()
    after = work_alone()
    alone = {mode: (before[mode] + after[mode]) / 2 for mode in before}
    whole, http = statistics.median(cpu_ms["whole"]), statistics.median(cpu_ms["HTTP path"])
    work = whole - http
    print(f"\nCPU-ms per request on CPU {args.cpu}, {upload.label}, median of {args.rounds} rounds:\n"
          f"  whole request {whole:.2f} = HTTP path {http:.2f} + the work in the service {work:.2f}\n"
          f"  the work in one thread (mean of before and after the servers' turns: "
          f"{before['alone']:.2f}, {after['alone']:.2f}): alone {alone['alone']:.2f}, after each image one pass "
          f"of the app's request path {alone['with the request path']:.2f}, the upload received over TCP "
          f"{alone['with the upload over TCP']:.2f}, a 1 ms sleep {alone['with a 1 ms sleep']:.2f}\n"
          f"  the work in the service / alone: x{work / alone['alone']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
