"""Deterministic synthetic multitrack songs in the MUSDB18-HQ layout.

MUSDB18 cannot be downloaded everywhere, yet the framework's loaders, training, evaluation and CLIs should run
end to end on *real files*. :func:`generate` writes a small dataset of synthetic songs laid out like
MUSDB18-HQ::

    root/
      train/synth-train-000/{mixture,drums,bass,other,vocals}.wav
      train/synth-valid-000/...            validation tracks live inside train/, as in MUSDB
      test/synth-test-000/...
      stems/{train,test}/<track>.stem.mp4  optional MUSDB18 (compressed STEMS) copy, plus valid_tracks.txt
      valid_tracks.txt                     validation track names, one per line
      synth.json                           manifest (parameters, format version), written last

Each track is rendered from a song plan (tempo, key, chord progression, a section where the whole band plays,
a room impulse response) and one synthesiser per source with the source's spectral and temporal character:
drums (kick, snare, hi-hats on a tempo grid), bass (monophonic low notes on the chord roots), other (pad
and/or plucked chords), vocals (glottal-like harmonics with vibrato through vowel formants, in phrases), piano
(decaying inharmonic notes) and accompaniment (drums + bass + other as one stem).

Stems are quantised to integers (TPDF dither only where the source plays; silent sections are exact digital
zeros, as in stems rendered from a DAW) and the mixture is their exact integer sum, with headroom chosen so
that nothing clips. Every source sits out one section of at least 1.5 s (and plays most of the track), which
exercises the all-zero-frame handling of museval-style evaluation.

Randomness: the song plan of track ``index`` of ``split`` comes from
``SeedSequence(seed, spawn_key=(split_code, index))``; each source's performance and its arrangement/dither
from keys that also hold a stable hash of the source name. A track is therefore reproducible on its own, and a
source's performance does not depend on which other sources are generated (the ``drums`` of a 4-stem dataset
equal, up to level and arrangement, the drum part inside ``accompaniment`` of a 2-stem dataset with the same
seed). Files are byte-identical across runs on one numpy/scipy build; other CPUs or versions may differ by
a few LSB where transcendental functions round differently.

CLI::

    python -m mss.data.synth root=DIR [n_train=8 n_valid=2 n_test=3 duration=12 seed=0 \
        sources=[vocals,accompaniment] bit_depth=16 dither=true stems_mp4=false overwrite=false]

The defaults (:class:`SynthConfig`) are those of ``data=synth`` (``conf/data/synth.yaml`` mirrors them; a test
checks that the two agree), so ``python -m mss.train data.root=DIR`` trains on what this command wrote.

Shape legend: n = samples, c = channels (2), m = notes or one-shot samples, s = stems.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
from omegaconf import MISSING
from scipy import fft
from scipy.signal import butter, lfilter, resample_poly, sosfilt

__all__ = [
    "FORMAT_VERSION", "KNOWN_SOURCES", "MUSDB_SOURCES", "SynthConfig", "generate", "main", "read_manifest",
    "render_track", "track_names",
]

FORMAT_VERSION = 1
MUSDB_SOURCES = ("drums", "bass", "other", "vocals")
KNOWN_SOURCES = ("drums", "bass", "other", "vocals", "piano", "accompaniment")
# Defaults of generate(), the CLI and data=synth (conf/data/synth.yaml repeats them: tests/test_synth.py checks).
N_TRAIN, N_VALID, N_TEST, DURATION, SEED = 8, 2, 3, 12.0, 0
MIN_DURATION = 4.0  # a >= 1.5 s silent section plus > 50 % activity needs a few seconds
MANIFEST = "synth.json"
VALID_LIST = "valid_tracks.txt"
_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}
_MIN_SILENCE = 1.5  # seconds of exact zeros per source
_FADE = 0.02  # seconds of linear fade around a silent section (outside it)
_REF_RMS = 0.1  # level of a source performance at 0 dB gain, before the global headroom scaling

Array = np.ndarray


# ----------------------------------------------------------------------------------------------- song plan

_SCALES = {False: (0, 2, 4, 5, 7, 9, 11), True: (0, 2, 3, 5, 7, 8, 10)}  # major, natural minor
_PROGRESSIONS = {  # scale degrees (0 = tonic), one chord per bar
    False: ((0, 4, 5, 3), (0, 5, 3, 4), (0, 3, 4, 3), (5, 3, 0, 4), (0, 3, 0, 4)),
    True: ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 5, 3, 4)),
}


@dataclass(frozen=True)
class _Song:
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


def _plan_song(rng: np.random.Generator, n: int, sr: int) -> _Song:
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
    return _Song(sr, n, bpm, tonic, minor, chords, (start, start + band_len), room, peak_db)


def _max_silence(duration: float) -> float:
    """Longest silent section per source (seconds): 30 % of the track, at least 1.5 s, at most 8 s."""
    return max(_MIN_SILENCE + 0.05, min(0.3 * duration, 8.0))


def _activity(song: _Song, rng: np.random.Generator) -> Array:
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


# ----------------------------------------------------------------------------------------------- note helpers


class _Line(NamedTuple):
    """A monophonic note line sampled per sample, all (n,): f0 in Hz, unwrapped phase in radians, time since
    the current note's onset, its (release-safe) duration, its velocity (0 before the first note)."""

    f0: Array
    phi: Array
    t: Array
    dur: Array
    vel: Array


def _hz(midi: Array | float) -> Array:
    return 440.0 * 2.0 ** ((np.asarray(midi, dtype=float) - 69.0) / 12.0)


def _line(onset: Array, dur: Array, midi: Array, vel: Array, song: _Song, release: float,
          midi_curve: Callable[[Array, Array], Array] | None = None) -> _Line:
    """Render note lists (m,) into a :class:`_Line`. Each note lasts until the next onset; its duration is
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
    return _Line(f0, phi, t, dur[idx], v)


def _envelope(line: _Line, attack: float, decay: float, sustain: float, release: float) -> Array:
    """ADSR-like envelope (n,): linear attack, exponential decay towards ``sustain``, linear release after the
    note's duration, scaled by velocity."""
    t = line.t
    env = np.minimum(t / attack, 1.0)
    if sustain < 1.0:
        env *= sustain + (1.0 - sustain) * np.exp(-t / decay)
    env *= np.clip(1.0 - (t - line.dur) / release, 0.0, 1.0)
    return env * line.vel


def _harmonics(line: _Line, amps: Sequence[float], sr: int, decay: Array | None = None) -> Array:
    """Sum of integer harmonics (n,): ``sum_k amps[k-1] * decay**(k-1) * sin(k * phi)``, computed with the
    Chebyshev recurrence sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x); harmonics above 0.45 sr are dropped."""
    phi = np.mod(line.phi, 2.0 * np.pi).astype(np.float32)  # float32: twice as fast, far below 16-bit noise
    s_prev, s = np.zeros_like(phi), np.sin(phi)
    c2 = 2.0 * np.cos(phi)
    kmax = 0.45 * sr / line.f0
    gate = float(kmax.min()) < len(amps)
    out = np.zeros_like(phi)
    g = np.ones_like(phi) if decay is not None else None
    decay = decay.astype(np.float32) if decay is not None else None
    tmp = np.empty_like(phi)
    for k, a in enumerate(amps, start=1):
        if k > 1:
            np.multiply(c2, s, out=tmp)
            tmp -= s_prev
            s_prev, s, tmp = s, tmp, s_prev
        term = s if g is None else g * s
        if gate:
            term = term * (k <= kmax)
        out += a * term
        if g is not None:
            g *= decay
    return out


def _pan(x: Array, pan: float) -> Array:
    """Constant-power pan of a mono signal (n,) to stereo (n, c); pan in [-1, 1], 0 = centre (gain 1, 1)."""
    theta = (pan + 1.0) * np.pi / 4.0
    return np.sqrt(2.0) * np.stack([np.cos(theta) * x, np.sin(theta) * x], axis=1)


def _filter(x: Array, kind: str, cutoff: float | tuple[float, float], sr: int, order: int = 4) -> Array:
    """Butterworth filter along axis 0; cutoffs are clamped below Nyquist."""
    nyq_safe = 0.45 * sr
    wn = tuple(min(c, nyq_safe) for c in cutoff) if isinstance(cutoff, tuple) else min(cutoff, nyq_safe)
    return sosfilt(butter(order, wn, btype=kind, fs=sr, output="sos"), x, axis=0)


def _reverb(x: Array, song: _Song) -> Array:
    """Wet signal (n, c): x (n, c) convolved with the song's room response, channel by channel (the room's
    spectrum is computed once per song)."""
    size = fft.next_fast_len(song.n + song.room.shape[0] - 1, real=True)
    if size not in song.cache:
        song.cache[size] = fft.rfft(song.room, size, axis=0)
    return fft.irfft(fft.rfft(x, size, axis=0) * song.cache[size], size, axis=0)[: song.n]


def _place(shot: Array, times: Array, vel: Array, n: int, sr: int) -> Array:
    """Overlap-add of a one-shot (m,) at onset times (seconds) scaled by velocities: (n,). For sparse events
    this is far cheaper than convolving an impulse train."""
    out = np.zeros(n + shot.size)
    for i, v in zip(np.round(np.asarray(times) * sr).astype(np.int64), vel):
        if 0 <= i < n:
            out[i : i + shot.size] += v * shot
    return out[:n]


def _fit_register(pcs: Array, lo: int) -> Array:
    """Lowest MIDI notes >= lo with the given pitch classes (same shape as pcs)."""
    return lo + (np.asarray(pcs) - lo) % 12


# ----------------------------------------------------------------------------------------------- synthesisers
# Each takes the song plan and a generator and returns a stereo performance (n, c) over the whole track; the
# arrangement (silent section) and the level are applied afterwards.


def _drums(song: _Song, rng: np.random.Generator) -> Array:
    """Kick (pitch-swept sine + click), snare (tonal body 180-250 Hz + noise), closed/open hi-hats
    (high-passed noise) on a 16-step grid, with per-bar variations, fills, ghost notes and timing jitter."""
    sr, n = song.sr, song.n
    # one-shots (m,)
    t = np.arange(int(0.45 * sr)) / sr
    f_hi, f_lo, tau = rng.uniform(120, 200), rng.uniform(45, 65), rng.uniform(0.02, 0.05)
    sweep = f_lo + (f_hi - f_lo) * np.exp(-t / tau)
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / sr) * np.exp(-t / rng.uniform(0.15, 0.35))
    kick += rng.uniform(0.2, 0.5) * rng.standard_normal(t.size) * np.exp(-t / 0.002)
    t = np.arange(int(0.3 * sr)) / sr
    f_sn = rng.uniform(180, 250)
    body = np.sin(2 * np.pi * f_sn * t) + 0.4 * np.sin(2 * np.pi * 1.6 * f_sn * t)
    body *= np.exp(-t / rng.uniform(0.05, 0.1))
    rattle = _filter(rng.standard_normal(t.size), "bandpass", (1500.0, 9000.0), sr, 2)
    snare = rng.uniform(0.5, 0.9) * body + 1.5 * rattle * np.exp(-t / rng.uniform(0.08, 0.18))
    hat_cut = rng.uniform(6000, 8000)
    t = np.arange(int(0.5 * sr)) / sr
    hat, open_hat = (_filter(rng.standard_normal(t.size), "highpass", hat_cut, sr) * np.exp(-t / decay)
                     for decay in (rng.uniform(0.015, 0.04), rng.uniform(0.1, 0.2)))
    # patterns on 16 steps per bar: lists of (step index from the start, velocity)
    kick_base = ((0, 8), (0, 6, 8), (0, 8, 10), (0, 3, 8, 11), (0, 7, 10))[int(rng.integers(5))]
    hat_div = int(rng.choice((2, 1)))  # eighths or sixteenths
    ev: dict[str, list[tuple[int, float]]] = {"kick": [], "snare": [], "hat": [], "open": []}
    for b in range(song.n_bars):
        s0 = 16 * b
        kicks = set(kick_base) | ({int(rng.choice((3, 7, 10, 11, 14)))} if rng.random() < 0.3 else set())
        ev["kick"] += [(s0 + s, rng.uniform(0.85, 1.0)) for s in sorted(kicks)]
        ev["snare"] += [(s0 + s, rng.uniform(0.8, 1.0)) for s in (4, 12)]
        if b % 4 == 3 and rng.random() < 0.6:  # fill
            ev["snare"] += [(s0 + s, v) for s, v in zip((13, 14, 15), np.linspace(0.5, 0.8, 3))]
        elif rng.random() < 0.4:  # ghost note
            ev["snare"].append((s0 + int(rng.choice((2, 7, 9, 15))), 0.25))
        open_at = 14 if rng.random() < 0.35 else -1
        for s in range(0, 16, hat_div):
            accent = 0.8 if s % 4 == 0 else 0.55
            ev["open" if s == open_at else "hat"].append((s0 + s, accent * rng.uniform(0.85, 1.0)))
    step = song.beat / 4
    pans = {"kick": 0.0, "snare": rng.uniform(-0.15, 0.15), "hat": rng.uniform(-0.6, 0.6)}
    pans["open"] = pans["hat"]
    shots = {"kick": kick, "snare": snare, "hat": 0.5 * hat, "open": 0.4 * open_hat}
    out = np.zeros((n, 2))
    for name, events in ev.items():
        if not events:
            continue
        steps, vel = (np.array(a, dtype=float) for a in zip(*events))
        times = steps * step + rng.normal(0.0, 0.003, steps.size)
        out += _pan(_place(shots[name], times, vel, n, sr), pans[name])
    return out


def _bass(song: _Song, rng: np.random.Generator) -> Array:
    """Monophonic bass on the chord roots (fundamentals ~40-200 Hz, occasional fifth/octave), a per-track
    eighth-note rhythm, few harmonics, low-passed around 220-320 Hz, near the centre."""
    lo = int(rng.integers(28, 39))
    rhythm = ((0, 3, 4, 6), (0, 2, 4, 6), (0, 4), (0, 1, 2, 3, 4, 5, 6, 7), (0, 3, 6), (0, 2, 3, 4, 6))
    pattern = rhythm[int(rng.integers(len(rhythm)))]
    onset, midi = [], []
    for b in range(song.n_bars):
        root = int(_fit_register(song.chords[b, 0], lo))
        for p in pattern:
            note = root
            r = rng.random()
            if p and r < 0.2 and root + 7 <= 55:
                note = root + 7
            elif p and r < 0.3 and root + 12 <= 55:
                note = root + 12
            onset.append(b * song.bar + p * song.beat / 2)
            midi.append(note)
    onset_a = np.array(onset)
    ioi = np.diff(np.append(onset_a, onset_a[-1] + song.beat))
    dur = ioi * rng.uniform(0.5, 0.95)
    vel = rng.uniform(0.75, 1.0, onset_a.size)
    line = _line(onset_a, dur, np.array(midi), vel, song, release=0.03)
    env = _envelope(line, 0.005, rng.uniform(0.15, 0.5), rng.uniform(0.4, 0.8), 0.03)
    tilt = rng.uniform(1.2, 2.0)
    x = _harmonics(line, [k**-tilt for k in range(1, 7)], song.sr) * env
    x = _filter(x, "lowpass", rng.uniform(220, 320), song.sr)
    return _pan(x, rng.uniform(-0.05, 0.05))


def _chord_voices(song: _Song, lo: int, extra_octave: bool) -> Array:
    """Close voicing of each bar's chord above MIDI ``lo``: (bars, 3 or 4) MIDI notes."""
    v = np.sort(_fit_register(song.chords, lo), axis=1)
    if extra_octave:
        v = np.concatenate([v, _fit_register(song.chords[:, :1], lo) + 12], axis=1)
    return v


def _other(song: _Song, rng: np.random.Generator) -> Array:
    """Mid-range harmony: a detuned sawtooth-like pad (held chords, slow attack, L/R detune for width) and/or
    plucked chords (additive pluck whose upper partials decay faster, strummed, panned per voice)."""
    sr, n = song.sr, song.n
    voices = _chord_voices(song, int(rng.integers(52, 61)), bool(rng.random() < 0.5))
    kind = int(rng.integers(3))  # 0 pad, 1 pluck, 2 both
    bars = np.arange(song.n_bars) * song.bar
    out = np.zeros((n, 2))
    if kind in (0, 2):
        cents = rng.uniform(4, 12)
        attack = rng.uniform(0.05, 0.3)
        amps = [1.0 / k for k in range(1, 9)]
        ratio = 2.0 ** (cents / 1200)
        pad = np.zeros((n, 2))
        for v in range(voices.shape[1]):
            vel = rng.uniform(0.7, 1.0, song.n_bars)
            line = _line(bars, np.full(song.n_bars, song.bar), voices[:, v], vel, song, 0.2)
            env = _envelope(line, attack, 1.0, 1.0, 0.2)
            for c, r in ((0, ratio), (1, 1.0 / ratio)):  # detuned copies left and right: width
                pad[:, c] += _harmonics(line._replace(f0=line.f0 * r, phi=line.phi * r), amps, sr) * env
        pad = _filter(pad, "lowpass", rng.uniform(2000, 4500), sr, 2)
        out += pad * (1.0 if kind == 0 else 0.6)
    if kind in (1, 2):
        rhythms = ((0, 3, 6), (0, 2, 3, 5, 6), (0, 4), (1, 3, 5, 7), (0, 3, 4, 6))
        pattern = np.array(rhythms[int(rng.integers(len(rhythms)))])
        strum = rng.uniform(0.008, 0.02)
        tau, beta, pos = rng.uniform(0.25, 0.8), rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.3)
        amps = [abs(np.sin(np.pi * k * pos)) / k for k in range(1, 11)]
        starts = (bars[:, None] + pattern[None, :] * song.beat / 2).ravel()  # (strums,)
        ioi = np.diff(np.append(starts, starts[-1] + song.beat))
        centre, spread = rng.uniform(-0.3, 0.3), rng.uniform(0.2, 0.6)
        nv = voices.shape[1]
        for v in range(nv):
            midi = np.repeat(voices[:, v], pattern.size)
            vel = rng.uniform(0.6, 1.0, starts.size)
            line = _line(starts + v * strum, ioi * 0.9, midi, vel, song, 0.05)
            decay = np.exp(-line.t * beta / tau)
            x = _harmonics(line, amps, sr, decay) * _envelope(line, 0.002, tau, 0.0, 0.05)
            out += _pan(x, float(np.clip(centre + spread * (v - (nv - 1) / 2) / nv, -1, 1)))
    return out


_VOWELS = np.array([  # formant frequencies F1, F2, F3 (Hz); F4, F5 are nearly vowel-independent
    [800, 1150, 2900, 3500, 4500],  # a
    [400, 1600, 2700, 3400, 4400],  # e
    [270, 2100, 3000, 3500, 4500],  # i
    [450, 800, 2830, 3400, 4400],  # o
    [325, 700, 2530, 3300, 4300],  # u
], dtype=float)
_FORMANT_BW = np.array([80.0, 90.0, 120.0, 150.0, 200.0])
_FORMANT_AMP = np.array([1.0, 0.55, 0.3, 0.2, 0.1])


def _vocals(song: _Song, rng: np.random.Generator) -> Array:
    """A sung line: phrases of scale notes (~150-600 Hz) separated by breaths, glottal-like harmonics
    (-6 dB per octave) with 5-6 Hz vibrato and portamento, shaped by smoothly moving vowel formants, plus
    breath noise and sibilants."""
    sr, n = song.sr, song.n
    lo = int(rng.integers(52, 63))
    scale = song.scale()
    notes = np.array([m for m in range(lo, lo + 15) if m % 12 in scale])
    beat = song.beat
    onset, dur, midi, vowel, breaths = [], [], [], [], []
    t = float(rng.choice((0.0, 0.5, 1.0))) * beat
    i = int(rng.integers(notes.size))
    while t < song.duration:
        breaths.append(t - 0.3)
        end = t + float(rng.choice((4, 6, 8))) * beat
        while t < end:
            d = float(rng.choice((0.5, 1.0, 1.0, 1.5, 2.0))) * beat
            i = int(np.clip(i + rng.choice((-2, -1, -1, 0, 1, 1, 2)), 0, notes.size - 1))
            onset.append(t)
            dur.append(d * 0.95)
            midi.append(notes[i])
            vowel.append(int(rng.integers(len(_VOWELS))))
            t += d
        t += float(rng.choice((1, 2, 3))) * beat  # rest between phrases
    rate, depth, phase = rng.uniform(5.0, 6.0), rng.uniform(0.2, 0.5), rng.uniform(0, 2 * np.pi)
    glide = np.exp(-1.0 / (0.025 * sr))
    pos_t = np.arange(n) / sr

    def curve(m: Array, tn: Array) -> Array:
        smooth = lfilter([1 - glide], [1, -glide], m - m[0]) + m[0]  # portamento
        vib = depth * np.clip((tn - 0.2) / 0.3, 0, 1) * np.sin(2 * np.pi * rate * pos_t + phase)
        return smooth + vib

    onset_a = np.array(onset)
    vel = rng.uniform(0.7, 1.0, onset_a.size)
    line = _line(onset_a, np.array(dur), np.array(midi), vel, song, 0.08, curve)
    env = _envelope(line, rng.uniform(0.03, 0.07), 0.3, 0.8, 0.08)
    # formant trajectories at a control rate, smoothed, then per-harmonic gains interpolated to audio rate
    hop = 64
    note_idx = np.searchsorted(np.round(onset_a * sr), np.arange(0, n, hop), side="right") - 1
    fc = _VOWELS[np.array(vowel)[np.maximum(note_idx, 0)]] * rng.uniform(0.95, 1.1)  # (n_ctrl, 5)
    a = np.exp(-1.0 / (0.04 * sr / hop))
    fc = lfilter([1 - a], [1, -a], fc - fc[0], axis=0) + fc[0]
    f0c = line.f0[::hop]
    i0 = np.arange(n) // hop  # linear interpolation from the control rate: g[i0] + w * (g[i0 + 1] - g[i0])
    w = ((np.arange(n) % hop) / hop).astype(np.float32)
    phi = np.mod(line.phi, 2 * np.pi).astype(np.float32)
    s_prev, s, c2 = np.zeros_like(phi), np.sin(phi), 2 * np.cos(phi)
    x = np.zeros_like(phi)
    for k in range(1, 41):
        if k > 1:
            s, s_prev = c2 * s - s_prev, s
        fk = k * f0c
        if fk.min() > 0.45 * sr:
            break
        g = (_FORMANT_AMP / np.sqrt(1 + ((fk[:, None] - fc) / (_FORMANT_BW / 2)) ** 2)).sum(axis=1) / k
        g = (g * (fk < 0.45 * sr)).astype(np.float32)
        dg = np.append(np.diff(g), np.float32(0))
        x += (g[i0] + w * dg[i0]) * s
    x = x * (env / 0.3)
    # breaths before phrases and sibilants on some note onsets
    tb = np.arange(int(0.25 * sr)) / sr
    breath = _filter(rng.standard_normal(tb.size), "bandpass", (500.0, 3000.0), sr, 2) * np.hanning(tb.size)
    x += 0.08 * _place(breath, np.array(breaths), np.ones(len(breaths)), n, sr)
    ts = np.arange(int(0.05 * sr)) / sr
    sib = _filter(rng.standard_normal(ts.size), "highpass", 5000.0, sr) * np.hanning(ts.size)
    sib_on = onset_a[rng.random(onset_a.size) < 0.25]
    x += 0.15 * _place(sib, sib_on, np.ones(sib_on.size), n, sr)
    return _pan(x, rng.uniform(-0.1, 0.1))


def _piano(song: _Song, rng: np.random.Generator) -> Array:
    """Piano-like part: percussive, exponentially decaying inharmonic notes (f_k = k f0 sqrt(1 + B k^2), upper
    partials decaying faster, lower notes ringing longer), as block chords or arpeggios, panned by pitch."""
    sr, n = song.sr, song.n
    voices = _chord_voices(song, int(rng.integers(48, 58)), True)  # (bars, 4)
    bars = np.arange(song.n_bars) * song.bar
    if rng.random() < 0.5:  # block chords on a rhythm
        pattern = np.array(((0, 3, 6), (0, 4), (0, 2, 4, 6), (0, 3, 4, 7))[int(rng.integers(4))])
        starts = (bars[:, None] + pattern[None, :] * song.beat / 2).ravel()
        onset = np.repeat(starts, 4)
        midi = np.repeat(voices, pattern.size, axis=0).ravel()
    else:  # arpeggio in eighths, up or up-down
        order = np.array((0, 1, 2, 3, 2, 1, 0, 1) if rng.random() < 0.5 else (0, 1, 2, 3, 0, 1, 2, 3))
        onset = (bars[:, None] + np.arange(8)[None, :] * song.beat / 2).ravel()
        midi = voices[:, order].ravel()
    inharm = rng.uniform(1e-4, 4e-4)
    amps = [k**-1.2 for k in range(1, 11)]
    centre = rng.uniform(-0.3, 0.3)
    out = np.zeros((n, 2))
    for v in range(4):  # round-robin voices so notes ring over each other
        o, m = onset[v::4], midi[v::4]
        ioi = np.diff(np.append(o, o[-1] + song.bar))
        line = _line(o, ioi, m, rng.uniform(0.5, 1.0, o.size), song, 0.08)
        tau = rng.uniform(0.8, 1.5) * np.sqrt(261.6 / line.f0)
        env = _envelope(line, 0.002, 1.0, 1.0, 0.08) * np.exp(-line.t / tau)
        faster = np.exp(-0.3 * line.t / tau)
        x, g = np.zeros(n), np.ones(n)
        for k, a in enumerate(amps, start=1):
            ratio = k * np.sqrt(1 + inharm * k * k)
            x += (a * (ratio * line.f0 < 0.45 * sr)) * g * np.sin(ratio * line.phi)
            g *= faster
        pan = float(np.clip(centre + (np.mean(m) - 60) / 40, -0.8, 0.8))
        out += _pan(x * env, pan)
    return out


_SYNTHS: dict[str, Callable[[_Song, np.random.Generator], Array]] = {
    "drums": _drums, "bass": _bass, "other": _other, "vocals": _vocals, "piano": _piano,
}
_GAIN_DB = {"drums": (-2, 2), "bass": (-4, 0), "other": (-6, -1), "vocals": (-2, 2), "piano": (-5, 0),
            "accompaniment": (-1, 1)}
_WET = {"drums": (0.03, 0.12), "bass": (0.0, 0.0), "other": (0.1, 0.3), "vocals": (0.08, 0.25),
        "piano": (0.1, 0.25)}  # reverb send
_ACCOMPANIMENT = ("drums", "bass", "other")
_RATE_DIV = {"bass": 4, "other": 2, "vocals": 2, "piano": 2}  # render-rate divisors (band-limited parts)


# ----------------------------------------------------------------------------------------------- rendering


def _rng(seed: int, split: str, index: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_CODES[split], index, *key)))


def _name_key(name: str) -> int:
    return zlib.crc32(name.encode())


def _performance(name: str, song: _Song, seed: int, split: str, index: int) -> Array:
    """A source's levelled, reverberated performance over the whole track (n, c)."""
    if name == "accompaniment":
        x = sum(_performance(s, song, seed, split, index) for s in _ACCOMPANIMENT)
        rng = _rng(seed, split, index, _name_key(name), 0)
    else:
        rng = _rng(seed, split, index, _name_key(name), 0)
        div = _RATE_DIV.get(name, 1)
        while song.sr % div:
            div //= 2
        if div > 1:  # band-limited parts are rendered at a fraction of the rate, then upsampled
            low = replace(song, sr=song.sr // div, n=-(-song.n // div))
            x = resample_poly(_SYNTHS[name](low, rng), div, 1, axis=0)[: song.n]
        else:
            x = _SYNTHS[name](song, rng)
        wet = rng.uniform(*_WET[name])
        if wet > 0:
            x = x + wet * _reverb(x.astype(np.float32), song)
    rms = float(np.sqrt(np.mean(x**2)))
    return x * (_REF_RMS / max(rms, 1e-12) * 10 ** (rng.uniform(*_GAIN_DB[name]) / 20))


def _check_sources(sources: Sequence[str]) -> tuple[str, ...]:
    if isinstance(sources, str):
        raise TypeError(f"sources must be a list of names, got the string {sources!r}")
    out = tuple(str(s) for s in sources)
    if not out:
        raise ValueError("sources is empty")
    unknown = [s for s in out if s not in KNOWN_SOURCES]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; known sources: {', '.join(KNOWN_SOURCES)}")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate source names in {list(out)}")
    return out


def render_track(split: str, index: int, *, sources: Sequence[str] = MUSDB_SOURCES, duration: float = 12.0,
                 sample_rate: int = 44100, seed: int = 0, bit_depth: int = 16,
                 dither: bool = True) -> dict[str, Array]:
    """Render one track in memory, exactly as :func:`generate` stores it.

    Args:
        split: ``"train"``, ``"valid"`` or ``"test"`` (part of the random seed).
        index: track index within the split.

    Returns:
        ``{"mixture": x, <source>: x, ...}`` with x shaped (n, c): int16 for ``bit_depth=16``, int32 holding
        24-bit values (|x| < 2**23) for 24, float32 on a 2**-23 grid for 32. ``mixture`` is the exact sum of
        the stems (in float64 for ``bit_depth=32``).
    """
    sources = _check_sources(sources)
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {list(_SPLIT_CODES)}, got {split!r}")
    if bit_depth not in (16, 24, 32):
        raise ValueError(f"bit_depth must be 16, 24 or 32 (float), got {bit_depth}")
    n = round(duration * sample_rate)
    song = _plan_song(_rng(seed, split, index), n, sample_rate)
    perf, masks, rngs = [], [], []
    for name in sources:
        rng = _rng(seed, split, index, _name_key(name), 1)
        masks.append(_activity(song, rng))
        rngs.append(rng)
        perf.append(_performance(name, song, seed, split, index) * masks[-1][:, None])
    # headroom: neither the mixture nor any stem may exceed the peak target, minus the worst rounding+dither
    full = 2 ** (min(bit_depth, 24) - 1) - 1
    peak = max(float(np.abs(sum(perf)).max()), *(float(np.abs(p).max()) for p in perf))
    scale = (10 ** (song.peak_db / 20) * full - 2 * len(sources)) / peak
    stems = {}
    for name, x, mask, rng in zip(sources, perf, masks, rngs):
        y = x * scale
        if dither:  # TPDF, +-1 LSB, only where the source plays: silent sections stay exact zeros
            y += (rng.random(y.shape) - rng.random(y.shape)) * (mask > 0)[:, None]
        stems[name] = np.rint(y).astype(np.int64)
    mix = sum(stems.values())
    if np.abs(mix).max() > full:  # cannot happen by construction; guard the invariant anyway
        raise RuntimeError("synthetic mixture clips; this is a bug in mss.data.synth")
    out = {"mixture": mix, **stems}
    if bit_depth == 16:
        return {k: v.astype(np.int16) for k, v in out.items()}
    if bit_depth == 24:
        return {k: v.astype(np.int32) for k, v in out.items()}
    return {k: (v / 2.0**23).astype(np.float32) for k, v in out.items()}


def _write_wav(path: Path, x: Array, sr: int, bit_depth: int) -> None:
    if bit_depth == 16:
        sf.write(path, x, sr, subtype="PCM_16")
    elif bit_depth == 24:  # libsndfile maps int32 full scale to PCM_24 by dropping the low byte
        sf.write(path, x.astype(np.int32) << 8, sr, subtype="PCM_24")
    else:
        sf.write(path, x, sr, subtype="FLOAT")


# ----------------------------------------------------------------------------------------------- dataset


def track_names(n_train: int, n_valid: int, n_test: int) -> dict[str, list[str]]:
    """Track names per split: ``{"train": [synth-train-000, ...], "valid": [...], "test": [...]}``."""
    return {split: [f"synth-{split}-{i:03d}" for i in range(count)]
            for split, count in (("train", n_train), ("valid", n_valid), ("test", n_test))}


def read_manifest(root: Path) -> dict | None:
    """The parsed ``synth.json`` of ``root`` (``{}`` when unreadable), or ``None`` when there is none."""
    path = root / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _diff(manifest: dict, params: dict) -> list[str]:
    old = dict(manifest.get("params", {}), version=manifest.get("version"))
    new = dict(params, version=FORMAT_VERSION)
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def _to_float(x: Array, bit_depth: int) -> Array:
    """Stored samples (n, c) as float64 in [-1, 1)."""
    return x / 2.0 ** (bit_depth - 1) if bit_depth in (16, 24) else x.astype(np.float64)


def _write_stem_mp4(path: Path, audio: dict[str, Array], sr: int, bit_depth: int) -> None:
    """MUSDB18 STEMS file: AAC streams 0 mixture, 1 drums, 2 bass, 3 other, 4 vocals."""
    import stempeg  # imported lazily: only this option needs it (and ffmpeg)

    order = ("mixture", *MUSDB_SOURCES)
    data = np.stack([_to_float(audio[s], bit_depth) for s in order])  # (s, n, c)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = stempeg.StreamsWriter(codec="aac", bitrate=256000, stem_names=list(order))
    stempeg.write_stems(str(path), data, sample_rate=sr, writer=writer)


def generate(root: str | os.PathLike, *, sources: Sequence[str] = MUSDB_SOURCES, n_train: int = N_TRAIN,
             n_valid: int = N_VALID, n_test: int = N_TEST, duration: float = DURATION, sample_rate: int = 44100,
             seed: int = SEED, bit_depth: int = 16, dither: bool = True, stems_mp4: bool = False,
             overwrite: bool = False) -> Path:
    """Write a synthetic dataset in the MUSDB18-HQ layout under ``root`` (see the module docstring).

    Generation happens in a temporary sibling folder that is renamed into place, ``valid_tracks.txt`` and
    ``synth.json`` being written last, so ``root`` is either absent or complete.

    Args:
        root: destination folder.
        sources: stem names, from :data:`KNOWN_SOURCES` (``accompaniment`` = drums + bass + other).
        n_train, n_valid, n_test: track counts; validation tracks are written into ``train/``.
        duration: seconds per track (>= 4).
        sample_rate: Hz (>= 8000).
        seed: non-negative base seed.
        bit_depth: 16 or 24 (PCM) or 32 (float WAV).
        dither: TPDF dither of +-1 LSB where a source plays.
        stems_mp4: also write ``root/stems/{train,test}/<track>.stem.mp4`` (MUSDB18 STEMS format; requires
            the 4 MUSDB sources and ffmpeg).
        overwrite: replace an existing synthetic dataset generated with other parameters. A non-empty folder
            without a manifest is never deleted.

    Returns:
        ``Path(root)``.

    Raises:
        ValueError: invalid parameters or unknown source names.
        FileExistsError: ``root`` holds a dataset with different parameters (and not ``overwrite``), or other
            files.
    """
    root = Path(root).expanduser()
    sources = _check_sources(sources)
    if bit_depth not in (16, 24, 32):
        raise ValueError(f"bit_depth must be 16, 24 or 32 (float), got {bit_depth}")
    if not float(duration) >= MIN_DURATION:
        raise ValueError(f"duration must be >= {MIN_DURATION} s (each source needs a >= 1.5 s silent "
                         f"section), got {duration}")
    if int(sample_rate) != sample_rate or sample_rate < 8000:
        raise ValueError(f"sample_rate must be an integer >= 8000, got {sample_rate}")
    counts = (n_train, n_valid, n_test)
    if any(int(c) != c or c < 0 for c in counts) or sum(counts) == 0:
        raise ValueError(f"track counts must be non-negative integers, not all zero, got {counts}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if stems_mp4 and set(sources) != set(MUSDB_SOURCES):
        raise ValueError(f"stems_mp4 needs exactly the MUSDB sources {list(MUSDB_SOURCES)}, "
                         f"got {list(sources)}")
    params = {"sources": list(sources), "n_train": int(n_train), "n_valid": int(n_valid),
              "n_test": int(n_test), "duration": float(duration), "sample_rate": int(sample_rate),
              "seed": int(seed), "bit_depth": int(bit_depth), "dither": bool(dither),
              "stems_mp4": bool(stems_mp4)}

    replacing = False
    if root.exists():
        if not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a folder")
        manifest = read_manifest(root)
        if manifest is not None:
            diff = _diff(manifest, params)
            if not diff:
                return root
            if not overwrite:
                have = dict(manifest.get("params", {}), version=manifest.get("version"))
                want = dict(params, version=FORMAT_VERSION)
                raise FileExistsError(
                    f"{root} holds a synthetic dataset generated with other parameters (differing: {', '.join(diff)}"
                    f"; it has {', '.join(f'{k}={have.get(k)!r}' for k in diff)}, this asks for "
                    f"{', '.join(f'{k}={want.get(k)!r}' for k in diff)}); pass overwrite=true to replace it "
                    "(data.synth.overwrite=true for mss.train / mss.evaluate)")
            replacing = True
        elif any(root.iterdir()):
            raise FileExistsError(f"{root} exists, is not empty and holds no {MANIFEST}; refusing to write "
                                  "there (even with overwrite=True)")

    names = track_names(int(n_train), int(n_valid), int(n_test))
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        for split, subset in (("train", "train"), ("valid", "train"), ("test", "test")):
            (tmp / subset).mkdir(parents=True, exist_ok=True)
            if stems_mp4:
                (tmp / "stems" / subset).mkdir(parents=True, exist_ok=True)
            for index, name in enumerate(names[split]):
                folder = tmp / subset / name
                folder.mkdir()
                audio = render_track(split, index, sources=sources, duration=duration,
                                     sample_rate=int(sample_rate), seed=int(seed), bit_depth=bit_depth,
                                     dither=dither)
                for stem, x in audio.items():
                    _write_wav(folder / f"{stem}.wav", x, int(sample_rate), bit_depth)
                if stems_mp4:
                    mp4 = tmp / "stems" / subset / f"{name}.stem.mp4"
                    _write_stem_mp4(mp4, audio, int(sample_rate), bit_depth)
        valid_text = "".join(f"{name}\n" for name in names["valid"])
        if stems_mp4:
            (tmp / "stems" / VALID_LIST).write_text(valid_text)
        (tmp / VALID_LIST).write_text(valid_text)
        manifest = {"format": "mss.data.synth", "version": FORMAT_VERSION, "params": params, "tracks": names}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _move_into_place(tmp, root, params, replacing)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _move_into_place(tmp: Path, root: Path, params: dict, replacing: bool) -> None:
    """Rename the finished ``tmp`` folder to ``root`` (moving an old dataset aside first when ``replacing``);
    tolerate a concurrent writer that finished the same dataset first."""
    old = None
    if replacing:
        old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(root, old)
    elif root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    try:
        os.rename(tmp, root)
    except OSError:
        if old is not None and not root.exists():
            os.rename(old, root)  # put the previous dataset back
            raise
        manifest = read_manifest(root)
        if manifest is None or _diff(manifest, params):
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------- CLI


@dataclass
class SynthConfig:
    """Command-line schema of ``python -m mss.data.synth`` (see :func:`generate`)."""

    root: str = MISSING
    sources: list[str] = field(default_factory=lambda: list(MUSDB_SOURCES))
    n_train: int = N_TRAIN
    n_valid: int = N_VALID
    n_test: int = N_TEST
    duration: float = DURATION
    sample_rate: int = 44100
    seed: int = SEED
    bit_depth: int = 16
    dither: bool = True
    stems_mp4: bool = False
    overwrite: bool = False


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``key=value`` overrides of :class:`SynthConfig`; returns the exit status."""
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        defaults = OmegaConf.to_container(OmegaConf.structured(SynthConfig))
        keys = " ".join(f"{k}={'[' + ','.join(v) + ']' if isinstance(v, list) else v}"
                        for k, v in defaults.items())
        print(f"usage: python -m mss.data.synth {keys}\n{__doc__.strip().splitlines()[0]} (root is required)")
        return 0
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(SynthConfig), OmegaConf.from_cli(args))
    except ConfigKeyError as err:
        print(f"error: unknown key {str(err.key) if getattr(err, 'key', None) else ''!r} "
              f"({str(err).splitlines()[0]}); valid keys: {', '.join(SynthConfig.__dataclass_fields__)}",
              file=sys.stderr)
        return 2
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        print(f"error: {f'{key}: ' if key else ''}{str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    if OmegaConf.is_missing(cfg, "root"):
        print("error: root=DIR is required (the folder to write the dataset to)", file=sys.stderr)
        return 2
    opts = OmegaConf.to_container(cfg)
    root = Path(opts.pop("root")).expanduser()
    before = (root / MANIFEST).read_text() if (root / MANIFEST).is_file() else None
    try:
        generate(root, **opts)
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    n = opts["n_train"] + opts["n_valid"] + opts["n_test"]
    what = "already complete" if before == (root / MANIFEST).read_text() else "wrote"
    fmt = "float" if opts["bit_depth"] == 32 else f"PCM_{opts['bit_depth']}"
    print(f"{what}: {root} ({n} tracks: {opts['n_train']} train + {opts['n_valid']} valid in train/, "
          f"{opts['n_test']} test; {'/'.join(opts['sources'])}; {opts['duration']:g} s at "
          f"{opts['sample_rate']} Hz, {fmt}{'; + stems/*.stem.mp4' if opts['stems_mp4'] else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
