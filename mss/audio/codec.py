"""Lossy codec round trips (MP3, AAC) through the ``ffmpeg`` executable, sample-exact: :func:`codec_round_trip`.

The encoder delay and padding are compensated by the containers, which record them and which ffmpeg's decoder
honours: MP3 in an ``.mp3`` file with its LAME/Xing header (encoder delay + padding, measured exact), AAC in an
``.m4a`` (``ipod`` muxer) with its edit list (the 1024 priming samples; the last frame's padding is cropped here).
Raw ADTS AAC carries no such record (measured 1024 samples late), so it is not used. The decoded signal is then cut
(or zero-padded) to the input length. Files hold one or two channels (MP3's limit; stereo pairs for AAC too): wider
inputs are encoded two channels at a time, and several signals (the stems of an example) share one encoder and one
decoder process (:func:`codec_round_trips`).

Shape legend: C channels, T time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

import numpy as np

__all__ = ["CODECS", "codec_round_trip", "codec_round_trips"]

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
    """Encode ``wav`` ``(C, T)`` float32 with ``codec`` (``mp3`` or ``aac``) at ``bitrate`` kbit/s per file of at
    most two channels and decode it back: ``(C, T)`` float32, sample-aligned with the input (encoder delay and
    padding removed, length kept). Inputs peaking above 1 are scaled into range for the encoder and back after."""
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 2:
        raise ValueError(f"codec_round_trip expects (C, T) audio, got shape {wav.shape}")
    groups = [wav[i: i + 2] for i in range(0, wav.shape[0], 2)]
    return np.concatenate(codec_round_trips(groups, sample_rate, [codec] * len(groups), [bitrate] * len(groups)))


def codec_round_trips(wavs: Sequence[np.ndarray], sample_rate: int, codecs: Sequence[str],
                      bitrates: Sequence[int]) -> list[np.ndarray]:
    """Round trips of several signals of one length, each ``(1 or 2, T)`` with its own codec and bitrate, in one
    ffmpeg encoder and one decoder process (starting ffmpeg costs ~0.1 s of CPU, more than encoding seconds of
    audio): the signals travel as one multichannel stream, split into one file each by ``pan`` filters and merged
    back by ``amerge``. Returns the decoded signals, aligned and of the input length, like :func:`codec_round_trip`."""
    if not len(wavs) == len(codecs) == len(bitrates) or not wavs:
        raise ValueError("codec_round_trips: give one codec and one bitrate per signal (and at least one signal)")
    bad = sorted(set(codecs) - set(CODECS))
    if bad:
        raise ValueError(f"codec={bad[0]!r}: expected one of {sorted(CODECS)}")
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("codec round trips need the ffmpeg executable on PATH (conda install ffmpeg / apt install "
                           "ffmpeg)")
    wavs = [np.asarray(w, dtype=np.float32) for w in wavs]
    length = wavs[0].shape[-1]
    if any(w.ndim != 2 or not 1 <= w.shape[0] <= 2 or w.shape[-1] != length for w in wavs):
        raise ValueError(f"codec_round_trips expects (1 or 2, T) signals of one length, got {[w.shape for w in wavs]}")
    scales = []
    for w in wavs:
        peak = float(np.abs(w).max(initial=0.0))
        scales.append(0.99 / peak if peak > 0.99 else 1.0)
    stacked = np.concatenate([w * k for w, k in zip(wavs, scales)])
    base = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"]
    encode = base + ["-f", "f32le", "-ar", str(sample_rate), "-ac", str(stacked.shape[0]), "-i", "pipe:0"]
    graph, first = [], 0
    for i, w in enumerate(wavs):
        layout = "stereo" if w.shape[0] == 2 else "mono"
        picks = "|".join(f"c{j}=c{first + j}" for j in range(w.shape[0]))
        graph.append(f"[0:a]pan={layout}|{picks}[s{i}]")
        first += w.shape[0]
    encode += ["-filter_complex", ";".join(graph)]
    with tempfile.TemporaryDirectory(prefix="mss_codec_", dir=_tmp_dir()) as tmp:
        paths = []
        for i, (codec, bitrate) in enumerate(zip(codecs, bitrates)):
            encoder, muxer, suffix, _ = CODECS[codec]
            paths.append(os.path.join(tmp, f"s{i}{suffix}"))
            encode += ["-map", f"[s{i}]", "-c:a", encoder, "-b:a", f"{int(bitrate)}k", "-f", muxer, paths[-1]]
        _run(encode, np.ascontiguousarray(stacked.T).tobytes(), f"{'/'.join(sorted(set(codecs)))} encoding")
        decode = base + [arg for path in paths for arg in ("-i", path)]
        if len(paths) > 1:
            decode += ["-filter_complex", "".join(f"[{i}:a]" for i in range(len(paths))) +
                       f"amerge=inputs={len(paths)}[m]", "-map", "[m]"]
        raw = _run(decode + ["-f", "f32le", "-ar", str(sample_rate), "pipe:1"], None, "decoding")
    out = np.frombuffer(raw, dtype=np.float32).reshape(-1, stacked.shape[0]).T[:, :length]
    if out.shape[1] < length:
        out = np.pad(out, ((0, 0), (0, length - out.shape[1])))
    bounds = np.cumsum([0] + [w.shape[0] for w in wavs])
    return [np.ascontiguousarray(out[a:b] / k, dtype=np.float32) for a, b, k in zip(bounds[:-1], bounds[1:], scales)]
