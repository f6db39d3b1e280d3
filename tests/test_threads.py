"""mss.platform.threads: free cores from the runnable count (bounds, fallbacks), the thread budget that BSS Eval runs
under, the OpenMP wait policy set only before torch starts, and the benchmark's bounded busy processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

import mss.platform
from mss.metrics.bss_eval import v4
from mss.platform import threads

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def machine(monkeypatch, tmp_path, caplog):
    """A 4-core machine whose ``/proc/loadavg`` says ``running`` runnable threads: ``set(running)``; returns the
    number of fallback log lines so far as ``set.logged()``."""
    monkeypatch.setattr(mss.platform, "_logged", set())
    monkeypatch.delenv(mss.platform.ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads, "SAMPLE_GAP", 0.0)
    path = tmp_path / "loadavg"
    monkeypatch.setattr(threads, "LOADAVG", path)
    caplog.set_level(logging.INFO, logger="mss.platform")

    def set_running(running: int) -> None:
        path.write_text(f"0.50 0.40 0.30 {running}/321 4567\n")

    set_running.path = path
    set_running.logged = lambda: sum("fast path 'threads' unavailable" in r.getMessage() for r in caplog.records)
    return set_running


@pytest.mark.parametrize(("running", "free"), [(1, 4), (0, 4), (2, 3), (4, 1), (5, 1), (40, 1)])
def test_free_cores_counts_the_other_runnable_threads_within_bounds(machine, running, free):
    machine(running)  # the reader itself is one of them
    assert threads.free_cores() == free
    assert machine.logged() == 0


def test_free_cores_is_bounded_by_the_affinity_not_the_machine(machine, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 3})
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    machine(1)
    assert threads.cores() == 2 and threads.free_cores() == 2
    machine(14)  # 13 others on a 16-core machine: 3 free, of which this process may use 2
    assert threads.free_cores() == 2
    machine(16)
    assert threads.free_cores() == 1


def test_free_cores_takes_the_median_of_its_samples(machine, monkeypatch):
    readings = iter(["0 0 0 1/9 1", "0 0 0 9/9 1", "0 0 0 3/9 1", "0 0 0 3/9 1", "0 0 0 1/9 1"])
    monkeypatch.setattr(type(machine.path), "read_text", lambda self: next(readings))
    assert threads.free_cores() == 2  # median 3 runnable: 2 others (the 9 was a burst)


def test_free_cores_falls_back_to_the_load_average_then_to_every_core(machine, monkeypatch):
    machine.path.unlink(missing_ok=True)  # no /proc/loadavg
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 1.0, 1.0))
    assert threads.free_cores() == 1  # 4 cores - round(2.6)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 1.0, 1.0))
    assert threads.free_cores() == 4
    monkeypatch.setattr(os, "getloadavg", lambda: (99.0, 1.0, 1.0))
    assert threads.free_cores() == 1
    monkeypatch.delattr(os, "getloadavg")  # Windows
    assert threads.free_cores() == 4
    assert machine.logged() == 1  # once per process


def test_malformed_loadavg_falls_back(machine, monkeypatch):
    machine.path.write_text("garbage\n")
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 1.0, 1.0))
    assert threads.free_cores() == 1 and machine.logged() == 1


def test_cores_without_affinity_is_the_cpu_count(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert threads.cores() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert threads.cores() == 1


def test_switch_gives_every_core(machine, monkeypatch):
    machine(40)
    monkeypatch.setenv(mss.platform.ENV, "threads")
    assert threads.free_cores() == 4 and machine.logged() == 1


def _blas_threads() -> set[int]:
    return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}


def test_thread_budget_sets_torch_and_blas_and_restores(monkeypatch):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(threads, "free_cores", lambda: 1)
        with threads.thread_budget() as n:
            assert n == 1 and torch.get_num_threads() == 1 and _blas_threads() == {1}
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(threads, "free_cores", lambda: 8)  # never more than the caller allowed
        with threads.thread_budget() as n:
            assert n == 2 and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="boom"), threads.thread_budget(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_bss_eval_runs_on_the_free_cores(monkeypatch):
    """The passes run under the budget (one thread when one core is free) and the caller's count comes back."""
    seen = []
    real_filters = v4.filters

    def spy(*args, **kwargs):
        seen.append((torch.get_num_threads(), _blas_threads()))
        return real_filters(*args, **kwargs)

    monkeypatch.setattr(v4, "filters", spy)
    monkeypatch.setattr(threads, "free_cores", lambda: 1)
    rng = np.random.default_rng(0)
    refs = np.round(rng.standard_normal((2, 8000, 2)) * 3000) / 32768
    ests = refs + 0.1 * rng.standard_normal(refs.shape)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        sdr, isr, sir, sar = v4.bss_eval_v4(refs, ests, 4000, 4000, filters_len=16)
        assert seen == [(1, {1})]
        assert torch.get_num_threads() == 2
        assert np.isfinite(sar.numpy()).all()
    finally:
        torch.set_num_threads(before)


def test_configure_waiting_only_before_torch(monkeypatch, caplog):
    monkeypatch.setattr(mss.platform, "_logged", set())
    monkeypatch.delenv(mss.platform.ENV, raising=False)
    caplog.set_level(logging.INFO, logger="mss.platform")
    env: dict = {}
    assert "torch" in sys.modules
    assert threads.configure_waiting(env) is False and env == {}  # too late: the runtime read its policy already
    assert "torch was imported before mss" in caplog.text
    monkeypatch.delitem(sys.modules, "torch")
    assert threads.configure_waiting(env) is True and env == threads.WAIT_ENV
    env = {"OMP_WAIT_POLICY": "active"}  # the user's choice wins
    assert threads.configure_waiting(env) is False and env == {"OMP_WAIT_POLICY": "active", "KMP_BLOCKTIME": "0"}
    env = {}
    monkeypatch.setenv(mss.platform.ENV, "threads")
    assert threads.configure_waiting(env) is False and env == {}


def _child(code: str, **env) -> str:
    base = {k: v for k, v in os.environ.items() if k not in (*threads.WAIT_ENV, mss.platform.ENV)}
    out = subprocess.run([sys.executable, "-c", code], env={**base, "PYTHONPATH": str(REPO), **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_mss_sets_passive_waiting_for_the_runtime_and_children():
    show = "import os; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('KMP_BLOCKTIME'))"
    assert _child(f"import mss; {show}") == "PASSIVE 0"
    assert _child(f"import mss; import subprocess, sys; subprocess.run([sys.executable, '-c', {show!r}])") == \
        "PASSIVE 0"  # spawned workers inherit it
    assert _child(f"import torch, mss; {show}") == "None None"
    assert _child(f"import mss; {show}", OMP_WAIT_POLICY="ACTIVE") == "ACTIVE 0"
    assert _child(f"import mss; {show}", MSS_DISABLE_FAST_PATHS="threads") == "None None"


def test_bench_busy_processes_are_bounded_and_killed():
    sys.path.insert(0, str(REPO))
    from scripts.bench_eval import busy_processes

    with busy_processes(2, 60.0) as procs:
        assert len(procs) == 2 and all(p.poll() is None for p in procs)
    assert all(p.poll() is not None for p in procs)  # killed on exit
    with busy_processes(1, 0.2) as procs:
        deadline = time.monotonic() + 30
        while procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert procs[0].returncode == 0  # ended by itself
