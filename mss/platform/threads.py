"""Thread counts from the cores actually free, passive waiting, and one thread pool at a time.

Why (measured on the 2-core development VM, BSS Eval v4 of a 30 s 4-stem stereo track, two busy processes running;
``docs/evaluation.md``): torch's OpenMP runtime here is GNU ``libgomp``, whose idle workers *spin* (by default
300 000 polls) at every barrier and between parallel regions instead of sleeping. The passes run ~2 500 short parallel
regions per 30 s track; when another process holds a core, the spinning worker and the preempted main thread take
turns on it, and a 0.9 s evaluation took 4.5-13 s wall and 4-8 CPU-seconds (``torch.set_num_threads(2)``, no
``OMP_WAIT_POLICY``), against 1.2 CPU-seconds idle. Two remedies, both here:

* **as many threads as there are free cores** (:func:`free_cores`, used by :func:`thread_budget`): with both cores
  busy the passes run on one thread, which has no barriers to spin at;
* **passive waiting** (:func:`configure_waiting`): ``OMP_WAIT_POLICY=PASSIVE`` (libgomp, LLVM/Intel OpenMP) and
  ``KMP_BLOCKTIME=0`` (Intel/LLVM OpenMP) make idle workers sleep at once. OpenMP runtimes read these **once, when
  they are loaded**, i.e. when ``torch`` is first imported: :func:`configure_waiting` sets them (``setdefault``: a
  value the user exported wins) only when ``torch`` is not imported yet; ``import mss`` calls it, so every
  ``python -m mss.train / mss.evaluate / mss.separate`` and every spawned worker (which inherits the environment) gets
  it, while a program that imported torch before mss keeps its runtime's policy (then only the thread count helps).

:func:`thread_budget` also runs BLAS (numpy's / scipy's OpenBLAS, whose pthreads pools spin after each call as well)
with the same number of threads, so the pools never hold more threads than the budget between them.

Fallback (``MSS_DISABLE_FAST_PATHS=threads``, or no ``/proc/loadavg``): :func:`free_cores` is estimated from
``os.getloadavg`` (the 1-minute load, which also counts this process's own recent work), else it is every usable core;
with the switch, it is every usable core and the environment is left alone (the behaviour before this module).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from mss.platform import disabled, fallback

__all__ = ["LOADAVG", "WAIT_ENV", "configure_waiting", "cores", "free_cores", "thread_budget", "waiting_configured"]

LOADAVG = Path("/proc/loadavg")
WAIT_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}  # read by OpenMP runtimes when they are loaded
SAMPLES, SAMPLE_GAP = 5, 0.001  # runnable-count samples of free_cores (median), seconds between them

_configured: bool | None = None  # what configure_waiting decided in this process (None: not called)


def configure_waiting(environ: dict | None = None) -> bool:
    """Set :data:`WAIT_ENV` (without overriding values already there) if no OpenMP runtime has started yet (``torch``
    not imported); returns whether the variables are now in effect for this process's runtime."""
    global _configured
    env = os.environ if environ is None else environ
    if disabled("threads"):
        fallback("threads", "MSS_DISABLE_FAST_PATHS", "every core, the OpenMP runtime's own wait policy")
        _configured = False
    elif "torch" in sys.modules:
        fallback("threads", "torch was imported before mss: its OpenMP runtime already read its wait policy",
                 "thread counts from the free cores only")
        _configured = False
    else:
        for key, value in WAIT_ENV.items():
            env.setdefault(key, value)
        _configured = env.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
    return _configured


def waiting_configured() -> bool:
    """Whether :func:`configure_waiting` put passive waiting in effect in this process."""
    return bool(_configured)


def cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform tells it, else the CPU count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _runnable() -> int | None:
    """Median over :data:`SAMPLES` readings of the number of runnable threads on the machine (``/proc/loadavg``'s
    fourth field, which counts the reader itself)."""
    counts = []
    try:
        for k in range(SAMPLES):
            if k:
                time.sleep(SAMPLE_GAP)
            counts.append(int(LOADAVG.read_text().split()[3].split("/")[0]))
    except (OSError, IndexError, ValueError):
        return None
    return int(statistics.median(counts))


def free_cores() -> int:
    """How many of :func:`cores` are not taken by other runnable threads right now, at least 1.

    Counts the runnable threads of the whole machine less the caller (so call it from the thread that will do the
    work, while its own pools are idle); from ``/proc/loadavg`` (Linux), else from the 1-minute load average, else
    every core (``MSS_DISABLE_FAST_PATHS=threads``: every core).
    """
    mine = cores()
    if disabled("threads"):
        fallback("threads", "MSS_DISABLE_FAST_PATHS", "every core, the OpenMP runtime's own wait policy")
        return mine
    total = max(mine, os.cpu_count() or mine)
    if (running := _runnable()) is not None:
        others = max(0, running - 1)
    else:
        fallback("threads", f"{LOADAVG} not readable", "the 1-minute load average")
        try:
            others = round(os.getloadavg()[0])
        except (AttributeError, OSError):  # Windows
            return mine
    return max(1, min(mine, total - others))


@contextlib.contextmanager
def thread_budget(threads: int | None = None) -> Iterator[int]:
    """Run the block with ``threads`` (default :func:`free_cores`, at most ``torch.get_num_threads()``, i.e. never
    more than the caller allowed) threads in torch's pool and in every BLAS pool; restores the previous counts after.
    Yields the count."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    n = max(1, int(threads) if threads is not None else min(free_cores(), before))
    try:
        if n != before:
            torch.set_num_threads(n)
        with threadpool_limits(n, user_api="blas"):
            yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
