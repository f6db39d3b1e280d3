"""The instruments of the synthetic songs: one synthesiser per source (drums, bass, other, vocals, piano) with the
source's spectral and temporal character, their building blocks (envelopes, harmonics, pan, filters, the song's
reverb), and :func:`performance`, which renders, reverberates and levels one source (``accompaniment`` = drums +
bass + other) from its own seeds.

Shape legend: n = samples, c = channels (2), m = notes or one-shot samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
from scipy import fft
from scipy.signal import butter, lfilter, resample_poly, sosfilt

from mss.data.synth.song import Line, Song, name_key, note_line, track_rng

__all__ = ["KNOWN_SOURCES", "MUSDB_SOURCES", "check_sources", "pan_mono", "performance"]

MUSDB_SOURCES = ("drums", "bass", "other", "vocals")
KNOWN_SOURCES = ("drums", "bass", "other", "vocals", "piano", "accompaniment")
_REF_RMS = 0.1  # level of a source performance at 0 dB gain, before the global headroom scaling

Array = np.ndarray


# ----------------------------------------------------------------------------------------------- building blocks


def _envelope(line: Line, attack: float, decay: float, sustain: float, release: float) -> Array:
    """ADSR-like envelope (n,): linear attack, exponential decay towards ``sustain``, linear release after the
    note's duration, scaled by velocity."""
    t = line.t
    env = np.minimum(t / attack, 1.0)
    if sustain < 1.0:
        env *= sustain + (1.0 - sustain) * np.exp(-t / decay)
    env *= np.clip(1.0 - (t - line.dur) / release, 0.0, 1.0)
    return env * line.vel


def _harmonics(line: Line, amps: Sequence[float], sr: int, decay: Array | None = None) -> Array:
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


def pan_mono(x: Array, pan: float) -> Array:
    """Constant-power pan of a mono signal (n,) to stereo (n, c); pan in [-1, 1], 0 = centre (gain 1, 1)."""
    theta = (pan + 1.0) * np.pi / 4.0
    return np.sqrt(2.0) * np.stack([np.cos(theta) * x, np.sin(theta) * x], axis=1)


def _filter(x: Array, kind: str, cutoff: float | tuple[float, float], sr: int, order: int = 4) -> Array:
    """Butterworth filter along axis 0; cutoffs are clamped below Nyquist."""
    nyq_safe = 0.45 * sr
    wn = tuple(min(c, nyq_safe) for c in cutoff) if isinstance(cutoff, tuple) else min(cutoff, nyq_safe)
    return sosfilt(butter(order, wn, btype=kind, fs=sr, output="sos"), x, axis=0)


def _reverb(x: Array, song: Song) -> Array:
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


def _drums(song: Song, rng: np.random.Generator) -> Array:
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
        out += pan_mono(_place(shots[name], times, vel, n, sr), pans[name])
    return out


def _bass(song: Song, rng: np.random.Generator) -> Array:
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
    line = note_line(onset_a, dur, np.array(midi), vel, song, release=0.03)
    env = _envelope(line, 0.005, rng.uniform(0.15, 0.5), rng.uniform(0.4, 0.8), 0.03)
    tilt = rng.uniform(1.2, 2.0)
    x = _harmonics(line, [k**-tilt for k in range(1, 7)], song.sr) * env
    x = _filter(x, "lowpass", rng.uniform(220, 320), song.sr)
    return pan_mono(x, rng.uniform(-0.05, 0.05))


def _chord_voices(song: Song, lo: int, extra_octave: bool) -> Array:
    """Close voicing of each bar's chord above MIDI ``lo``: (bars, 3 or 4) MIDI notes."""
    v = np.sort(_fit_register(song.chords, lo), axis=1)
    if extra_octave:
        v = np.concatenate([v, _fit_register(song.chords[:, :1], lo) + 12], axis=1)
    return v


def _other(song: Song, rng: np.random.Generator) -> Array:
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
            line = note_line(bars, np.full(song.n_bars, song.bar), voices[:, v], vel, song, 0.2)
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
            line = note_line(starts + v * strum, ioi * 0.9, midi, vel, song, 0.05)
            decay = np.exp(-line.t * beta / tau)
            x = _harmonics(line, amps, sr, decay) * _envelope(line, 0.002, tau, 0.0, 0.05)
            out += pan_mono(x, float(np.clip(centre + spread * (v - (nv - 1) / 2) / nv, -1, 1)))
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


def _vocals(song: Song, rng: np.random.Generator) -> Array:
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
    line = note_line(onset_a, np.array(dur), np.array(midi), vel, song, 0.08, curve)
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
    return pan_mono(x, rng.uniform(-0.1, 0.1))


def _piano(song: Song, rng: np.random.Generator) -> Array:
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
        line = note_line(o, ioi, m, rng.uniform(0.5, 1.0, o.size), song, 0.08)
        tau = rng.uniform(0.8, 1.5) * np.sqrt(261.6 / line.f0)
        env = _envelope(line, 0.002, 1.0, 1.0, 0.08) * np.exp(-line.t / tau)
        faster = np.exp(-0.3 * line.t / tau)
        x, g = np.zeros(n), np.ones(n)
        for k, a in enumerate(amps, start=1):
            ratio = k * np.sqrt(1 + inharm * k * k)
            x += (a * (ratio * line.f0 < 0.45 * sr)) * g * np.sin(ratio * line.phi)
            g *= faster
        pan = float(np.clip(centre + (np.mean(m) - 60) / 40, -0.8, 0.8))
        out += pan_mono(x * env, pan)
    return out


_SYNTHS: dict[str, Callable[[Song, np.random.Generator], Array]] = {
    "drums": _drums, "bass": _bass, "other": _other, "vocals": _vocals, "piano": _piano,
}
_GAIN_DB = {"drums": (-2, 2), "bass": (-4, 0), "other": (-6, -1), "vocals": (-2, 2), "piano": (-5, 0),
            "accompaniment": (-1, 1)}
_WET = {"drums": (0.03, 0.12), "bass": (0.0, 0.0), "other": (0.1, 0.3), "vocals": (0.08, 0.25),
        "piano": (0.1, 0.25)}  # reverb send
_ACCOMPANIMENT = ("drums", "bass", "other")
_RATE_DIV = {"bass": 4, "other": 2, "vocals": 2, "piano": 2}  # render-rate divisors (band-limited parts)


# ----------------------------------------------------------------------------------------------- performance


def performance(name: str, song: Song, seed: int, split: str, index: int, key: str | None = None) -> Array:
    """A source's levelled, reverberated performance over the whole track (n, c). ``key`` (default ``name``) names
    the performer in the seeds: two performances of one synthesiser with different keys (the two guitar tracks of a
    MoisesDB-layout song) are independent."""
    key = name if key is None else key
    if name == "accompaniment":
        x = sum(performance(s, song, seed, split, index) for s in _ACCOMPANIMENT)
        rng = track_rng(seed, split, index, name_key(key), 0)
    else:
        rng = track_rng(seed, split, index, name_key(key), 0)
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


def check_sources(sources: Sequence[str]) -> tuple[str, ...]:
    """``sources`` as a tuple of names from :data:`KNOWN_SOURCES`, without duplicates."""
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
