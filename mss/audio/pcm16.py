"""The fast reader of plain 16-bit PCM WAV files (MUSDB18-HQ, the decoded MUSDB18 cache, the synthetic data):
the header is parsed once per file version and an excerpt is one positional read (:func:`mss.platform.fileio.read_at`:
``pread`` where the platform has it) plus one conversion, no soundfile. :func:`mss.audio.io.load_audio` uses it
for reads into a given buffer (``out=``) and falls back to soundfile for every other file.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from mss.platform.fileio import read_at, read_bytes

__all__ = ["is_pcm16", "read_pcm16"]


_WAV_LAYOUTS: dict[tuple[str, int, int], tuple[int, int, int, int] | None] = {}


def _pcm16_layout(path: str, fd: int) -> tuple[int, int, int, int] | None:
    """``(data offset, channels, sample rate, frames)`` of a plain 16-bit PCM WAV file (RIFF, ``fmt`` tag PCM or
    WAVE_FORMAT_EXTENSIBLE with the PCM sub-format), else ``None``; cached per (path, size, mtime)."""
    st = os.fstat(fd)
    key = (path, st.st_size, st.st_mtime_ns)
    if key in _WAV_LAYOUTS:
        return _WAV_LAYOUTS[key]
    layout, fmt, pos = None, b"", 12
    if read_bytes(fd, 12, 0)[:4] == b"RIFF" and read_bytes(fd, 4, 8) == b"WAVE":
        while pos + 8 <= st.st_size:
            head = read_bytes(fd, 8, pos)
            cid, n = head[:4], int.from_bytes(head[4:], "little")
            if cid == b"fmt ":
                fmt = read_bytes(fd, min(n, 64), pos + 8)
            elif cid == b"data":
                if len(fmt) >= 16:
                    tag, ch, rate, bits = (int.from_bytes(fmt[a:b], "little") for a, b in
                                           ((0, 2), (2, 4), (4, 8), (14, 16)))
                    pcm = tag == 1 or (tag == 0xFFFE and len(fmt) >= 26 and fmt[24:26] == b"\x01\x00")
                    if pcm and bits == 16 and ch > 0:
                        layout = (pos + 8, ch, rate, min(n, st.st_size - pos - 8) // (2 * ch))
                break
            pos += 8 + n + n % 2
    _WAV_LAYOUTS[key] = layout
    return layout


@contextlib.contextmanager
def _open_pcm16(path: str):
    """``(fd, layout)`` of ``path`` opened for reading (closed on exit); ``layout`` is :func:`_pcm16_layout`'s, or
    ``None`` when the file is not a plain 16-bit PCM WAV or cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))  # O_BINARY: no newline translation (Windows)
    except OSError:
        yield None, None
        return
    try:
        yield fd, _pcm16_layout(path, fd)
    finally:
        os.close(fd)


def is_pcm16(path: str, channels: int, sample_rate: int) -> bool:
    """Whether :func:`read_pcm16` reads ``path`` (a 16-bit PCM WAV file with these channels and sample rate)."""
    with _open_pcm16(path) as (_, layout):
        return layout is not None and layout[1:3] == (channels, sample_rate)


_BUFFER = np.empty(0, np.uint8)


def _read_buffer(size: int) -> np.ndarray:
    """A reused byte buffer of ``size`` bytes for :func:`read_pcm16` (a fresh one per read would page-fault on
    every read: most of the cost of a read on a VM)."""
    global _BUFFER
    if _BUFFER.size < size:
        _BUFFER = np.empty(size, np.uint8)
    return _BUFFER[:size]


def read_pcm16(path: str, start: int, out: np.ndarray, channels: int | None = None,
               sample_rate: int | None = None) -> bool:
    """Read ``out.shape[-1]`` frames from ``start`` of a 16-bit PCM WAV file into the float32 array ``out``
    ``(C, frames)`` (scaled by 1/32768, exactly what soundfile returns; an int16 ``out`` gets the samples as they
    are; zeros past the end): one positional read (:func:`mss.platform.fileio.read_at`: ``pread`` where the platform
    has it) and one conversion, no soundfile. Returns ``False`` without reading
    when the file is not a plain 16-bit PCM WAV or its channel count / sample rate differ from ``out`` /
    ``channels`` / ``sample_rate`` (the caller then uses :func:`mss.audio.io.load_audio`, which converts or
    raises a clear error)."""
    with _open_pcm16(path) as (fd, layout):
        if layout is None:
            return False
        offset, ch, rate, total = layout
        if ch != out.shape[0] or (channels is not None and ch != channels) or (
                sample_rate is not None and rate != sample_rate):
            return False
        n = max(0, min(out.shape[-1], total - start))
        data = _read_buffer(2 * ch * n)
        got = read_at(fd, offset + 2 * ch * start, data) if n else 0
    if got != 2 * ch * n:
        from mss.audio.io import AudioError  # io imports this module

        raise AudioError(f"{path}: file is shorter than its header says ({got} bytes read at frame {start}, "
                         f"expected {2 * ch * n})")
    if n:
        samples = np.frombuffer(data, np.int16).reshape(n, ch).T
        if out.dtype == np.int16:
            out[:, :n] = samples
        else:
            np.multiply(samples, np.float32(1 / 32768), out=out[:, :n])
    out[:, n:] = 0
    return True
