"""Pinning a worker per CPU (app/pinning.py): when the supervisor asks for it, the threads a worker has and
starts later stay on its CPU, while the lone image's every-core interpreter keeps every CPU. Affinity is
changed in child processes only, never in the test process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.pinning import PIN_ENV, Placement, pin_worker, plan_pinning, started_cpu_count

REPO = Path(__file__).resolve().parents[2]
CPUS = sorted(os.sched_getaffinity(0))
two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="pinning needs at least two usable CPUs")


def run_child(code: str, **env: str) -> dict:
    """Runs ``code`` in a fresh Python (it prints one JSON line last) and returns what it printed."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **env}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pinned_only_with_a_worker_per_cpu_of_the_mask_each_one_cpus_share_and_the_setting_on(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 1})
    assert plan_pinning(2, 1, True) == "1,3"  # in slot order: ascending CPU ids
    assert plan_pinning(2, 1, False) is None  # CXR_PIN_WORKERS=false
    assert plan_pinning(1, 1, True) is None  # one process: nothing to keep apart
    assert plan_pinning(2, 2, True) is None  # a worker with two decode threads would be squeezed onto one CPU
    assert plan_pinning(3, 1, True) is None  # more workers than CPUs: a quota or an explicit count; the kernel's
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert plan_pinning(2, 1, True) is None  # a quota of two CPUs out of four: which two is not ours to choose


def test_without_the_supervisors_list_or_beyond_it_a_worker_is_not_pinned():
    before = os.sched_getaffinity(0)
    assert pin_worker(0, {}) is None
    assert pin_worker(-1, {PIN_ENV: "0"}) is None  # one process (no slot)
    assert pin_worker(2, {PIN_ENV: "0,1"}) is None  # more workers than listed CPUs
    assert os.sched_getaffinity(0) == before and started_cpu_count() is None


@two_cpus
def test_a_pinned_worker_keeps_its_threads_old_and_new_on_its_cpu_and_every_cpu_threads_get_them_all():
    out = run_child("""
        import json, os, threading
        from app.pinning import every_cpu, pin_worker, started_cpu_count

        def mask_of_new_thread():
            seen = []
            thread = threading.Thread(target=lambda: seen.append(sorted(os.sched_getaffinity(0))))
            thread.start(); thread.join()
            return seen[0]

        release = threading.Event()
        masks = {}
        early = threading.Thread(target=lambda: (release.wait(), masks.update(early=sorted(os.sched_getaffinity(0)))))
        early.start()  # a thread that existed before the worker pinned itself
        cpu = pin_worker(1)
        release.set(); early.join()
        with every_cpu():
            wide = mask_of_new_thread()
        print(json.dumps({"cpu": cpu, "main": sorted(os.sched_getaffinity(0)), "early": masks["early"],
                          "later": mask_of_new_thread(), "wide": wide, "count": started_cpu_count()}))
    """, **{PIN_ENV: ",".join(map(str, CPUS))})
    assert out["cpu"] == CPUS[1]
    assert out["main"] == out["early"] == out["later"] == [CPUS[1]]
    assert out["wide"] == CPUS and out["count"] == len(CPUS)


@two_cpus
def test_the_int8_runtime_of_a_pinned_worker_keeps_its_every_core_predict_on_every_core(shipped_model: Path):
    out = run_child(f"""
        import json, os
        import numpy as np
        from app.pinning import pin_worker
        from app.runtimes import lite
        from model_store.artifact import load_artifact

        pin_worker(0)
        before = set(os.listdir("/proc/self/task"))
        artifact = load_artifact({str(shipped_model)!r})
        shape = artifact.metadata.preprocessing.input_shape
        runtime = lite.TFLiteInt8Runtime(lite.convert_int8(artifact.model), shape, [1, 2, 4, 8, 16], threads=1)
        x = np.random.default_rng(1).random((3, *shape), dtype=np.float32)
        masks = []
        for task in set(os.listdir("/proc/self/task")) - before:
            try:
                masks.append(sorted(os.sched_getaffinity(int(task))))
            except ProcessLookupError:
                pass
        print(json.dumps({{"wide": runtime.wide is not None, "same": bool(np.array_equal(runtime.wide(x),
                          runtime.predict(x))), "main": sorted(os.sched_getaffinity(0)), "masks": masks}}))
    """, **{PIN_ENV: ",".join(map(str, CPUS)), "TF_NUM_INTRAOP_THREADS": "1"})
    assert out["wide"] and out["same"], "a pinned worker lost the every-core predict of a lone image"
    assert out["main"] == [CPUS[0]]
    assert CPUS in out["masks"], f"no thread of the wide interpreter may use every CPU: {out['masks']}"


def test_placement_does_nothing_in_a_worker_that_is_not_pinned():
    placement = Placement(lambda: 5, lambda: False)
    assert not placement.active
    placement.update()
    assert not placement.spread and placement.spread_cpus() == 0


@two_cpus
def test_a_pinned_worker_alone_with_work_spreads_over_every_cpu_and_pins_again_when_others_work_or_it_idles():
    out = run_child("""
        import json, os, threading
        from app.pinning import Placement, every_cpu, pin_worker

        stop = threading.Event()
        def masks():
            return sorted({tuple(sorted(os.sched_getaffinity(int(t)))) for t in os.listdir("/proc/self/task")})

        worker = threading.Thread(target=stop.wait)
        worker.start()  # a thread of the worker's own, started before it pinned itself below
        pin_worker(0)
        go = threading.Event()
        def starter():  # a pinned thread that starts one of its own while the pool is being made
            go.wait()
            threading.Thread(target=stop.wait).start()
        side = threading.Thread(target=starter)
        side.start()
        with every_cpu():
            pool = threading.Thread(target=stop.wait)
            pool.start()
            go.set()
            side.join()
        pool_tid = pool.native_id
        mine, others = [3], [False]
        placement = Placement(lambda: mine[0], lambda: others[0], settle=2)
        seen, cpus = {"pinned": masks()}, {"pinned": placement.spread_cpus()}
        placement.update()
        seen["alone with work once"] = masks()
        cpus["alone with work once"] = placement.spread_cpus()
        placement.update()
        seen["alone with work"] = masks()
        cpus["alone with work"] = placement.spread_cpus()
        others[0] = True
        placement.update()
        others[0] = False
        placement.update()
        seen["others worked once"] = masks()  # a peer's count read between two of its requests: no change
        cpus["others worked once"] = placement.spread_cpus()
        others[0] = True
        placement.update()
        placement.update()
        seen["others work"] = masks()
        cpus["others work"] = placement.spread_cpus()
        others[0] = False
        placement.update()
        placement.update()
        seen["alone again"] = masks()
        cpus["alone again"] = placement.spread_cpus()
        mine[0] = 0
        placement.update()
        placement.update()
        seen["idle"] = masks()
        cpus["idle"] = placement.spread_cpus()
        seen["pool"] = sorted(os.sched_getaffinity(pool_tid))
        seen["cpus"] = cpus
        stop.set()
        print(json.dumps(seen))
    """, **{PIN_ENV: ",".join(map(str, CPUS))})
    every, own = CPUS, [CPUS[0]]
    assert out["pinned"] == out["alone with work once"] == sorted([own, every])  # the every-core pool apart
    # every thread spreads, the one a pinned thread started during every_cpu() included
    assert out["alone with work"] == out["others worked once"] == out["alone again"] == [every]
    assert out["others work"] == out["idle"] == sorted([own, every])
    assert out["pool"] == every
    # the data plane's decode threads follow: a thread per CPU while spread (app/dataplane.py)
    assert out["cpus"] == {"pinned": 0, "alone with work once": 0, "alone with work": len(every),
                           "others worked once": len(every), "others work": 0, "alone again": len(every), "idle": 0}


def test_a_cpu_the_worker_may_not_use_leaves_it_unpinned_and_says_so():
    out = run_child("""
        import json, logging, os
        from app.pinning import Placement, log, pin_worker

        said = []
        log.addHandler(type("Keep", (logging.Handler,), {"emit": lambda self, r: said.append(r.getMessage())})())
        before = sorted(os.sched_getaffinity(0))
        cpu = pin_worker(0)  # the supervisor's list names a CPU outside this process's mask
        print(json.dumps({"cpu": cpu, "same": sorted(os.sched_getaffinity(0)) == before,
                          "active": Placement(lambda: 1, lambda: False).active, "said": said}))
    """, **{PIN_ENV: "4095"})
    assert (out["cpu"], out["same"], out["active"]) == (None, True, False)
    assert len(out["said"]) == 1 and out["said"][0].startswith("worker not pinned to CPU 4095: "), out["said"]
