"""Dataset-level pitch / tempo augmentation (:class:`Repitch`): with some probability an example ``(S, C, L)``
gets the same pitch and tempo change on every stem and comes back with exactly the requested length. It runs in
the data-loader workers (the dataset calls it; it is built from ``augment.repitch`` and handed to the data config
by interpolation). Two backends of :func:`mss.audio.vocoder.repitch`: ``vocoder`` (phase-locked vocoder +
polyphase resampling, all stems in one STFT, ~0.2 s CPU per 4-stem 8.8 s example; the default) and
``rubberband`` (pedalboard's Rubber Band, better on drums, ~18x slower); docs/training_recipes.md has the
measurements.

Shape legend: S sources, C channels, L samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from mss.audio.vocoder import repitch

__all__ = ["Repitch"]


class Repitch:
    """Dataset-level pitch/tempo augmentation for one example ``(S, C, L)`` (runs in data-loader workers).

    With probability ``proba``: pitch ~ uniform integer in ``[-max_pitch, max_pitch]`` semitones (uniform real
    with ``integer_pitch=False``), tempo change ~ N(0, ``tempo_std`` %) clipped to +-``max_tempo`` % (uniform in
    +-``max_tempo`` % when ``tempo_std`` is ``None``), identical for every stem in ``sources`` (default all;
    other stems are cropped unchanged). The caller reads :meth:`input_length` samples and gets exactly
    ``length`` back (a guard band on each side hides the edge effects of the transforms).

    Args:
        sample_rate: audio rate (``${data.sample_rate}``).
        backend: ``vocoder`` (fast, all stems in one STFT) or ``rubberband`` (pedalboard).
        sources: stem names to repitch (``None`` = all), e.g. ``[vocals]``.
        n_fft, hop_length: the vocoder's STFT (``n_fft`` a multiple of ``hop_length``); 2048/1024 measured as good
            as 2048/512 in round-trip quality at half the cost (docs/training_recipes.md).
    """

    def __init__(self, proba: float = 0.2, max_pitch: float = 2, max_tempo: float = 12.0,
                 tempo_std: float | None = 5.0, sample_rate: int = 44100, backend: str = "vocoder",
                 sources: Sequence[str] | None = None, integer_pitch: bool = True, guard: float = 0.05,
                 n_fft: int = 2048, hop_length: int = 1024):
        if backend not in ("vocoder", "rubberband"):
            raise ValueError(f"data.repitch.backend={backend!r}: expected 'vocoder' or 'rubberband'")
        if not 0 <= max_tempo < 100:
            raise ValueError(f"data.repitch.max_tempo={max_tempo}: percent in [0, 100)")
        self.proba, self.max_pitch, self.max_tempo, self.tempo_std = proba, max_pitch, max_tempo, tempo_std
        self.integer_pitch = integer_pitch
        self.sample_rate, self.backend, self.sources = int(sample_rate), backend, sources
        self.guard = round(guard * sample_rate)
        if n_fft % hop_length:
            raise ValueError(f"data.repitch: n_fft={n_fft} must be a multiple of hop_length={hop_length}")
        self.n_fft, self.hop_length = int(n_fft), int(hop_length)

    def input_length(self, length: int) -> int:
        """Samples to read so that any drawn tempo still yields ``length`` output samples plus the guards."""
        return math.ceil((length + 2 * self.guard) * (1 + self.max_tempo / 100)) + 1

    def draw(self, generator: torch.Generator | None = None) -> tuple[float, float] | None:
        """``(pitch semitones, tempo factor)`` or ``None`` (no change), from torch's RNG (per-item seeded)."""
        if torch.rand((), generator=generator).item() >= self.proba:
            return None
        if self.integer_pitch:
            pitch = float(torch.randint(-int(self.max_pitch), int(self.max_pitch) + 1, (), generator=generator))
        else:
            pitch = (2 * torch.rand((), generator=generator).item() - 1) * self.max_pitch
        if self.tempo_std is None:
            pct = (2 * torch.rand((), generator=generator).item() - 1) * self.max_tempo
        else:
            pct = torch.randn((), generator=generator).item() * self.tempo_std
        return pitch, 1.0 + max(-self.max_tempo, min(self.max_tempo, pct)) / 100.0

    def __call__(self, stems: Tensor, change: tuple[float, float], length: int,
                 names: Sequence[str] | None = None) -> Tensor:
        """``stems`` ``(S, C, >= input_length(length))`` → ``(S, C, length)`` with the drawn ``change``."""
        pitch, tempo = change
        need = self.input_length(length)
        if stems.shape[-1] < need:
            raise ValueError(f"Repitch: got {stems.shape[-1]} samples, needs input_length({length}) = {need}")
        picked = [True] * stems.shape[0] if self.sources is None or names is None else [
            n in self.sources for n in names]
        out = stems[..., self.guard: self.guard + length].clone()
        rows = [i for i, p in enumerate(picked) if p]
        if rows:
            src = stems[rows][..., : math.ceil((length + 2 * self.guard) * tempo) + 1]
            shifted = repitch(src, pitch, tempo, self.sample_rate, self.backend, self.n_fft, self.hop_length)
            out[rows] = shifted[..., self.guard: self.guard + length]
        return out
