"""Resident memory and CPU time of processes, for the benchmarks: Linux ``/proc`` where it is readable, else
``resource.getrusage`` (POSIX; peak only) and ``psutil`` when it is installed, else ``None`` (the caller prints
n/a). Sizes in bytes, times in seconds.

Without ``/proc`` the peak cannot be restarted (:func:`reset_peak_rss` returns ``False``): a measurement then only
knows a block's peak when the block raised the process's lifetime peak (see ``scripts/_memory.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mss.platform import disabled, fallback

PROC = Path("/proc")
_INSTEAD = "resource.getrusage / psutil (peak resident memory cannot be restarted)"


def _proc(path: str) -> Path | None:
    """``PROC / path`` when ``/proc`` is used (logs the fallback once otherwise)."""
    if disabled("proc"):
        fallback("proc", "MSS_DISABLE_FAST_PATHS", _INSTEAD)
        return None
    if not (PROC / "self" / "status").is_file():
        fallback("proc", f"{PROC}/self/status not found", _INSTEAD)
        return None
    return PROC / path


def _status(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status``, in bytes."""
    if (path := _proc("self/status")) is None:
        return None
    for line in path.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return None


def _psutil():
    try:
        import psutil
    except ImportError:
        return None
    return psutil


def rss() -> int | None:
    """This process's resident set size now."""
    if (value := _status("VmRSS")) is not None:
        return value
    psutil = _psutil()
    return None if psutil is None else int(psutil.Process().memory_info().rss)


def peak_rss() -> int | None:
    """This process's peak resident set size (since start, or since :func:`reset_peak_rss`)."""
    if (value := _status("VmHWM")) is not None:
        return value
    try:
        import resource
    except ImportError:  # Windows
        resource = None
    if resource is not None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB elsewhere
    psutil = _psutil()
    info = None if psutil is None else psutil.Process().memory_info()
    return getattr(info, "peak_wset", None)  # Windows' peak working set; psutil has no peak elsewhere


def reset_peak_rss() -> bool:
    """Restart the peak count of :func:`peak_rss` at the current resident size (Linux >= 4.0: ``clear_refs``);
    ``False`` where it cannot be restarted."""
    if (path := _proc("self/clear_refs")) is None:
        return False
    try:
        path.write_text("5")
    except OSError:
        return False
    return True


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and its finished children (e.g. ffmpeg), or ``None``."""
    if (path := _proc(f"{pid}/stat")) is not None:
        try:
            fields = path.read_text().rsplit(")", 1)[1].split()
            return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return None
    psutil = _psutil()
    if psutil is None:
        return None
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
