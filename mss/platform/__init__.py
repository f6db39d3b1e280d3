"""Platform-specific fast paths, each behind one small interface with a plain fallback.

==========  ==============================================  =====================================================
name        fast path                                       fallback (chosen automatically, logged once)
==========  ==============================================  =====================================================
``pread``   ``os.pread`` / ``os.preadv`` (POSIX):           ``lseek`` + ``readinto`` on the same descriptor
            :mod:`mss.platform.fileio`
``shm_pool`` the loader workers' pool of reused shared-     plain tensors, which the DataLoader's own pickling
            memory batch storages (``data.batch_pool``):    moves to shared memory (a fresh buffer per batch)
            :mod:`mss.platform.shm`
``glibc``   ``mallopt`` / ``malloc_trim`` (glibc):          no-op (the allocator keeps its own policy)
            :mod:`mss.platform.allocator`
``proc``    ``/proc`` (Linux) for resident-set sizes and    ``resource.getrusage``, then ``psutil`` when
            CPU times in the benchmarks:                    installed, else ``None`` (the benchmarks print n/a)
            :mod:`mss.platform.process`
``threads`` thread counts from the free cores (runnable      every usable core; the OpenMP runtime's own wait
            threads in ``/proc/loadavg``, else the 1-min     policy (libgomp: spinning)
            load), ``OMP_WAIT_POLICY=PASSIVE`` set before
            torch starts, BLAS pools held to the same count:
            :mod:`mss.platform.threads`
==========  ==============================================  =====================================================

Every fallback gives the same results (batches, metrics), only slower. The environment variable
``MSS_DISABLE_FAST_PATHS`` (a comma-separated list of the names above, or ``all``) forces the fallbacks, e.g. to
check on Linux that a run works where the platform lacks them. Each fallback logs one INFO line per process (logger
``mss.platform``) the first time it is taken.
"""

from __future__ import annotations

import functools
import logging
import os

NAMES = ("pread", "shm_pool", "glibc", "proc", "threads")
ENV = "MSS_DISABLE_FAST_PATHS"

log = logging.getLogger(__name__)
_logged: set[str] = set()  # fallbacks already logged by this process


@functools.cache
def _parse(value: str) -> frozenset[str]:
    names = {n.strip() for n in value.split(",") if n.strip()}
    if "all" in names:
        return frozenset(NAMES)
    unknown = sorted(names - set(NAMES))
    if unknown:
        raise ValueError(f"{ENV}={value!r}: unknown name(s) {unknown}; expected a comma-separated list of "
                         f"{', '.join(NAMES)}, or 'all'")
    return frozenset(names)


def disabled(name: str) -> bool:
    """Whether ``MSS_DISABLE_FAST_PATHS`` turns the fast path ``name`` (one of :data:`NAMES`) off."""
    return name in _parse(os.environ.get(ENV, ""))


def fallback(name: str, reason: str, instead: str) -> None:
    """Record that fast path ``name`` is not used (``reason``) and ``instead`` is: one log line per process."""
    if name not in _logged:
        _logged.add(name)
        log.info("fast path '%s' unavailable (%s): using %s", name, reason, instead)
