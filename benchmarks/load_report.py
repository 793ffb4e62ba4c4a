"""The load benchmark's printout: the table, the in-process figures, the service's memory, and the targets
(issue 23's, then the earlier ratios as information), computed from the runs alone so that ``--report`` reprints
them from a saved JSON."""

from __future__ import annotations

SERVICE = "service"


def fmt_errors(errors: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in errors.items()) or "0"


def per_cpu(run: dict) -> float:
    """Requests per CPU-second the server used: what throughput would be per core. On a machine shared with
    other work the server gets only part of the CPU, so this is the steadier reading of efficiency there (at
    high concurrency every server here is CPU-bound)."""
    return run["rps"] / run["server_cpu_cores"] if run["server_cpu_cores"] > 0 else 0.0


def cpu_ms_per_request(run: dict) -> float | None:
    """CPU milliseconds of the server's whole process tree per successful request (saved runs before this
    figure existed: from the cores used over the window)."""
    if "server_cpu_ms_per_ok" in run:
        return run["server_cpu_ms_per_ok"]
    return 1000 * run["server_cpu_cores"] * run["seconds"] / run["ok"] if run["ok"] else None


def print_table(runs: list[dict]) -> None:
    header = (f"{'target':<17}{'upload':<9}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
              f"{'batch':>7}{'srv cpu':>8}{'req/cpu-s':>10}{'cpu ms/req':>11}{'rss MB':>8}{'wrk cpu':>8}"
              f"{'other':>6}  errors")
    print(header)
    print("-" * len(header))
    for r in sorted(runs, key=lambda r: (r["target"], r["upload"], r["concurrency"])):
        batch = f"{r['mean_batch']:.1f}" if r["mean_batch"] is not None else "-"
        flag = "*" if r.get("disturbed") else " "
        cpu_ms = cpu_ms_per_request(r)
        rss = r.get("memory", {}).get("rss_mb")
        print(f"{r['target']:<17}{r['upload']:<9}{r['concurrency']:>5}{r['rps']:>8.1f}{flag}{r['p50_ms']:>9.1f}"
              f"{r['p95_ms']:>9.1f}{r['p99_ms']:>9.1f}{batch:>7}{r['server_cpu_cores']:>8.2f}"
              f"{per_cpu(r):>10.1f}{(f'{cpu_ms:.2f}' if cpu_ms is not None else '-'):>11}"
              f"{(f'{rss:.0f}' if rss is not None else '-'):>8}"
              f"{r['wrk_cpu_cores']:>8.2f}{r['other_cpu_cores']:>6.2f}  {fmt_errors(r['errors'])}")


def print_inprocess(inprocess: dict | None, ceilings: dict | None) -> None:
    if inprocess:
        for label, figures in inprocess["uploads"].items():
            print(f"in-process {label} (one thread, the service's runtime threads; images_per_s is GATE-FREE): "
                  + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
    if ceilings:
        for label, both in ceilings["uploads"].items():
            one, every = both["one_thread"], both["all_cores"]
            print(f"in-process ceilings {label} (decode+gate+preprocess, model at batch {ceilings['batch_size']}): "
                  f"one thread {one['images_per_s']:.1f} images/s ({one['cpu_ms_per_image']:.2f} CPU ms/image); "
                  f"all cores ({every['processes']} processes) {every['images_per_s']:.1f} images/s "
                  f"({every['cpu_ms_per_image']:.2f} CPU ms/image)")


def print_memory(runs: list[dict], top: int) -> None:
    for r in sorted(runs, key=lambda r: r["upload"]):
        memory = r.get("memory")
        if r["target"] != SERVICE or r["concurrency"] != top or not memory:
            continue
        shared = ", ".join(f"{k[:3].upper()} {memory[k]:.0f} MB" for k in ("pss_mb", "uss_mb") if k in memory)
        print(f"service memory after {r['upload']} c={top}: RSS {memory['rss_mb']:.0f} MB summed over "
              f"{len(memory['processes'])} processes" + (f" ({shared})" if shared else "") + "; per process: "
              + ", ".join(f"{p['pid']} {p['name']} {p['rss_mb']:.0f}" + (f"/{p['pss_mb']:.0f}/{p['uss_mb']:.0f}"
                                                                          if "pss_mb" in p else "")
                          for p in memory["processes"])
              + (" (RSS/PSS/USS MB)" if any("pss_mb" in p for p in memory["processes"]) else " (RSS MB)"))


def single_image_work(figures: dict) -> str:
    """What the in-process single-image figure holds (results saved before the gate was timed lack it)."""
    if "single_no_gate_ms_p50" not in figures:
        return f"decode+preprocess+model(batch 1) {figures['single_ms_p50']:.2f} ms (no gate),"
    return (f"decode+gate+preprocess+model(batch 1) {figures['single_ms_p50']:.2f} ms (without the gate "
            f"{figures['single_no_gate_ms_p50']:.2f} ms),")


def find(runs: list[dict], target: str, upload: str, conc: int) -> dict | None:
    return next((r for r in runs if (r["target"], r["upload"], r["concurrency"]) == (target, upload, conc)), None)


def compute_targets(runs: list[dict], inprocess: dict | None, top: int, max_batch: int,
                    ceilings: dict | None = None) -> list[dict]:
    """Issue 23's targets (``group`` "target"), then the earlier ratios and readings (``group`` "info")."""
    out: list[dict] = []

    def rps(target: str, upload: str, conc: int = top) -> float | None:
        run = find(runs, target, upload, conc)
        return run["rps"] if run else None

    group = "target"  # then "info"

    def add(name: str, value: float | None, goal: str, met: bool | None, note: str) -> None:
        out.append({"group": group, "name": name, "value": round(value, 3) if value is not None else None,
                    "target": goal, "met": met, "note": note})

    def ratio(name: str, num: float | None, den: float | None, goal: float | None, note: str) -> None:
        if num is not None and den:
            value = num / den
            add(name, value, f">= {goal}" if goal is not None else "info",
                value >= goal if group == "target" and goal is not None else None, note)

    # -- issue 23 ---------------------------------------------------------------------------------------------
    for upload, goal in (("224x224", 1.5), ("full-res", 2.0)):
        ratio(f"service/LitServe req/s, {upload}, c={top}", rps(SERVICE, upload), rps("litserve", upload),
              goal, "same model, decoder, preprocess, buckets, batch size and delay")
    if ceilings and "224x224" in ceilings["uploads"]:
        every = ceilings["uploads"]["224x224"]["all_cores"]
        ratio(f"service / all-cores in-process ceiling, 224x224, c={top}", rps(SERVICE, "224x224"),
              every["images_per_s"], 0.6, f"ceiling {every['images_per_s']:.1f} images/s: decode+gate+preprocess+"
              f"model in {every['processes']} processes, batch {ceilings['batch_size']}, no HTTP")
    for upload in ("224x224", "full-res"):
        run = find(runs, SERVICE, upload, top)
        figures = (ceilings or {}).get("uploads", {}).get(upload)
        served = cpu_ms_per_request(run) if run else None
        if served is None or not figures or figures["all_cores"]["cpu_ms_per_image"] is None:
            continue
        work = figures["all_cores"]["cpu_ms_per_image"]
        add(f"service CPU ms/request minus in-process CPU ms/image, {upload}, c={top}", served - work,
            "<= 1.0", served - work <= 1.0,
            f"service {served:.2f} ms (process tree / 2xx), in-process {work:.2f} ms all cores "
            f"({figures['one_thread']['cpu_ms_per_image']:.2f} one thread)")
    for upload, figures in (inprocess or {}).get("uploads", {}).items():
        lone = find(runs, SERVICE, upload, 1)
        if lone is None:
            continue
        served = lone["p50_ms"]
        overhead = served - figures["single_ms_p50"]
        add(f"p50 at c=1 minus in-process single-image latency, {upload} (ms)", overhead, "<= 1.0",
            overhead <= 1.0, f"service p50 {served:.2f} ms, in-process {single_image_work(figures)} "
                             f"runtime {inprocess.get('runtime', '?')}")
    served_runs = [r for r in runs if r["target"] == SERVICE]
    if served_runs:
        errors = sum(sum(r["errors"].values()) for r in served_runs)
        add("errors (non-2xx and socket) at every service point", errors, "== 0", errors == 0,
            f"{len(served_runs)} points")
    for upload in ("224x224", "full-res"):
        run = find(runs, SERVICE, upload, top)
        memory = run.get("memory") if run else None
        if memory:
            extra = "".join(f", {k[:3].upper()} {memory[k]:.0f} MB" for k in ("pss_mb", "uss_mb") if k in memory)
            add(f"service memory, RSS summed over its processes, {upload}, c={top} (MB)",
                memory["rss_mb"], "reported", bool(memory["processes"]),
                f"{len(memory['processes'])} processes{extra} (per process: above)")

    # -- earlier targets and readings -------------------------------------------------------------------------
    group = "info"
    for upload in ("224x224", "full-res"):
        ratio(f"service/LitServe req/s, {upload}, c={top} (earlier target)", rps(SERVICE, upload),
              rps("litserve", upload), 2.0, "the issue-13 target")
    ratio(f"service/HTTP ceiling req/s, 224x224, c={top}", rps(SERVICE, "224x224"), rps("ceiling", "224x224"),
          0.5, "ceiling: FastAPI endpoint that reads the upload and returns a constant")
    size = f"{inprocess['input_size']}x{inprocess['input_size']}-input model" if inprocess else "the model"
    ratio(f"batching on/off req/s, 224x224 upload, {size}, c={top}", rps(SERVICE, "224x224"),
          rps("nobatch", "224x224"), 1.5, f"max batch {max_batch} vs 1, same runtime, same everything else")
    for upload in ("224x224", "full-res"):
        ratio(f"service/naive model.predict server req/s, {upload}, c={top}", rps(SERVICE, upload),
              rps("naive", upload), 20.0, "naive: FastAPI endpoint calling Keras model.predict per request")
    for upload, both in (ceilings or {}).get("uploads", {}).items():
        one = both["one_thread"]
        ratio(f"service / one-thread in-process ceiling, {upload}, c={top}", rps(SERVICE, upload),
              one["images_per_s"], None, f"ceiling {one['images_per_s']:.1f} images/s, one process, one thread")
    for upload, figures in (inprocess or {}).get("uploads", {}).items():
        ratio(f"service / gate-free sequential in-process images/s, {upload}, c={top}",
              rps(SERVICE, upload), figures["images_per_s"], None,
              f"{figures['images_per_s']:.1f} images/s, no gate, one thread, batch {inprocess['batch_size']}")
    # the same ratios per server CPU-second: the reading to trust when other work took much of the machine
    for upload in ("224x224", "full-res"):
        for other, goal in (("litserve", 2.0), ("nobatch", 1.5), ("naive", 20.0)):
            mine, theirs = find(runs, SERVICE, upload, top), find(runs, other, upload, top)
            if mine and theirs and per_cpu(theirs):
                add(f"per server CPU-s: service/{other}, {upload}, c={top}",
                    per_cpu(mine) / per_cpu(theirs), f">= {goal}", None,
                    f"{per_cpu(mine):.1f} vs {per_cpu(theirs):.1f} requests per CPU-second")
    nobatch = [r for r in runs if r["target"] == "nobatch"]
    if nobatch:
        add("errors (non-2xx and socket) at every nobatch point", sum(sum(r["errors"].values())
                                                                               for r in nobatch), "== 0", None,
            f"{len(nobatch)} points")
    return out


def print_targets(targets: list[dict]) -> None:
    for group, title in (("target", "TARGETS (issue 23)"), ("info", "info: earlier targets and other readings")):
        rows = [t for t in targets if t.get("group", "info" if t["met"] is None else "target") == group]
        if not rows:
            continue
        print(f"\n{title}")
        for t in rows:
            verdict = "info" if t["met"] is None else ("MET" if t["met"] else "MISSED")
            print(f"{t['name']:<72}{t['value']:>9}  target {t['target']:<9} {verdict:<7} {t['note']}")
