"""Lossy codec round trips (MP3, AAC) through the ``ffmpeg`` executable, sample-exact: :func:`codec_round_trip`.

The encoder delay and padding are compensated by the containers, which record them and which ffmpeg's decoder
honours: MP3 in an ``.mp3`` file with its LAME/Xing header (encoder delay + padding, measured exact), AAC in an
``.m4a`` (``ipod`` muxer) with its edit list (the 1024 priming samples; the last frame's padding is cropped here).
Raw ADTS AAC carries no such record (measured 1024 samples late), so it is not used. The decoded signal is then cut
(or zero-padded) to the input length. MP3 holds at most two channels: wider inputs are encoded two channels at a time.

Shape legend: C channels, T time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np

__all__ = ["CODECS", "codec_round_trip"]

# codec -> (ffmpeg encoder, muxer, file suffix, max channels per file)
CODECS: dict[str, tuple[str, str, str, int]] = {
    "mp3": ("libmp3lame", "mp3", ".mp3", 2),
    "aac": ("aac", "ipod", ".m4a", 8),
}


def _tmp_dir() -> str | None:
    """A RAM-backed folder for the encoded file where there is one (Linux ``/dev/shm``), else the default."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _run(cmd: list[str], data: bytes | None, what: str) -> bytes:
    done = subprocess.run(cmd, input=data, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg {what} failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
    return done.stdout


def codec_round_trip(wav: np.ndarray, sample_rate: int, codec: str = "mp3", bitrate: int = 128) -> np.ndarray:
    """Encode ``wav`` ``(C, T)`` float32 with ``codec`` (``mp3`` or ``aac``) at ``bitrate`` kbit/s (per file of at
    most two channels for MP3) and decode it back: ``(C, T)`` float32, sample-aligned with the input (encoder delay and
    padding removed, length kept). Inputs peaking above 1 are scaled into range for the encoder and back after."""
    if codec not in CODECS:
        raise ValueError(f"codec={codec!r}: expected one of {sorted(CODECS)}")
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("codec round trips need the ffmpeg executable on PATH (conda install ffmpeg / apt install "
                           "ffmpeg)")
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 2:
        raise ValueError(f"codec_round_trip expects (C, T) audio, got shape {wav.shape}")
    encoder, muxer, suffix, width = CODECS[codec]
    channels, length = wav.shape
    if channels > width:
        return np.concatenate([codec_round_trip(wav[i: i + width], sample_rate, codec, bitrate)
                               for i in range(0, channels, width)])
    peak = float(np.abs(wav).max(initial=0.0))
    scale = 0.99 / peak if peak > 0.99 else 1.0
    pcm = np.ascontiguousarray((wav * scale).T).tobytes()
    base = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    with tempfile.TemporaryDirectory(prefix="mss_codec_", dir=_tmp_dir()) as tmp:
        path = os.path.join(tmp, "x" + suffix)
        _run(base + ["-f", "f32le", "-ar", str(sample_rate), "-ac", str(channels), "-i", "pipe:0", "-c:a", encoder,
                     "-b:a", f"{int(bitrate)}k", "-f", muxer, path], pcm, f"{codec} encoding")
        raw = _run(base + ["-i", path, "-f", "f32le", "-ac", str(channels), "-ar", str(sample_rate), "pipe:1"], None,
                   f"{codec} decoding")
    out = np.frombuffer(raw, dtype=np.float32).reshape(-1, channels).T[:, :length]
    if out.shape[1] < length:
        out = np.pad(out, ((0, 0), (0, length - out.shape[1])))
    return np.ascontiguousarray(out / scale, dtype=np.float32)
