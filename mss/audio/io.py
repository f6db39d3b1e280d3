"""Audio file I/O through soundfile (WAV/FLAC/OGG/AIFF, MP3 output) and ffmpeg (decoding MP3, M4A/AAC and any
other container), with channel conversion and resampling on load.

Waveforms are float32 tensors shaped ``(C, T)`` (channels, samples).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mss.audio.pcm16 import read_pcm16
from mss.utils import atomic_write


class AudioError(ValueError):
    """An audio file is missing, unreadable or not in the expected format."""


FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")
SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")  # read by soundfile; anything else by ffmpeg
FFMPEG_SUFFIXES = (".mp3", ".m4a", ".aac", ".mp4", ".opus", ".wma", ".webm", ".mka", ".mkv", ".ac3", ".alac")
OUTPUT_FORMATS = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3"}
BIT_DEPTHS = {"16": "PCM_16", "24": "PCM_24", "32f": "FLOAT"}  # ``bit_depth`` key -> soundfile subtype
CLIP_MODES = ("rescale", "clamp", "tanh", "none")  # the only stored formats that can hold NaN/Inf (integer PCM cannot)


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    frames: int
    subtype: str = ""  # soundfile's subtype: PCM_16, PCM_24, FLOAT, ...


def _open(path: Path) -> sf.SoundFile:
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        handle = sf.SoundFile(str(path))
    except Exception as err:  # soundfile raises LibsndfileError / RuntimeError for corrupt files
        raise AudioError(f"{path}: cannot read audio header ({err}); expected a WAV/FLAC/OGG file") from err
    if handle.frames <= 0:
        handle.close()
        raise AudioError(f"{path}: audio file holds no samples")
    return handle


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header information of an audio file, with a clear error when it is missing or unreadable."""
    path = Path(path)
    with _open(path) as f:
        return AudioInfo(path, int(f.samplerate), int(f.channels), int(f.frames), str(f.subtype))


def check_finite(data: np.ndarray, path: str | os.PathLike, start: int = 0, sample_rate: int | None = None) -> None:
    """Raise :class:`AudioError` naming ``path`` and its first NaN/Inf sample (frame, time, channel) when samples
    ``data`` ``(T, C)`` read from frame ``start`` of it are not all finite. One float64 reduction when they are
    (it cannot overflow for float32 input)."""
    if math.isfinite(float(data.sum(dtype=np.float64))):
        return
    bad = np.argwhere(~np.isfinite(data))
    if not len(bad):
        return
    frame, channel = int(bad[0][0]), int(bad[0][1])
    at = f" ({(start + frame) / sample_rate:.3f} s)" if sample_rate else ""
    raise AudioError(f"{path}: non-finite sample {data[frame, channel]} at frame {start + frame}{at}, channel "
                     f"{channel} ({len(bad)} non-finite value(s) in frames {start}-{start + len(data) - 1}); "
                     "replace or repair the file (NaN/Inf audio would make every loss and metric NaN)")


def convert_channels(wav: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert ``(C, T)`` to ``channels`` channels: mono is repeated, more channels are averaged down to mono or
    truncated to stereo (the MUSDB convention)."""
    have = wav.shape[0]
    if have == channels:
        return wav
    if have == 1:
        return wav.expand(channels, -1).clone()
    if channels == 1:
        return wav.mean(dim=0, keepdim=True)
    if have > channels:
        return wav[:channels]
    raise AudioError(f"cannot convert {have} channels to {channels}")


def resample(wav: torch.Tensor, from_rate: int, to_rate: int, output_length: int | None = None) -> torch.Tensor:
    """Band-limited sinc resampling (julius) of ``(..., T)``; differentiable (a convolution).

    ``output_length``: samples to return, at most ``ceil(T * to_rate / from_rate)`` (default: the floor of it).
    """
    if from_rate == to_rate:
        return wav if output_length is None else wav[..., :output_length]
    import julius

    return julius.resample_frac(wav, int(from_rate), int(to_rate), output_length=output_length)


def load_audio(
    path: str | os.PathLike,
    *,
    sample_rate: int | None = None,
    channels: int | None = None,
    start: int = 0,
    frames: int = -1,
    convert: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Read ``(C, T)`` float32 audio.

    ``start``/``frames`` select an excerpt in the file's own sample rate. When ``sample_rate``/``channels`` differ
    from the file, the audio is resampled / channel-converted with a warning if ``convert`` is true, otherwise an
    :class:`AudioError` names the file and what was expected. Samples of float files must be finite: a NaN/Inf is
    an :class:`AudioError` naming the file and the first bad sample (:func:`check_finite`).

    With ``out`` (a float32 ``(C, frames)`` CPU tensor, or int16 for the samples times 32768) ``out.shape[-1]``
    frames from ``start`` are written into it, zeros past the end of the file, and ``out`` is returned: plain 16-bit
    PCM WAV files of the right channels and rate straight from their bytes (:func:`mss.audio.pcm16.read_pcm16`, the
    training loader's path), any other file through soundfile as above (int16 rounded).
    """
    if out is not None:
        if read_pcm16(str(path), start, out.numpy(), channels, sample_rate):
            return out
        wav = load_audio(path, start=start, frames=out.shape[-1], channels=channels, sample_rate=sample_rate,
                         convert=convert)[..., :out.shape[-1]]
        if out.dtype == torch.int16:  # exact for 16-bit files, rounded otherwise
            wav = (wav * 32768).round_().clamp_(-32768, 32767)
        out[..., : wav.shape[-1]] = wav
        out[..., wav.shape[-1]:] = 0
        return out
    path = Path(path)
    with _open(path) as f:  # one open per read: this is the training data path
        have_rate, have_channels = int(f.samplerate), int(f.channels)
        for what, want, have in (("sample rate", sample_rate, have_rate), ("channels", channels, have_channels)):
            if want is not None and want != have and not convert:
                raise AudioError(f"{path}: {what} is {have}, expected {want}")
        try:
            f.seek(start)
            data = f.read(frames, dtype="float32", always_2d=True)
        except Exception as err:
            raise AudioError(f"{path}: cannot decode audio ({err})") from err
        if f.subtype in FLOAT_SUBTYPES:
            check_finite(data, path, start, have_rate)
    wav = torch.from_numpy(np.ascontiguousarray(data.T))
    if channels is not None and have_channels != channels:
        warnings.warn(f"{path}: converting {have_channels} channel(s) to {channels}", stacklevel=2)
        wav = convert_channels(wav, channels)
    if sample_rate is not None and have_rate != sample_rate:
        warnings.warn(f"{path}: resampling {have_rate} Hz to {sample_rate} Hz", stacklevel=2)
        wav = resample(wav, have_rate, sample_rate)
    return wav


def ffmpeg_tool(tool: str) -> str:
    """The path of ``ffmpeg`` / ``ffprobe``, or an :class:`AudioError` saying how to install it."""
    exe = shutil.which(tool)
    if exe is None:
        raise AudioError(f"{tool} is not installed: it is needed to read MP3/M4A/AAC and other compressed files "
                         "(install ffmpeg, e.g. scripts/setup.sh or `apt-get install ffmpeg`), or convert to WAV/FLAC")
    return exe


def probe_ffmpeg(path: Path) -> tuple[int, int, int | None]:
    """``(sample rate, channels, frames)`` of the first audio stream of ``path`` by ffprobe (frames: the stated
    duration times the rate, rounded; ``None`` when the container states none)."""
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    probe = subprocess.run([ffmpeg_tool("ffprobe"), "-v", "error", "-select_streams", "a:0", "-show_entries",
                            "stream=sample_rate,channels,duration", "-of", "json", str(path)],
                           capture_output=True, text=True)
    streams = json.loads(probe.stdout or "{}").get("streams") if probe.returncode == 0 else None
    if not streams:
        why = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "no audio stream"
        raise AudioError(f"{path}: cannot read audio with ffmpeg ({why})")
    rate, channels = int(streams[0]["sample_rate"]), int(streams[0]["channels"])
    try:
        frames = round(float(streams[0]["duration"]) * rate)
    except (KeyError, TypeError, ValueError):
        frames = None
    return rate, channels, frames


def ffmpeg_decoder(path: Path, rate: int, channels: int) -> list[str]:
    """The ffmpeg command writing the first audio stream of ``path`` to stdout as interleaved float32 PCM."""
    return [ffmpeg_tool("ffmpeg"), "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le",
            "-acodec", "pcm_f32le", "-ac", str(channels), "-ar", str(rate), "-"]


def decode_ffmpeg(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Decode the first audio stream of any file ffmpeg reads to ``((C, T) float32, sample rate)``, at the file's
    own rate and channel count (float32 PCM through a pipe)."""
    path = Path(path)
    rate, channels, _ = probe_ffmpeg(path)
    proc = subprocess.run(ffmpeg_decoder(path, rate, channels), capture_output=True)
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioError(f"{path}: ffmpeg cannot decode the audio ({why[-1] if why else proc.returncode})")
    data = np.frombuffer(proc.stdout, dtype=np.float32)
    if data.size == 0:
        raise AudioError(f"{path}: audio file holds no samples")
    data = data[: data.size - data.size % channels].reshape(-1, channels)
    check_finite(data, path, 0, rate)
    return torch.from_numpy(np.ascontiguousarray(data.T)), rate


def decode_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """The whole file as ``((C, T) float32, sample rate)`` at its own rate and channels: WAV/FLAC/OGG/AIFF through
    soundfile, anything else (MP3, M4A/AAC, video containers, ...) through ffmpeg."""
    path = Path(path)
    if path.suffix.lower() in SOUNDFILE_SUFFIXES:
        return load_audio(path), audio_info(path).sample_rate
    return decode_ffmpeg(path)


def prevent_clip(wav: torch.Tensor, mode: str = "rescale", peak: float | None = None) -> torch.Tensor:
    """Keep ``wav`` within [-1, 1] before writing (the Demucs reference's ``--clip-mode``): ``rescale`` divides the
    whole file by ``max(1.01 · peak, 1)`` (no change unless it would clip), ``clamp`` clips samples to ±0.99,
    ``tanh`` soft-clips, ``none`` leaves it (integer PCM then saturates at ±1, float WAV keeps the values)."""
    if mode == "rescale":  # ``peak``: the whole file's, when ``wav`` is one block of it
        return wav / max(1.01 * (float(wav.abs().max()) if peak is None else peak), 1.0)
    if mode == "clamp":
        return wav.clamp(-0.99, 0.99)
    if mode == "tanh":
        return torch.tanh(wav)
    if mode == "none":
        return wav
    raise AudioError(f"clip={mode!r}: expected one of {', '.join(CLIP_MODES)}")


def output_subtype(fmt: str, bit_depth: str | int) -> str:
    """soundfile subtype for output ``format`` (wav, flac, mp3) and ``bit_depth`` (16, 24, 32f), with a clear
    error for a combination the format cannot hold."""
    fmt, depth = str(fmt).lower(), str(bit_depth).lower()
    if fmt not in OUTPUT_FORMATS:
        raise AudioError(f"format={fmt!r}: expected one of {', '.join(OUTPUT_FORMATS)}")
    if depth not in BIT_DEPTHS:
        raise AudioError(f"bit_depth={bit_depth}: expected one of {', '.join(BIT_DEPTHS)}")
    if fmt == "mp3":
        return "MPEG_LAYER_III"  # lossy: bit_depth does not apply
    if fmt == "flac" and depth == "32f":
        raise AudioError("bit_depth=32f: FLAC stores integer PCM only; use bit_depth=16 or 24, or format=wav")
    return BIT_DEPTHS[depth]


def _writer_args(path: Path, subtype: str) -> tuple[str, str, dict]:
    """soundfile ``(format, subtype, extra)`` for writing ``path`` (format from the suffix)."""
    fmt = {f".{k}": v for k, v in OUTPUT_FORMATS.items()}.get(path.suffix.lower())
    if fmt is None:
        raise AudioError(f"{path}: unsupported output format {path.suffix!r}; use .wav, .flac or .mp3")
    extra = {}
    if fmt == "FLAC" and subtype in FLOAT_SUBTYPES:
        subtype = "PCM_24"
    if fmt == "MP3":
        subtype, extra = "MPEG_LAYER_III", {"bitrate_mode": "CONSTANT", "compression_level": 0.0}  # 320 kb/s
    return fmt, subtype, extra


def write_blocks(path: str | os.PathLike, blocks: Iterable[np.ndarray], sample_rate: int, channels: int,
                 subtype: str = "PCM_16") -> Path:
    """Atomically write audio given as consecutive ``(frames, C)`` float blocks (a temporary file beside ``path``,
    then renamed; format from the suffix: .wav, .flac or .mp3 at 320 kb/s constant bit rate), one block in memory
    at a time. Values are clipped to [-1, 1] for all but float WAV."""
    path = Path(path)
    fmt, file_subtype, extra = _writer_args(path, subtype)

    def write(tmp: str) -> None:
        with sf.SoundFile(tmp, "w", int(sample_rate), int(channels), file_subtype, format=fmt, **extra) as f:
            for data in blocks:
                f.write(data if file_subtype in FLOAT_SUBTYPES else np.clip(data, -1.0, 1.0))

    atomic_write(path, write)
    return path


def save_audio(path: str | os.PathLike, wav: torch.Tensor | np.ndarray, sample_rate: int,
               subtype: str = "PCM_16") -> Path:
    """Atomically write ``(C, T)`` audio (:func:`write_blocks` with one block)."""
    path = Path(path)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().to("cpu", torch.float32).numpy()
    if wav.ndim != 2:
        raise AudioError(f"{path}: expected a (channels, samples) array, got shape {wav.shape}")
    return write_blocks(path, [wav.T], sample_rate, wav.shape[0], subtype)
