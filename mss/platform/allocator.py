"""Tuning of the C heap: glibc's ``mallopt`` / ``malloc_trim`` where glibc is the allocator (Linux), a no-op
elsewhere (macOS, Windows, musl), where the allocator keeps its own policy. Memory contents are never affected."""

from __future__ import annotations

import ctypes

from mss.platform import disabled, fallback

LIBC = "libc.so.6"  # glibc's soname
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_INSTEAD = "the allocator's defaults (no mallopt/malloc_trim)"


def glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (``mallopt`` and ``malloc_trim`` available), else ``None`` (the no-op
    fallback is logged once)."""
    if disabled("glibc"):
        fallback("glibc", "MSS_DISABLE_FAST_PATHS", _INSTEAD)
        return None
    try:
        lib = ctypes.CDLL(LIBC)  # already loaded in any glibc process: a lookup, not a load
        lib.mallopt, lib.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        fallback("glibc", f"{LIBC} with mallopt/malloc_trim not found", _INSTEAD)
        return None
    return lib


def tune_allocator() -> None:
    """Keep freed heap memory in this process for reuse (no mmap for big blocks, no trimming) instead of returning
    it to the OS, so that a process that allocates and frees tens of MB over and over (a loader worker) does not
    page-fault fresh memory every time. No-op without glibc."""
    if (lib := glibc()) is not None:
        lib.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
        lib.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def release_memory() -> None:
    """Return freed heap memory to the OS now (``malloc_trim``), e.g. before measuring resident memory. No-op
    without glibc."""
    if (lib := glibc()) is not None:
        lib.malloc_trim(0)
