"""Two versions of cxr-serve's code against each other in one run: a committed revision (``--base``, default
HEAD) against the working tree, same settings, same upload, the A/B loop of ``benchmarks/ab.py`` (ABBA turns,
the idle server frozen). For measuring a code change on a noisy shared machine: the CPU-ms per answer of each
turn is the steadier reading, req/s and p50 are printed too.

Usage: ``python benchmarks/ab_code.py --connections 1 --upload fullres`` (about 2 minutes), ``--base REV``,
``--env CXR_GATE=off`` (both servers), ``--tree-switch-interval 0.0005`` (the working tree's server runs with
that ``sys.setswitchinterval``: with ``--base HEAD`` and a clean tree, an A/B of the interpreter's GIL switch
interval alone). The base revision is exported with ``git archive`` into a temporary
folder and put first on its server's PYTHONPATH; both use this checkout's model store. Needs ``wrk``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ab import load_arguments, prepare, run_turns, service_env, start, wait_ready
from benchmarks.servers import REPO, Server, free_ports


def export(rev: str) -> Path:
    """The revision's files (no .git) in a temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix="cxr-base-"))
    archive = subprocess.run(["git", "archive", "--format=tar", rev, "app", "model_store"], cwd=REPO,
                             capture_output=True, check=True).stdout
    with tempfile.TemporaryFile() as handle:
        handle.write(archive)
        handle.seek(0)
        with tarfile.open(fileobj=handle) as tar:
            tar.extractall(folder, filter="data")
    return folder


def start_revisions(base: str | None, shared: dict[str, str], workdir: Path,
                    servers: dict[str, Server]) -> None:
    """Into ``servers``: a cxr-serve of the working tree ("tree") and, with ``base``, one of that revision
    ("base", first), each on its own port and audit database; ready when this returns. Filled as they start,
    so the caller's ``finally`` stops any that started should a later one fail."""
    for name in (["base", "tree"] if base else ["tree"]):
        port = free_ports(1)[0]
        env = {**shared, "CXR_PORT": str(port), "CXR_AUDIT_PATH": str(workdir / f"audit-{name}.db")}
        if base is not None and name == "base":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(export(base)), shared.get("PYTHONPATH"))))
        servers[name] = start(name, port, env, workdir)
    wait_ready(servers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load_arguments(parser)
    parser.add_argument("--base", default="HEAD", help="the git revision to compare the working tree with")
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE settings for both servers")
    parser.add_argument("--tree-env", nargs="*", default=[], help="NAME=VALUE settings for the working tree's "
                        "server only (with --base HEAD: an A/B of a setting)")
    parser.add_argument("--quiet-other", type=float, default=0.25, help="rounds in which the rest of the machine "
                        "used at most this many cores are also summarised on their own")
    parser.add_argument("--tree-switch-interval", type=float, help="sys.setswitchinterval for the working tree's "
                        "server (seconds; Python's default is 0.005)")
    args = parser.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    base = export(args.base)
    workdir, upload = prepare(args, "cxr-ab-code-")
    shared = service_env(args.env)
    port_a, port_b = free_ports(2)
    names = (f"base {rev}", "working tree")
    servers = {}
    try:
        servers[names[0]] = start("base", port_a, {**shared, "CXR_PORT": str(port_a),
                                                   "CXR_AUDIT_PATH": str(workdir / "audit-base.db"),
                                                   "PYTHONPATH": os.pathsep.join(filter(None, (
                                                       str(base), shared.get("PYTHONPATH"))))}, workdir)
        tree_env = {**shared, "CXR_PORT": str(port_b), "CXR_AUDIT_PATH": str(workdir / "audit-tree.db"),
                    **dict(item.split("=", 1) for item in args.tree_env)}
        if args.tree_switch_interval is None:
            servers[names[1]] = start("tree", port_b, tree_env, workdir)
        else:
            names = (names[0], f"tree si={args.tree_switch_interval:g}")
            code = (f"import sys; sys.setswitchinterval({args.tree_switch_interval!r}); from app.cli import main; "
                    "sys.exit(main())")
            servers[names[1]] = Server("tree", [sys.executable, "-c", code], tree_env, port_b, "/health/ready",
                                       workdir / "tree.log", batch_stats="metrics")
            servers[names[1]].start()
        wait_ready(servers)
        p50: dict[str, list[float]] = {}
        other: dict[str, list[float]] = {}
        results, cpu_ms = run_turns(servers, upload, args, workdir, note=f"load average {os.getloadavg()[0]:.2f}",
                                    p50_ms=p50, other_cores=other)
        for name in names:
            print(f"median {name:14s} {statistics.median(results[name]):8.1f} req/s "
                  f"{statistics.median(cpu_ms[name]):7.2f} CPU-ms/request  p50 {statistics.median(p50[name]):7.2f} ms")
        for name in names:  # the turns other work left alone: closest to a quiet machine
            quiet = [i for i, o in enumerate(other[name]) if o <= args.quiet_other]
            if quiet:
                print(f"quiet turns ({len(quiet)} of {len(other[name])}, other <= {args.quiet_other:g} cores) "
                      f"{name:14s} {statistics.median(results[name][i] for i in quiet):8.1f} req/s "
                      f"{statistics.median(cpu_ms[name][i] for i in quiet):7.2f} CPU-ms/request  "
                      f"p50 {statistics.median(p50[name][i] for i in quiet):7.2f} ms")
        a, b = names
        print(f"working tree / base: req/s {statistics.median(results[b]) / statistics.median(results[a]):.3f}, "
              f"CPU per request {statistics.median(cpu_ms[b]) / statistics.median(cpu_ms[a]):.3f}, "
              f"p50 {statistics.median(p50[b]) - statistics.median(p50[a]):+.2f} ms; load average "
              f"{os.getloadavg()[0]:.2f}")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
