"""Peak-memory measurement shared by the benchmark scripts.

On CPU: growth of the process's resident set during the block (``VmHWM`` after resetting it through
``/proc/self/clear_refs``, minus ``VmRSS`` before), i.e. every byte the block allocated and touched. On CUDA: growth
of ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import ctypes
import gc

import torch


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def trim() -> None:
    """Collect garbage and return freed heap to the OS, so that the next measurement starts from a low RSS."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakMemory:
    """``with PeakMemory(device) as mem: ...`` then ``mem.peak``: peak memory growth of the block in bytes."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.base = _status()["VmRSS"]
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.peak = _status()["VmHWM"] - self.base
