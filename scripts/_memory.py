"""Peak-memory measurement shared by the benchmark scripts.

On CPU: growth of the process's resident set during the block (peak RSS after restarting its count, minus RSS
before), i.e. every byte the block allocated and touched; through :mod:`mss.platform.process` (Linux ``/proc``:
``VmHWM`` restarted through ``clear_refs``, ``VmRSS``). Where the peak cannot be restarted (no ``/proc``: macOS,
Windows, or ``MSS_DISABLE_FAST_PATHS=proc``) the process's lifetime peak is read instead (``ru_maxrss`` / psutil):
it gives the same figure when the block raised that peak, and ``peak`` is ``None`` (``note`` says why) when the
block stayed below an earlier peak or the platform reports no resident size at all. (On Linux the lifetime peak of a
process also counts the resident size of the process that started it, at the time it was started.) On CUDA: growth
of ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import gc

from mss.platform.allocator import release_memory
from mss.platform.process import peak_rss, reset_peak_rss, rss


def trim() -> None:
    """Collect garbage and return freed heap to the OS, so that the next measurement starts from a low RSS."""
    gc.collect()
    release_memory()


class PeakMemory:
    """``with PeakMemory(device) as mem: ...`` then ``mem.peak``: peak memory growth of the block in bytes, or
    ``None`` with the reason in ``mem.note``."""

    def __init__(self, device):
        self.cuda = str(device).startswith("cuda")  # torch is imported for CUDA only (bench_eval's museval runs)
        self.peak: int | None = 0
        self.note = ""

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.restarted = reset_peak_rss()
            self.before = None if self.restarted else peak_rss()
            self.base = rss()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
            return
        peak = peak_rss()
        if peak is None or self.base is None:
            self.peak, self.note = None, "this platform reports no resident memory size (no /proc, no psutil)"
        elif self.restarted or (self.before is not None and peak > self.before):
            self.peak = peak - self.base
        else:
            self.peak, self.note = None, ("the block stayed below the process's earlier peak, which cannot be "
                                          "restarted here (no /proc)")
