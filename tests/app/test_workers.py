"""CXR_WORKERS: parsing, ``auto`` (affinity, cgroup v2 quota, GPU), the per-worker thread share, and the rate-limit
buckets shared by workers. Real processes with several workers: tests/app/test_multiworker.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.access.ratelimit import RateLimitedError, RateLimiter, SharedRateLimiter, rate_limiter
from app.settings import Settings, SettingsError
from app.workers import AUTO_MAX, WorkerPlan, cpu_quota, gpu_wanted, parse_workers, plan_workers, share_environment


@pytest.mark.parametrize(("given", "expected"), [("auto", "auto"), (" AUTO ", "auto"), ("1", 1), ("64", 64), (3, 3)])
def test_workers_accepts_auto_and_1_to_64(given, expected):
    assert parse_workers(given) == expected


@pytest.mark.parametrize("given", ["0", "65", "-1", "two", "", "1.5"])
def test_workers_refuses_anything_else_saying_what_is_right(given, monkeypatch):
    with pytest.raises(ValueError, match="auto or an integer 1-64"):
        parse_workers(given)
    monkeypatch.setenv("CXR_WORKERS", given)
    with pytest.raises(SettingsError, match="CXR_WORKERS"):
        Settings.load()


def test_auto_is_the_default(monkeypatch):
    monkeypatch.delenv("CXR_WORKERS", raising=False)
    assert Settings().workers == "auto"


def _cgroup(tmp_path: Path, levels: dict[str, str], own: str = "/kubepods/pod1/ctr") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for folder, cpu_max in levels.items():
        (root / folder.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (root / folder.lstrip("/") / "cpu.max").write_text(cpu_max + "\n")
    (root / own.lstrip("/")).mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::{own}\n")
    return root, proc


def test_quota_is_read_from_the_process_cgroup(tmp_path):
    root, proc = _cgroup(tmp_path, {"/kubepods/pod1/ctr": "250000 100000"})
    assert cpu_quota(root, proc) == 2.5


def test_the_smallest_quota_on_the_way_up_wins(tmp_path):
    root, proc = _cgroup(tmp_path, {"/kubepods/pod1/ctr": "max 100000", "/kubepods/pod1": "150000 100000",
                                    "/kubepods": "800000 100000"})
    assert cpu_quota(root, proc) == 1.5


def test_no_quota_max_missing_file_or_garbage_is_none(tmp_path):
    root, proc = _cgroup(tmp_path, {"/kubepods/pod1/ctr": "max 100000", "/kubepods": "garbage"})
    assert cpu_quota(root, proc) is None
    assert cpu_quota(tmp_path / "nowhere", tmp_path / "no_proc_file") is None


def test_a_container_at_the_namespace_root_reads_the_root_cpu_max(tmp_path):
    root, proc = _cgroup(tmp_path, {"/": "200000 100000"}, own="/")
    assert cpu_quota(root, proc) == 2.0


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 2), (6, 6), (AUTO_MAX, AUTO_MAX), (96, AUTO_MAX)])
def test_auto_is_the_usable_cpus_capped(cores, expected, tmp_path):
    plan = plan_workers("auto", "cpu", "auto", cores=cores, environ={}, nvidia_device=tmp_path / "none")
    assert plan.workers == expected and plan.cores == cores
    assert plan.reason.startswith("auto:") and (("capped" in plan.reason) == (cores > AUTO_MAX))


def test_auto_counts_the_quota_rounded_down(monkeypatch):
    from app import workers

    monkeypatch.setattr(workers, "cpu_quota", lambda: 2.5)
    monkeypatch.setattr(workers.os, "sched_getaffinity", lambda _pid: set(range(16)))
    plan = plan_workers("auto", "cpu", "auto")
    assert (plan.workers, plan.cores) == (2, 2) and "cgroup quota 2.5" in plan.reason
    monkeypatch.setattr(workers, "cpu_quota", lambda: 0.5)  # half a CPU: still one worker
    assert plan_workers("auto", "cpu", "auto").workers == 1


@pytest.mark.parametrize(("asked", "environ", "nvidia", "why"), [
    (("gpu", "auto"), {}, False, "CXR_DEVICE=gpu"),
    (("auto", "keras-fp16"), {}, False, "CXR_RUNTIME=keras-fp16"),
    (("auto", "auto"), {"CUDA_VISIBLE_DEVICES": "0"}, False, "CUDA_VISIBLE_DEVICES=0"),
    (("auto", "auto"), {}, True, "NVIDIA device"),
])
def test_auto_is_one_worker_where_a_gpu_is_used(tmp_path, asked, environ, nvidia, why):
    device_file = tmp_path / "nvidia0"
    if nvidia:
        device_file.touch()
    plan = plan_workers("auto", *asked, cores=16, environ=environ, nvidia_device=device_file)
    assert plan.workers == 1 and why in plan.reason


def test_no_gpu_when_it_is_hidden_or_cpu_is_asked_for(tmp_path):
    device_file = tmp_path / "nvidia0"
    device_file.touch()
    assert gpu_wanted("auto", "auto", {"CUDA_VISIBLE_DEVICES": ""}, device_file) is None
    assert gpu_wanted("auto", "auto", {"CUDA_VISIBLE_DEVICES": "-1"}, device_file) is None
    assert gpu_wanted("cpu", "keras-fp16", {"CUDA_VISIBLE_DEVICES": "0"}, device_file) is None


def test_an_explicit_number_is_kept_even_with_a_gpu(tmp_path):
    plan = plan_workers(3, "gpu", "auto", cores=2, environ={}, nvidia_device=tmp_path / "none")
    assert (plan.workers, plan.reason) == (3, "CXR_WORKERS=3")


def test_each_worker_gets_a_fair_share_of_the_cores_unless_set():
    plan = WorkerPlan(workers=3, cores=8, reason="")
    assert share_environment(plan, {}) == {"CXR_DECODE_THREADS": "2", "TF_NUM_INTRAOP_THREADS": "2"}
    assert share_environment(plan, {"TF_NUM_INTRAOP_THREADS": "4"}) == {"CXR_DECODE_THREADS": "2"}
    assert share_environment(WorkerPlan(4, 2, ""), {}) == {"CXR_DECODE_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"}


def test_the_rate_limit_is_shared_through_the_run_directory(tmp_path):
    assert isinstance(rate_limiter("2/minute", None), RateLimiter)
    assert rate_limiter(None, tmp_path) is None
    one, two = (rate_limiter("2/minute", tmp_path) for _ in range(2))  # two workers' limiters, one file
    assert isinstance(one, SharedRateLimiter) and isinstance(two, SharedRateLimiter)
    one.check("key:a", now=100.0)
    two.check("key:a", now=100.0)
    with pytest.raises(RateLimitedError) as refused:
        one.check("key:a", now=100.5)
    assert refused.value.retry_after == pytest.approx(29.5)
    two.check("key:b", now=100.5)  # another caller keeps its own bucket
    one.check("key:a", now=130.0)  # one token back after 30 s, whichever worker asks
    with pytest.raises(RateLimitedError):
        two.check("key:a", now=130.0)


@pytest.mark.parametrize("flag", ["0", "65", "many"])
def test_cxr_serve_refuses_a_bad_worker_count_with_exit_status_2(flag, capsys):
    from app.cli import main

    assert main(["--workers", flag]) == 2
    error = capsys.readouterr().err
    assert "cxr-serve: invalid configuration" in error and "CXR_WORKERS" in error and "auto or an integer 1-64" in error


def test_the_flag_takes_auto_and_numbers():
    assert Settings.load(workers="auto").workers == "auto"
    assert Settings.load(workers="4").workers == 4
