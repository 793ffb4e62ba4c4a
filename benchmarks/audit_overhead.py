"""What the audit trail costs: cxr-serve with audit on (SQLite, the default) against audit off, same model, same
upload, 64 connections, in one run. The two servers take turns (the other frozen with SIGSTOP), several rounds,
and the ratio of the medians is printed. Target: audit on >= 95 % of audit off (overhead <= 5 %). The server's
CPU time per answer is printed too: on a busy shared machine it is a steadier measure of the cost than req/s.

Usage: ``python benchmarks/audit_overhead.py`` (about 2 minutes), ``--audit-url postgresql://...`` to measure
PostgreSQL instead of SQLite, ``--upload fullres`` for the large JPEG. Needs ``wrk`` (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ab import BASE_ENV, load_arguments, prepare, run_turns, start, wait_ready
from benchmarks.servers import Server, free_ports, http_get


def written(server: Server) -> dict[str, float]:
    text = http_get(server.url("/metrics"))[1]
    found = dict(re.findall(r"^(cxr_audit_records_written_total|cxr_audit_buffered) (\S+)$", text, re.M))
    dropped = sum(float(v) for v in re.findall(r"^cxr_audit_records_dropped_total\{[^}]*\} (\S+)$", text, re.M))
    return {"written": float(found.get("cxr_audit_records_written_total", 0)),
            "buffered": float(found.get("cxr_audit_buffered", 0)), "dropped": dropped}


def micro(data: bytes, workdir: Path, n: int = 3000) -> tuple[float, float]:
    """CPU microseconds per answer spent by the audit in the request (ticket, input hash, row, enqueue) and in
    the writer thread (the batched insert), measured in this process with ``time.process_time``: a cost that
    the noise of a shared machine does not blur."""
    import asyncio
    from types import SimpleNamespace

    import numpy as np

    from app.audit import store
    from app.audit.hook import AuditHook
    from app.audit.writer import AuditWriter

    meta = SimpleNamespace(name="pneumonia", class_names=["NORMAL", "PNEUMONIA"], positive_class="PNEUMONIA",
                           decision_threshold=0.5)
    model = SimpleNamespace(metadata=meta, version=1, artifact=SimpleNamespace(sha256="ab" * 32),
                            describe=lambda: {"name": "pneumonia", "version": "1", "sha256": "ab" * 32,
                                              "runtime": "keras"})
    prediction = SimpleNamespace(model=model, probabilities=np.array([0.3, 0.7], dtype=np.float32), label="PNEUMONIA",
                                 timing_ms={"decode": 1.0, "queue": 2.0, "inference": 3.0, "total": 6.0}, gate=None)
    writer = AuditWriter(store.make_engine(f"sqlite:///{workdir / 'micro.db'}"), capacity=n + 1)
    hook = AuditHook(writer, keys=["bench-key-0123456789abcdef"], salt=None, required=False)
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}

    async def requests() -> None:
        for i in range(n):
            async with hook.track(hook.ticket(scope, f"r{i}", "bench-key-0123456789abcdef")) as ticket:
                ticket.describe_bytes(data)
                ticket.prediction = prediction

    started = time.process_time()
    asyncio.run(requests())
    request_us = (time.process_time() - started) / n * 1e6
    writer.start()  # the schema first, then the buffered rows: time only the rows
    while not writer.migrated:
        time.sleep(0.01)
    started = time.process_time()
    writer.flush(120)
    writer_us = (time.process_time() - started) / n * 1e6
    writer.close(10)
    return request_us, writer_us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load_arguments(parser)
    parser.add_argument("--audit-url", help="audit store URL (default: SQLite in a temporary folder)")
    args = parser.parse_args()

    workdir, upload = prepare(args, "cxr-audit-bench-")
    base = {**os.environ, **BASE_ENV}
    port_on, port_off = free_ports(2)
    on_env = {**base, "CXR_PORT": str(port_on), "CXR_AUDIT_ENABLED": "true",
              "CXR_AUDIT_PATH": str(workdir / "audit.db")}
    if args.audit_url:
        on_env["CXR_AUDIT_URL"] = args.audit_url
    servers = {"audit on": start("audit-on", port_on, on_env, workdir),
               "audit off": start("audit-off", port_off, {**base, "CXR_PORT": str(port_off),
                                                          "CXR_AUDIT_ENABLED": "false"}, workdir)}
    try:
        wait_ready(servers)
        before = written(servers["audit on"])
        results, cpu_ms = run_turns(servers, upload, args, workdir,
                                    note=f"store {args.audit_url or 'SQLite (default)'}")
        time.sleep(1.5)  # the writer's last batch
        after = written(servers["audit on"])
        on, off = statistics.median(results["audit on"]), statistics.median(results["audit off"])
        print(f"median: audit on {on:.1f} req/s, audit off {off:.1f} req/s, ratio {on / off:.3f} "
              f"(overhead {100 * (1 - on / off):.1f} %, target <= 5 %)")
        cpu_on, cpu_off = statistics.median(cpu_ms["audit on"]), statistics.median(cpu_ms["audit off"])
        request_us, writer_us = micro(upload.path.read_bytes(), workdir)
        print(f"audit CPU per answer, measured alone: {request_us:.0f} us in the request + {writer_us:.0f} us in "
              f"the writer = {(request_us + writer_us) / 1000:.3f} ms, "
              f"{100 * (request_us + writer_us) / 1000 / cpu_off:.1f} % of the {cpu_off:.2f} ms an answer costs "
              "without audit")
        print(f"median server CPU per answer: audit on {cpu_on:.2f} ms, audit off {cpu_off:.2f} ms, "
              f"ratio {cpu_on / cpu_off:.3f} (what a CPU-bound server loses in throughput: "
              f"{100 * (1 - cpu_off / cpu_on):.1f} %)")
        print(f"records written during the run: {after['written'] - before['written']:.0f}, still buffered "
              f"{after['buffered']:.0f}, not stored {after['dropped']:.0f}")
    finally:
        for server in servers.values():
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
