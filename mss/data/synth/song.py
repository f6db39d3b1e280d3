"""The song plan of one synthetic track: what all its sources share (tempo, key, chords, the full-band section, the
room), each source's arrangement (one silent section), monophonic note lines, and the seeds of every random draw.

Shape legend: n = samples, c = channels (2), m = notes.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

__all__ = ["SPLIT_CODES", "Line", "Song", "activity", "name_key", "note_line", "plan_song", "track_rng"]

SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
_MIN_SILENCE = 1.5  # seconds of exact zeros per source
_FADE = 0.02  # seconds of linear fade around a silent section (outside it)

Array = np.ndarray


# ----------------------------------------------------------------------------------------------- seeds


def track_rng(seed: int, split: str, index: int, *key: int) -> np.random.Generator:
    """The generator of one draw of track ``index`` of ``split``: ``SeedSequence(seed, spawn_key=(split code,
    index, *key))``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLIT_CODES[split], index, *key)))


def name_key(name: str) -> int:
    """A stable integer key of a source name (CRC-32), part of the keys of that source's generators."""
    return zlib.crc32(name.encode())


# ----------------------------------------------------------------------------------------------- song plan

_SCALES = {False: (0, 2, 4, 5, 7, 9, 11), True: (0, 2, 3, 5, 7, 8, 10)}  # major, natural minor
_PROGRESSIONS = {  # scale degrees (0 = tonic), one chord per bar
    False: ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 3), (5, 3, 0, 4), (0, 3, 0, 4)),
    True: ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 5, 3, 4)),
}


@dataclass(frozen=True)
class Song:
    """Everything the sources of one track share.

    Attributes:
        sr, n: sample rate and length in samples.
        bpm, tonic, minor: tempo, key pitch class (0 = C) and mode.
        chords: (bars, 3) pitch classes (root, third, fifth) of the chord of each bar.
        band: (start, end) seconds of the section where every source plays.
        room: (m, c) stereo room impulse response, unit energy per channel.
        peak_db: peak target (dBFS) of the mixture and of every stem.
    """

    sr: int
    n: int
    bpm: float
    tonic: int
    minor: bool
    chords: Array
    band: tuple[float, float]
    room: Array
    peak_db: float
    cache: dict = field(default_factory=dict, compare=False, repr=False)  # room spectra by FFT size

    @property
    def beat(self) -> float:
        return 60.0 / self.bpm

    @property
    def bar(self) -> float:
        return 4.0 * self.beat

    @property
    def duration(self) -> float:
        return self.n / self.sr

    @property
    def n_bars(self) -> int:
        return int(self.chords.shape[0])

    def scale(self) -> Array:
        """Pitch classes of the key, (7,)."""
        return (self.tonic + np.asarray(_SCALES[self.minor])) % 12


def plan_song(rng: np.random.Generator, n: int, sr: int) -> Song:
    bpm = float(rng.uniform(80.0, 150.0))
    tonic = int(rng.integers(12))
    minor = bool(rng.random() < 0.4)
    progs = _PROGRESSIONS[minor]
    prog = progs[int(rng.integers(len(progs)))]
    scale = _SCALES[minor]
    n_bars = int(np.ceil(n / sr / (4 * 60.0 / bpm))) + 1
    degrees = np.array(prog)[np.arange(n_bars) % 4][:, None] + np.array([0, 2, 4])  # root, third, fifth
    chords = (tonic + np.array(scale)[degrees % 7]) % 12
    dur = n / sr
    gap = _max_silence(dur)
    band_len = min(0.4 * dur, dur - gap)
    # leave room for the longest silent section on (at least) one side of the full-band section
    late = rng.random() < 0.5
    start = float(rng.uniform(gap, dur - band_len) if late else rng.uniform(0.0, dur - band_len - gap))
    rt60 = float(rng.uniform(0.4, 1.2))
    m = int(rt60 * sr)
    t = np.arange(m) / sr
    room = rng.standard_normal((m, 2)) * np.exp(-6.9 * t / rt60)[:, None]
    room[: int(0.01 * sr)] = 0.0  # pre-delay
    room /= np.sqrt((room**2).sum(axis=0, keepdims=True))
    room = room.astype(np.float32)
    peak_db = float(rng.uniform(-6.0, -1.0))
    return Song(sr, n, bpm, tonic, minor, chords, (start, start + band_len), room, peak_db)


def _max_silence(duration: float) -> float:
    """Longest silent section per source (seconds): 30 % of the track, at least 1.5 s, at most 8 s."""
    return max(_MIN_SILENCE + 0.05, min(0.3 * duration, 8.0))


def activity(song: Song, rng: np.random.Generator) -> Array:
    """Arrangement gain (n,) in [0, 1]: 1 while the source plays, exact 0 inside one silent section of
    1.5 s to :func:`_max_silence` placed outside the full-band section, linear fades just outside it."""
    dur = song.duration
    length = float(rng.uniform(_MIN_SILENCE + 0.05, _max_silence(dur)))  # margin: sample rounding, fades
    b0, b1 = song.band
    regions = [(lo, hi) for lo, hi in ((0.0, b0), (b1, dur)) if hi - lo >= length]
    lo, hi = regions[int(rng.integers(len(regions)))]
    g0 = float(rng.uniform(lo, hi - length))
    g1 = g0 + length
    t = np.arange(song.n) / song.sr
    return np.clip(np.maximum(g0 - t, t - g1) / _FADE, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------- note lines


class Line(NamedTuple):
    """A monophonic note line sampled per sample, all (n,): f0 in Hz, unwrapped phase in radians, time since
    the current note's onset, its (release-safe) duration, its velocity (0 before the first note)."""

    f0: Array
    phi: Array
    t: Array
    dur: Array
    vel: Array


def _hz(midi: Array | float) -> Array:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=float) - 69.0) / 12.0)


def note_line(onset: Array, dur: Array, midi: Array, vel: Array, song: Song, release: float,
          midi_curve: Callable[[Array, Array], Array] | None = None) -> Line:
    """Render note lists (m,) into a :class:`Line`. Each note lasts until the next onset; its duration is
    shortened so that its release ends before the next note starts (no clicks). ``midi_curve(midi, t)`` may
    reshape the per-sample pitch (portamento, vibrato)."""
    sr, n = song.sr, song.n
    order = np.argsort(onset, kind="stable")
    o = np.round(np.asarray(onset, dtype=float)[order] * sr).astype(np.int64)
    dur, midi, vel = (np.asarray(a, dtype=float)[order] for a in (dur, midi, vel))
    gap = np.diff(np.append(o, max(n, int(o[-1]) + 1) + int(release * sr) + 1)) / sr
    dur = np.clip(np.minimum(dur, gap - release), 0.01, None)
    pos = np.arange(n)
    idx = np.searchsorted(o, pos, side="right") - 1
    before = idx < 0
    idx = np.maximum(idx, 0)
    t = np.maximum(pos - o[idx], 0) / sr
    note_midi = midi[idx]
    if midi_curve is not None:
        note_midi = midi_curve(note_midi, t)
    f0 = _hz(note_midi)
    phi = 2.0 * np.pi * np.cumsum(f0) / sr
    v = np.where(before, 0.0, vel[idx])
    return Line(f0, phi, t, dur[idx], v)
