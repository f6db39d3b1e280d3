"""Positional reads from a file descriptor: ``os.pread`` / ``os.preadv`` where the platform has them (POSIX), else
``lseek`` + ``readinto`` (Windows), which moves the descriptor's offset (the callers open their own descriptor per
read, so nothing else depends on it). Same bytes either way."""

from __future__ import annotations

import io
import os

from mss.platform import disabled, fallback


def _positional() -> bool:
    """Whether ``os.pread`` and ``os.preadv`` are used (logs the fallback once otherwise)."""
    if disabled("pread"):
        fallback("pread", "MSS_DISABLE_FAST_PATHS", "lseek + readinto")
        return False
    if not (hasattr(os, "pread") and hasattr(os, "preadv")):
        fallback("pread", "os.pread/os.preadv missing on this platform", "lseek + readinto")
        return False
    return True


def read_at(fd: int, offset: int, out) -> int:
    """Read up to ``len(out)`` bytes of ``fd`` from byte ``offset`` into the writable buffer ``out`` (a bytearray,
    a contiguous numpy array, ...); returns the number of bytes read (fewer only at the end of the file)."""
    view = memoryview(out).cast("B")
    if _positional():
        return os.preadv(fd, [view], offset)
    os.lseek(fd, offset, os.SEEK_SET)
    got, raw = 0, io.FileIO(fd, "rb", closefd=False)
    while got < len(view) and (n := raw.readinto(view[got:])):
        got += n
    return got


def read_bytes(fd: int, n: int, offset: int) -> bytes:
    """Up to ``n`` bytes of ``fd`` from byte ``offset`` (fewer at the end of the file)."""
    buf = bytearray(n)
    return bytes(buf[: read_at(fd, offset, buf)])
