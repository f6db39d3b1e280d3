"""Portable fast paths (mss.platform): with every capability taken away (monkeypatched, or through
MSS_DISABLE_FAST_PATHS) the fallbacks give the same batches and the same measurements, log once per process, and
the real `python -m mss.train` still runs."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mss.platform
from mss.audio import pcm16
from mss.data.batch_pool import tune_worker_allocator
from mss.data.datamodule import MSSDataModule
from mss.platform import allocator, fileio, process
from tests.conftest import TINY_TRAIN

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture
def fresh_log(monkeypatch, caplog):
    """No fallback logged yet in this process; returns ``count(name)``: the log lines naming fast path ``name``."""
    monkeypatch.setattr(mss.platform, "_logged", set())
    monkeypatch.delenv(mss.platform.ENV, raising=False)
    caplog.set_level(logging.INFO, logger="mss.platform")
    return lambda name: sum(f"fast path '{name}' unavailable" in r.getMessage() for r in caplog.records)


def take_capabilities_away(monkeypatch, tmp_path):
    """The platform without pread/preadv, shared memory, glibc and /proc."""
    monkeypatch.delattr(os, "pread")
    monkeypatch.delattr(os, "preadv")

    def no_shared_memory(self):
        raise RuntimeError("shared memory is not available here")

    monkeypatch.setattr(torch.UntypedStorage, "share_memory_", no_shared_memory)
    monkeypatch.setattr(allocator, "LIBC", "libc-missing.so.6")
    monkeypatch.setattr(process, "PROC", tmp_path / "no-proc")
    monkeypatch.setattr(pcm16, "_WAV_LAYOUTS", {})  # headers parsed again, with the fallback reads


def test_switch_names_are_checked(monkeypatch):
    monkeypatch.setenv(mss.platform.ENV, "pread, proc")
    assert mss.platform.disabled("pread") and mss.platform.disabled("proc") and not mss.platform.disabled("glibc")
    monkeypatch.setenv(mss.platform.ENV, "all")
    assert all(mss.platform.disabled(n) for n in mss.platform.NAMES)
    monkeypatch.setenv(mss.platform.ENV, "pread,mmap")
    with pytest.raises(ValueError, match=r"MSS_DISABLE_FAST_PATHS='pread,mmap'.*\['mmap'\].*shm_pool"):
        mss.platform.disabled("pread")


def test_read_at_without_pread_reads_the_same_bytes(tmp_path, monkeypatch, fresh_log):
    data = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8)
    path = tmp_path / "f.bin"
    path.write_bytes(data.tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        cases = [(0, 10), (12_345, 50_000), (99_990, 100)]  # the last one crosses the end of the file
        fast = [(fileio.read_at(fd, off, buf := np.zeros(n, np.uint8)), buf) for off, n in cases]
        assert fresh_log("pread") == 0
        monkeypatch.delattr(os, "pread")
        monkeypatch.delattr(os, "preadv")
        for (off, n), (got, buf) in zip(cases, fast):
            assert fileio.read_at(fd, off, out := np.zeros(n, np.uint8)) == got == min(n, data.size - off)
            assert np.array_equal(out, buf) and np.array_equal(buf[:got], data[off:off + got])
            assert fileio.read_bytes(fd, n, off) == data[off:off + n].tobytes()
    finally:
        os.close(fd)
    assert fresh_log("pread") == 1


@pytest.mark.parametrize("workers,int16", [(0, True), (2, True), (2, False)])
def test_fallback_batches_equal_the_fast_ones(synth_root, tmp_path, monkeypatch, fresh_log, workers, int16):
    """Training batches (int16, or float32 as with repitch; in-process and from worker processes, which inherit the
    patched platform) are the same with every capability missing; each fallback is logged once."""
    if not int16:
        monkeypatch.setattr(MSSDataModule, "int16_batches", lambda self: False)

    def batches():
        dm = MSSDataModule(root=str(synth_root), sources=SOURCES, valid_tracks="valid_tracks.txt", segment=0.5,
                           batch_size=2, samples_per_epoch=12, cache_dir=str(tmp_path / "cache"),
                           num_workers=workers, seed=5)
        dm.setup("fit")
        return [b.clone() for b in dm.train_dataloader()]

    fast = batches()
    assert len(fast) == 6 and fast[0].dtype == (torch.int16 if int16 else torch.float32)
    assert not any(fresh_log(n) for n in mss.platform.NAMES)  # the fast paths were taken
    take_capabilities_away(monkeypatch, tmp_path)
    slow = batches()
    assert all(torch.equal(a, b) for a, b in zip(fast, slow, strict=True))
    # read in this process: the headers when checking for int16 batches, and every batch without workers
    assert fresh_log("pread") == (1 if int16 or not workers else 0)
    assert fresh_log("shm_pool") == (1 if workers else 0)  # the pool is only used by workers


def test_allocator_tuning_without_glibc_is_a_logged_no_op(monkeypatch, fresh_log):
    tune_worker_allocator(0)
    allocator.release_memory()
    assert allocator.glibc() is not None and fresh_log("glibc") == 0
    monkeypatch.setattr(allocator, "LIBC", "libc-missing.so.6")
    tune_worker_allocator(0)
    allocator.release_memory()
    assert allocator.glibc() is None and fresh_log("glibc") == 1


PEAK_SCRIPT = """
import sys, torch
sys.path.insert(0, {repo!r})
from scripts._memory import PeakMemory, trim
trim()
with PeakMemory("cpu") as mem:
    x = torch.ones(256 * 2**20 // 4)  # 256 MiB, touched
print(mem.peak)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the fast path needs Linux /proc")
def test_peak_memory_without_proc_measures_the_same(tmp_path, monkeypatch, fresh_log):
    """The benchmarks' peak-memory figure from /proc, and with /proc and glibc disabled (ru_maxrss + psutil; in a
    fresh process the block raises the lifetime peak, so the figure is known), agree; with no resident size at all
    it is None with a note, and the CPU time of a process falls back to psutil, then to None."""
    def peak(env):
        # started by a shell, not by pytest: on Linux a process's lifetime peak counts its parent's resident size
        cmd = ["sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", PEAK_SCRIPT.format(repo=str(REPO))]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout.split()[-1]

    psutil = importlib.util.find_spec("psutil") is not None  # optional: the resident size without /proc
    fast, slow = peak({}), peak({mss.platform.ENV: "proc,glibc"})
    mib = 256 * 2**20
    assert abs(int(fast) - mib) < 0.1 * mib, fast
    assert abs(int(slow) - mib) < 0.1 * mib if psutil else slow == "None", slow

    from scripts._memory import PeakMemory

    cpu = process.cpu_seconds(os.getpid())
    assert cpu is not None and fresh_log("proc") == 0
    monkeypatch.setattr(process, "PROC", tmp_path / "no-proc")
    if psutil:
        assert process.cpu_seconds(os.getpid()) == pytest.approx(cpu, abs=5.0)
        with PeakMemory("cpu") as mem:  # below the test process's earlier peak, which cannot be restarted
            pass
        assert mem.peak is None and "earlier peak" in mem.note
    monkeypatch.setitem(sys.modules, "psutil", None)  # not installed
    assert process.rss() is None and process.cpu_seconds(os.getpid()) is None
    with PeakMemory("cpu") as mem:
        pass
    assert mem.peak is None and "no resident memory size" in mem.note
    assert fresh_log("proc") == 1


def test_train_cli_runs_with_every_fast_path_disabled(synth_root, tmp_path):
    """`python -m mss.train` (tiny U-Net, one loader worker, test-set evaluation) where none of the fast paths
    exist: it succeeds, and each fallback it meets is logged once per process (pread and the pool decision in the
    main process, the allocator tuning in the loader worker and, for validation's inference, in the main process;
    /proc is only read by the benchmarks)."""
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", f"data.root={synth_root}", "data.synth=null",
            f"paths.cache_dir={tmp_path / 'cache'}", *[o for o in TINY_TRAIN if o != "data.num_workers=0"],
            "data.num_workers=1"]
    env = {**os.environ, mss.platform.ENV: "all",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-m", "mss.train", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"mss.train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert (run_dir / "checkpoints" / "best.ckpt").is_file() and (run_dir / "eval" / "results.csv").is_file()
    log = (run_dir / "train.log").read_text()
    for name, processes in (("pread", 1), ("shm_pool", 1), ("glibc", 2)):
        assert log.count(f"fast path '{name}' unavailable (MSS_DISABLE_FAST_PATHS)") == processes, (name, log[-3000:])
