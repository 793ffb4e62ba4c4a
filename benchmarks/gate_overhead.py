"""What the input gate costs in throughput: cxr-serve with the gate on (CXR_GATE=refuse, the default) against
the gate off, same model, same upload, 64 connections, in one run (the A/B loop of ``benchmarks/ab.py``).
Target: gate on >= 85 % of gate off.

Usage: ``python benchmarks/gate_overhead.py [--upload 224|fullres]`` (about 2 minutes). Needs ``wrk``.
``--off-runtime keras`` compares today's default with the service as it was before this round (no gate,
Keras float32).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ab import compare, load_arguments, prepare


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load_arguments(parser)
    parser.add_argument("--off-runtime", help="CXR_RUNTIME of the gate-off server, e.g. keras to compare with the "
                                              "service as it was before the gate and the accelerated runtimes")
    args = parser.parse_args()

    workdir, upload = prepare(args, "cxr-gate-bench-")
    off_runtime = {"CXR_RUNTIME": args.off_runtime} if args.off_runtime else {}
    rates, cpu_ms = compare({"gate on": {"CXR_GATE": "refuse"}, "gate off": {"CXR_GATE": "off", **off_runtime}},
                            upload, args, workdir, base_env={"CXR_AUDIT_ENABLED": "false"})
    on, off = rates["gate on"], rates["gate off"]
    print(f"median: gate on {on:.1f} req/s, gate off {off:.1f} req/s, ratio {on / off:.3f} (target >= 0.85)")
    cpu_on, cpu_off = cpu_ms["gate on"], cpu_ms["gate off"]
    print(f"median server CPU per answer: gate on {cpu_on:.2f} ms, gate off {cpu_off:.2f} ms, "
          f"ratio {cpu_off / cpu_on:.3f} (the throughput share a CPU-bound server keeps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
