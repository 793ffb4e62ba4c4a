"""What the input gate costs in throughput: cxr-serve with the gate on (CXR_GATE=refuse, the default) against
the gate off, same model, same upload, 64 connections, in one run (the A/B loop of ``benchmarks/ab.py``).
Target: gate on >= 85 % of gate off.

Usage: ``python benchmarks/gate_overhead.py [--upload 224|fullres]`` (about 2 minutes). Needs ``wrk``.
``--off-runtime keras`` compares today's default with the service as it was before this round (no gate,
Keras float32).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ab import BASE_ENV, load_arguments, prepare, run_turns, start, wait_ready
from benchmarks.servers import free_ports


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load_arguments(parser)
    parser.add_argument("--off-runtime", help="CXR_RUNTIME of the gate-off server, e.g. keras to compare with the "
                                              "service as it was before the gate and the accelerated runtimes")
    args = parser.parse_args()

    workdir, upload = prepare(args, "cxr-gate-bench-")
    base = {**os.environ, **BASE_ENV, "CXR_AUDIT_ENABLED": "false"}
    port_on, port_off = free_ports(2)
    servers = {"gate on": start("gate-on", port_on, {**base, "CXR_PORT": str(port_on), "CXR_GATE": "refuse"},
                                workdir),
               "gate off": start("gate-off", port_off, {**base, "CXR_PORT": str(port_off), "CXR_GATE": "off",
                                                        **({"CXR_RUNTIME": args.off_runtime} if args.off_runtime
                                                           else {})}, workdir)}
    try:
        wait_ready(servers)
        results, cpu_ms = run_turns(servers, upload, args, workdir)
        on, off = statistics.median(results["gate on"]), statistics.median(results["gate off"])
        print(f"median: gate on {on:.1f} req/s, gate off {off:.1f} req/s, ratio {on / off:.3f} (target >= 0.85)")
        cpu_on, cpu_off = statistics.median(cpu_ms["gate on"]), statistics.median(cpu_ms["gate off"])
        print(f"median server CPU per answer: gate on {cpu_on:.2f} ms, gate off {cpu_off:.2f} ms, "
              f"ratio {cpu_off / cpu_on:.3f} (the throughput share a CPU-bound server keeps)")
    finally:
        for server in servers.values():
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
