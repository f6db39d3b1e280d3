"""Audio in blocks, so that a long file never has to fit in memory: a block reader for every input format, a
resampler that gives the whole-signal result block by block, and a spool that collects a stem on disk and encodes
it at the end (peak normalisation needs the whole stem's peak).

Waveform blocks are float32 tensors ``(C, n)`` (channels, samples), consecutive in time.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mss.audio.io import (
    FLOAT_SUBTYPES,
    SOUNDFILE_SUFFIXES,
    AudioError,
    check_finite,
    ffmpeg_decoder,
    prevent_clip,
    probe_ffmpeg,
    resample,
    write_blocks,
)

__all__ = ["AudioStream", "BlockResampler", "Spool", "open_audio"]

RESAMPLE_ZEROS, RESAMPLE_ROLLOFF = 24, 0.945  # julius.resample_frac's defaults, used by mss.audio.io.resample


class AudioStream:
    """A file's audio as consecutive ``(C, n)`` float32 blocks of ``seconds`` each (the last one shorter), at its
    own ``rate`` and ``channels``; ``frames`` is the length when the container states it (soundfile), else the
    duration ffprobe reports, rounded (``None`` if unknown). WAV/FLAC/OGG/AIFF are read by soundfile, anything else
    is decoded by ffmpeg through a pipe. Errors name the file (:class:`AudioError`). Iterate once; ``close()``
    (or leaving a ``with`` block) stops a decoder early."""

    def __init__(self, path: str | os.PathLike, seconds: float):
        self.path = Path(path)
        if not seconds > 0:
            raise ValueError(f"block length must be positive, got {seconds} s")
        if not self.path.is_file():
            raise AudioError(f"{self.path}: audio file not found")
        self._file: sf.SoundFile | None = None
        self._proc: subprocess.Popen | None = None
        if self.path.suffix.lower() in SOUNDFILE_SUFFIXES:
            try:
                self._file = sf.SoundFile(str(self.path))
            except Exception as err:
                raise AudioError(f"{self.path}: cannot read audio ({err})") from err
            self.rate, self.channels = int(self._file.samplerate), int(self._file.channels)
            self.frames: int | None = int(self._file.frames)
        else:
            self.rate, self.channels, self.frames = probe_ffmpeg(self.path)
        self.block = max(1, round(seconds * self.rate))

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def __iter__(self) -> Iterator[torch.Tensor]:
        try:
            yield from (self._soundfile() if self._file is not None else self._ffmpeg())
        finally:
            self.close()

    def _soundfile(self) -> Iterator[torch.Tensor]:
        f, start = self._file, 0
        float_file = f.subtype in FLOAT_SUBTYPES
        while True:
            try:
                data = f.read(self.block, dtype="float32", always_2d=True)
            except Exception as err:
                raise AudioError(f"{self.path}: cannot decode audio at frame {start} ({err})") from err
            if len(data) == 0:
                break
            if float_file:
                check_finite(data, self.path, start, self.rate)
            start += len(data)
            yield torch.from_numpy(np.ascontiguousarray(data.T))
        if start == 0:
            raise AudioError(f"{self.path}: audio file holds no samples")

    def _ffmpeg(self) -> Iterator[torch.Tensor]:
        with tempfile.TemporaryFile() as errors:
            self._proc = subprocess.Popen(ffmpeg_decoder(self.path, self.rate, self.channels), stdout=subprocess.PIPE,
                                          stderr=errors)
            width, start = 4 * self.channels, 0
            while True:
                raw = self._proc.stdout.read(self.block * width)
                usable = len(raw) - len(raw) % width
                if usable:
                    data = np.frombuffer(raw[:usable], dtype=np.float32).reshape(-1, self.channels)
                    check_finite(data, self.path, start, self.rate)
                    start += len(data)
                    yield torch.from_numpy(data.T.copy())
                if len(raw) < self.block * width:
                    break
            self._proc.stdout.close()
            if self._proc.wait() != 0:
                errors.seek(0)
                why = errors.read().decode(errors="replace").strip().splitlines()
                raise AudioError(f"{self.path}: ffmpeg cannot decode the audio "
                                 f"({why[-1] if why else self._proc.returncode})")
        if start == 0:
            raise AudioError(f"{self.path}: audio file holds no samples")


def open_audio(path: str | os.PathLike, seconds: float = 10.0) -> AudioStream:
    """:class:`AudioStream` of ``path`` in blocks of ``seconds``."""
    return AudioStream(path, seconds)


class BlockResampler:
    """:func:`mss.audio.io.resample` (julius's band-limited sinc, ``from_rate -> to_rate``) of a signal given in
    consecutive blocks ``(..., n)``: the concatenated outputs equal the resampling of the whole signal.

    The whole-signal resampler computes output frames of ``q`` input / ``p`` output samples (the rates divided by
    their gcd) from a window reaching ``width`` input samples beyond each frame, the signal edges extended by
    repetition. Here each call resamples the buffered input from ``context`` samples before the first frame not yet
    given (a multiple of ``q``, so the frame grid is the same) to the newest sample, and keeps the frames whose
    window lies inside it; :meth:`finish` resamples the rest against the true end. Memory: ``2·context`` plus one
    block."""

    def __init__(self, from_rate: int, to_rate: int):
        self.from_rate, self.to_rate = int(from_rate), int(to_rate)
        g = math.gcd(self.from_rate, self.to_rate)
        self.q, self.p = self.from_rate // g, self.to_rate // g
        width = math.ceil(RESAMPLE_ZEROS * self.q / (min(self.q, self.p) * RESAMPLE_ROLLOFF))
        self.context = (width // self.q + 2) * self.q
        self._buf: torch.Tensor | None = None  # input from sample self._start on
        self._start = 0  # absolute input index of self._buf[..., 0], a multiple of q
        self._frame = 0  # next output frame to give
        self._seen = 0  # input samples received

    def push(self, block: torch.Tensor) -> torch.Tensor:
        """The output samples that ``block`` (the next input samples) completes (possibly none)."""
        self._seen += block.shape[-1]
        self._buf = block if self._buf is None else torch.cat([self._buf, block], dim=-1)
        last = (self._start + self._buf.shape[-1] - self.context) // self.q  # frames before it are complete
        if last <= self._frame:
            return self._buf[..., :0]
        out = self._resampled((last - self._frame) * self.p)
        self._frame = last
        keep = max(0, self._frame * self.q - self.context) - self._start
        self._buf, self._start = self._buf[..., keep:], self._start + keep
        return out

    def finish(self) -> torch.Tensor:
        """The remaining output, up to the whole-signal length ``floor(total · to_rate / from_rate)``."""
        if self._buf is None:
            raise AudioError("resampling an empty signal")
        return self._resampled(self._seen * self.p // self.q - self._frame * self.p)

    def _resampled(self, samples: int) -> torch.Tensor:
        """``samples`` output samples from frame ``self._frame`` on, from the buffered input."""
        first = (self._frame * self.q - self._start) // self.q * self.p
        return resample(self._buf, self.from_rate, self.to_rate)[..., first : first + samples]


class Spool:
    """One output stem collected block by block in a raw float32 file beside its destination, then encoded there
    atomically by :meth:`encode` with the clipping mode (``rescale`` needs the whole stem's peak, which the spool
    tracks). Blocks are ``(C, n)`` tensors; the spool file is removed by :meth:`encode` and :meth:`discard`."""

    def __init__(self, path: Path, channels: int):
        self.path, self.channels = Path(path), int(channels)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".spool")
        self._spool = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self.peak = 0.0
        self.frames = 0

    def write(self, block: torch.Tensor) -> None:
        data = block.detach().to("cpu", torch.float32)
        if data.numel():
            self.peak = max(self.peak, float(data.abs().max()))
        self._file.write(data.T.contiguous().numpy().tobytes())
        self.frames += data.shape[-1]

    def encode(self, sample_rate: int, subtype: str, clip: str = "rescale", block: int = 1 << 18) -> Path:
        """Write the collected stem to ``path`` (:func:`mss.audio.io.write_blocks`) through ``clip``
        (:func:`mss.audio.io.prevent_clip`; ``rescale`` divides by ``max(1.01 · peak, 1)`` of the whole stem)."""
        self._file.close()

        def blocks() -> Iterator[np.ndarray]:
            with open(self._spool, "rb") as f:
                while True:
                    data = np.fromfile(f, dtype=np.float32, count=block * self.channels)
                    if data.size == 0:
                        return
                    wav = torch.from_numpy(data.reshape(-1, self.channels))
                    yield prevent_clip(wav, clip, peak=self.peak).numpy()

        try:
            return write_blocks(self.path, blocks(), sample_rate, self.channels, subtype)
        finally:
            self._spool.unlink(missing_ok=True)

    def discard(self) -> None:
        self._file.close()
        self._spool.unlink(missing_ok=True)
