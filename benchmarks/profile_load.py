"""Where the service's CPU goes under load: cxr-serve driven by wrk (the load benchmark's upload and body) while
py-spy samples every thread, then a table of the hottest functions per thread group (self and inclusive share of
the samples). The samples are of running threads only (``--idle`` off), so a row's share is of the CPU spent.

Usage: ``python benchmarks/profile_load.py --connections 64 --duration 15`` (py-spy: ``pip install py-spy``;
needs ``wrk``). ``--raw FILE`` keeps py-spy's collapsed stacks (``flamegraph.pl`` or speedscope read them).
``--rate 0`` samples nothing and prints only the CPU per request of each thread group, and how often its threads
slept and were preempted, from /proc: py-spy counts some waits as running, and its sampling costs the service
CPU of its own.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.ab import load_arguments, prepare, service_env, start, wait_ready
from benchmarks.loadgen import run_wrk
from benchmarks.servers import CLK_TCK, free_ports, tree_cpu_seconds, tree_pids

PROCESSES = re.compile(r'(?:process \d+:"[^"]*";)+')
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def thread_group(name: str) -> str:
    """py-spy's thread label -> a group: the event loop (main thread) or the pool the thread belongs to."""
    label = name.partition(": ")[2] or name  # "thread (1234): decode_0"
    if label == "MainThread":
        return "event loop"
    return re.sub(r"[_-]?\d+$", "", label) or label


def python_thread_names(spy: str, pid: int) -> dict[str, str]:
    """Native thread id -> Python thread name, from ``py-spy dump`` (the kernel's name of a Python thread is
    its process's, so /proc alone cannot tell a decode thread from the batcher)."""
    out = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=60,
                         check=False).stdout
    return dict(re.findall(r'^Thread (\d+) \([^)]*\): "([^"]*)"', out, re.M))


def thread_cpu(pid: int, names: dict[str, str] | None = None) -> dict[str, tuple[float, int, int]]:
    """Per thread group of a process (from /proc: exact, where samples are estimates): CPU seconds, voluntary
    and involuntary context switches (a thread that slept, one that was preempted); threads named by ``names``
    where given (native threads, e.g. TFLite's or XNNPACK's, keep the kernel's name)."""
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0, 0])
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (names or {}).get(task.name) or (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            status = (task / "status").read_text()
        except OSError:
            continue
        group = "event loop" if task.name == str(pid) else re.sub(r"[_-]?\d+$", "", name) or name
        switches = [int(re.search(rf"^{kind}_ctxt_switches:\s*(\d+)", status, re.M)[1])  # type: ignore[index]
                    for kind in ("voluntary", "nonvoluntary")]
        total = totals[group]
        total[0] += (int(fields[11]) + int(fields[12])) / CLK_TCK
        total[1] += switches[0]
        total[2] += switches[1]
    return {group: (cpu, int(vol), int(invol)) for group, (cpu, vol, invol) in totals.items()}


def tree_thread_cpu(root: int, names: dict[int, dict[str, str]] | None = None) -> dict[str, tuple[float, int, int]]:
    """``thread_cpu`` over a server's process tree: its workers' thread groups summed, the supervisor's apart."""
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0, 0])
    for pid in tree_pids(root):
        prefix = "supervisor " if pid == root and len(tree_pids(root)) > 1 else ""
        for group, values in thread_cpu(pid, (names or {}).get(pid)).items():
            for i, value in enumerate(values):
                totals[prefix + group][i] += value
    return {group: (cpu, int(vol), int(invol)) for group, (cpu, vol, invol) in totals.items()}


def short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "wt-perf/", "/lib/python"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['func']} ({path})"


def summarise(raw: Path, top: int, root: int = 0, subprocesses: bool = False) -> str:
    total = 0
    by_group: collections.Counter[str] = collections.Counter()
    self_counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    incl_counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        chain = PROCESSES.match(stack)  # --subprocesses: "process PID:"command";" per level (commands hold ";")
        frames = stack[chain.end():].split(";") if chain else stack.split(";")
        group = thread_group(frames[0])
        if chain and subprocesses and chain[0].count("process ") == 1:  # the supervisor; its workers together
            group = "supervisor " + group
        names = [short(f) for f in frames[1:]] or ["(native)"]
        total += count
        by_group[group] += count
        self_counts[group][names[-1]] += count
        for name in set(names):
            incl_counts[group][name] += count
    lines = [f"{total} samples of running threads", "", "| thread group | share of CPU samples |", "| --- | --- |"]
    lines += [f"| {g} | {100 * n / total:.1f} % |" for g, n in by_group.most_common()]
    for group, _ in by_group.most_common(3):
        lines += ["", f"**{group}**: hottest functions (share of all samples)", "",
                  "| function | self | inclusive |", "| --- | --- | --- |"]
        for name, n in incl_counts[group].most_common(top):
            lines.append(f"| `{name}` | {100 * self_counts[group][name] / total:.1f} % | {100 * n / total:.1f} % |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    load_arguments(parser)
    parser.add_argument("--env", nargs="*", default=[], help="NAME=VALUE settings for the server")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second; 0: no sampling, only "
                        "the /proc table of CPU per thread group (no profiler in the way)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--gil", action="store_true", help="sample only the thread holding the GIL (the Python "
                        "side's share; native work that releases the GIL disappears)")
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    workdir, upload = prepare(args, "cxr-profile-")
    env = {**service_env(args.env), "CXR_PORT": str(free_ports(1)[0])}
    server = start("service", int(env["CXR_PORT"]), env, workdir)
    try:
        wait_ready({"service": server})
        assert server.proc is not None
        url = server.url("/predict")
        run_wrk(url, upload, connections=args.connections, seconds=args.warmup, threads=1, workdir=workdir)
        raw = args.raw or Path(tempfile.mkdtemp(prefix="cxr-spy-")) / "stacks.txt"
        root = server.proc.pid
        workers = len(tree_pids(root)) > 1  # a supervisor and its workers: sample every process of the tree
        names = {pid: python_thread_names(spy, pid) for pid in tree_pids(root)}  # after the warm-up: all started
        spy_argv = [spy, "record", "--pid", str(root), "--threads", "--nonblocking",
                    *(["--subprocesses"] if workers else []), *(["--gil"] if args.gil else []),
                    "--rate", str(args.rate), "--duration", str(args.duration), "--format", "raw", "--output", str(raw)]
        spy_proc = None if args.rate == 0 else subprocess.Popen(spy_argv, stdout=subprocess.DEVNULL,
                                                                stderr=subprocess.PIPE)
        cpu_before = tree_cpu_seconds(server.proc.pid)
        threads_before = tree_thread_cpu(root, names)
        result: dict = {}
        load = threading.Thread(target=lambda: result.update(run_wrk(
            url, upload, connections=args.connections, seconds=args.duration, threads=1, workdir=workdir)))
        load.start()
        load.join()
        cpu = tree_cpu_seconds(server.proc.pid) - cpu_before
        threads_after = tree_thread_cpu(root, names)
        if spy_proc is not None:
            spy_proc.wait(timeout=60)
        ok = sum(n for status, n in result["statuses"].items() if str(status).startswith("2"))
        seconds = result["duration_us"] / 1e6
        sampled = f"under py-spy ({args.rate} Hz)" if spy_proc is not None else "(not sampled)"
        print(f"upload {upload.label}, {args.connections} connections, {args.duration} s {sampled}: "
              f"{ok / seconds:.1f} req/s, {1000 * cpu / max(ok, 1):.2f} CPU-ms/request, "
              f"server {cpu / seconds:.2f} cores; statuses {result['statuses']}\n")
        print("| thread group (from /proc) | CPU-ms per request | slept and woke, per request | preempted, per "
              "request |\n| --- | --- | --- | --- |")
        for group, after in sorted(threads_after.items(), key=lambda kv: -kv[1][0]):
            before = threads_before.get(group, (0.0, 0, 0))
            used, slept, preempted = (a - b for a, b in zip(after, before, strict=True))
            if used > 0:
                print(f"| {group} | {1000 * used / max(ok, 1):.2f} | {slept / max(ok, 1):.2f} | "
                      f"{preempted / max(ok, 1):.2f} |")
        if spy_proc is not None:
            print()
            print(summarise(raw, args.top, root, workers))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
