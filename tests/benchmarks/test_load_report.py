"""The load benchmark's target computation, from a synthetic run (no servers, no model)."""

from __future__ import annotations

from benchmarks.ceilings import summarize
from benchmarks.load_report import compute_targets, cpu_ms_per_request


def run(target: str, upload: str, conc: int, rps: float, *, p50: float = 5.0, cpu_ms: float = 3.0,
        errors: dict[str, int] | None = None) -> dict:
    return {"target": target, "upload": upload, "concurrency": conc, "rps": rps, "ok": int(rps * 10),
            "seconds": 10.0, "p50_ms": p50, "server_cpu_cores": rps * cpu_ms / 1000,
            "server_cpu_ms_per_ok": cpu_ms, "errors": errors or {},
            "memory": {"rss_mb": 900.0, "pss_mb": 600.0, "uss_mb": 500.0,
                       "processes": [{"pid": 1, "name": "cxr-serve", "rss_mb": 900.0}]}}


def ceiling(images_per_s: float, cpu_ms: float) -> dict:
    return {"images_per_s": images_per_s, "cpu_ms_per_image": cpu_ms, "processes": 2}


CEILINGS = {"batch_size": 16, "uploads": {
    "224x224": {"one_thread": ceiling(300.0, 2.6), "all_cores": ceiling(500.0, 2.8)},
    "full-res": {"one_thread": ceiling(150.0, 6.4), "all_cores": ceiling(260.0, 7.0)}}}
INPROCESS = {"input_size": 224, "batch_size": 16, "runtime": "tflite-int8", "uploads": {
    "224x224": {"single_ms_p50": 4.0, "images_per_s": 600.0},
    "full-res": {"single_ms_p50": 7.0, "images_per_s": 160.0}}}


def runs() -> list[dict]:
    return [run("service", "224x224", 1, 150.0, p50=4.5), run("service", "224x224", 64, 320.0, cpu_ms=3.5),
            run("service", "full-res", 1, 100.0, p50=8.5), run("service", "full-res", 64, 140.0, cpu_ms=8.5,
                                                               errors={"503": 1}),
            run("litserve", "224x224", 64, 200.0), run("litserve", "full-res", 64, 60.0)]


def by_name(targets: list[dict]) -> dict[str, dict]:
    return {t["name"]: t for t in targets}


def test_issue_23_targets_from_a_synthetic_run() -> None:
    targets = by_name(compute_targets(runs(), INPROCESS, 64, 16, CEILINGS))
    assert targets["service/LitServe req/s, 224x224, c=64"] | {"note": ""} == {
        "group": "target", "name": "service/LitServe req/s, 224x224, c=64", "value": 1.6, "target": ">= 1.5",
        "met": True, "note": ""}
    assert targets["service/LitServe req/s, full-res, c=64"]["met"] is True  # 140/60 >= 2
    assert targets["service / all-cores in-process ceiling, 224x224, c=64"]["value"] == 0.64
    cpu = targets["service CPU ms/request minus in-process CPU ms/image, 224x224, c=64"]
    assert (cpu["value"], cpu["met"]) == (0.7, True)
    cpu = targets["service CPU ms/request minus in-process CPU ms/image, full-res, c=64"]
    assert (cpu["value"], cpu["met"]) == (1.5, False)
    lone = targets["p50 at c=1 minus in-process single-image latency, full-res (ms)"]
    assert (lone["value"], lone["met"]) == (1.5, False)
    assert targets["errors (non-2xx and socket) at every service point"]["met"] is False
    memory = targets["service memory, RSS summed over its processes, 224x224, c=64 (MB)"]
    assert (memory["value"], memory["met"]) == (900.0, True)


def test_earlier_ratios_are_information_only() -> None:
    targets = compute_targets(runs(), INPROCESS, 64, 16, CEILINGS)
    info = [t for t in targets if t["group"] == "info"]
    assert info and all(t["met"] is None for t in info)
    assert "service/LitServe req/s, 224x224, c=64 (earlier target)" in by_name(info)


def test_a_run_saved_without_ceilings_or_memory_still_reports() -> None:
    old = [{k: v for k, v in r.items() if k not in ("memory", "server_cpu_ms_per_ok")} for r in runs()]
    targets = by_name(compute_targets(old, INPROCESS, 64, 16, None))
    assert "service / all-cores in-process ceiling, 224x224, c=64" not in targets
    assert targets["service/LitServe req/s, 224x224, c=64"]["met"] is True
    assert round(cpu_ms_per_request(old[1]), 3) == 3.5  # from the cores used over the window


def test_summarize_sums_rates_over_workers() -> None:
    out = summarize([{"upload": "224x224", "images": 160, "cpu_s": 0.4, "wall_s": 1.0},
                     {"upload": "224x224", "images": 144, "cpu_s": 0.4, "wall_s": 0.9}])
    assert (out["processes"], out["images"], out["images_per_s"]) == (2, 304, 320.0)
    assert out["cpu_ms_per_image"] == round(800 / 304, 3)
