"""Training augmentations.

Batch augmentations are small ``nn.Module`` s on the stem batch ``(B, S, C, T)`` that run on the training device
before the mixture is formed (``SeparationModule`` calls ``augment(stems)``, then ``mix = stems.sum(1)``):

- :class:`Shift`: random time offset per source (Demucs); the output is ``shift`` samples shorter (the data
  module reads ``data.segment + augment shift`` so the training length stays ``data.segment``).
- :class:`FlipChannels` (L/R swap per source), :class:`FlipSign` (x -1 per source), :class:`Scale` (gain
  U[min, max] per source), :class:`GainDB` (gain in dB per source), :class:`Silence` (stem replaced by zeros).
- :class:`Remix`: each source is permuted independently across the examples of fixed-size groups of the batch, so
  new mixtures are formed without depending on how the global batch is split over devices.
- :class:`Compose`: the chain built from config (``conf/augment/*.yaml``); ``null`` entries are skipped.

Every augmentation draws its random numbers on the CPU from an optional ``torch.Generator`` (else torch's global
RNG, which Lightning seeds), then moves them to the batch's device: results are reproducible and identical on CPU
and GPU. ``only: [vocals]`` restricts an augmentation to some stems (names resolved by :class:`Compose`).

Dataset-level **repitch / tempo** (:class:`Repitch`) runs in the data-loader workers on one example ``(S, C, L)``,
applying the same pitch and tempo change to every stem and returning exactly the requested length. Two backends:
``vocoder`` (batched phase-locked vocoder + FFT resampling in torch, the default for throughput) and ``rubberband``
(pedalboard's Rubber Band, a little better on voice, ~6x slower); see docs/training_recipes.md for the measurements.

Shape legend: B batch, S sources, C channels, T time; F frequency bins, N frames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mss.audio.spectral import istft, stft

__all__ = ["Augmentation", "Compose", "FlipChannels", "FlipSign", "GainDB", "Remix", "Repitch", "Scale", "Shift",
           "Silence", "phase_vocoder", "fft_resample", "repitch"]


def _rand(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Uniform [0, 1) numbers drawn on the CPU (reproducible across devices), moved to ``device``."""
    return torch.rand(tuple(shape), generator=generator).to(device)


def _check_stems(stems: Tensor) -> None:
    if stems.dim() != 4:
        raise ValueError(f"augmentations expect stems (B, S, C, T), got shape {tuple(stems.shape)}")


class Augmentation(nn.Module):
    """Base class: ``only`` (source names) limits the augmentation to some stems; :meth:`bind` resolves the names
    against the batch's source order (done by :class:`Compose`)."""

    def __init__(self, only: Sequence[str] | None = None):
        super().__init__()
        self.only = list(only) if only is not None else None
        self.register_buffer("_mask", torch.ones(0, dtype=torch.bool), persistent=False)

    def bind(self, sources: Sequence[str]) -> Augmentation:
        if self.only is not None:
            unknown = sorted(set(self.only) - set(sources))
            if unknown:
                raise ValueError(f"augment {type(self).__name__}.only: unknown source(s) {unknown}; sources are "
                                 f"{list(sources)}")
        self._mask = torch.tensor([self.only is None or s in self.only for s in sources], device=self._mask.device)
        return self

    def mask(self, stems: Tensor) -> Tensor:
        """``(S,)`` bool: the stems this augmentation may touch."""
        if self._mask.numel() == 0:
            return torch.ones(stems.shape[1], dtype=torch.bool, device=stems.device)
        if self._mask.numel() != stems.shape[1]:
            raise ValueError(f"augment {type(self).__name__} is bound to {self._mask.numel()} sources, the batch "
                             f"has {stems.shape[1]}")
        return self._mask.to(stems.device)

    def draw(self, stems: Tensor, proba: float, generator: torch.Generator | None) -> Tensor:
        """``(B, S)`` bool: per example and stem, whether to apply (probability ``proba``, masked by ``only``)."""
        return (_rand(stems.shape[:2], generator, stems.device) < proba) & self.mask(stems)


class Shift(Augmentation):
    """Random crop offset in ``[0, shift]`` samples per example and source (or the same for all sources of an
    example with ``same``). Output ``(B, S, C, T - shift)``; in eval mode it crops without randomness.

    Args:
        shift: seconds (times ``sample_rate``), the length removed.
        same: one offset per example (keeps the sources aligned: per-source fine-tuning).
    """

    def __init__(self, shift: float, sample_rate: int, same: bool = False, only: Sequence[str] | None = None):
        super().__init__(only)
        if shift < 0:
            raise ValueError(f"augment Shift.shift={shift}: must be >= 0 seconds")
        self.samples, self.same = round(shift * sample_rate), same

    def forward(self, stems: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_stems(stems)
        B, S, C, T = stems.shape
        length = T - self.samples
        if length <= 0:
            raise ValueError(f"augment Shift: batch of {T} samples is not longer than the shift of {self.samples} "
                             "samples (the data module reads data.segment + shift; check data.shift_margin)")
        if not self.training or self.samples == 0:
            return stems[..., :length]
        offsets = (_rand((B, 1 if self.same else S), generator, stems.device) * (self.samples + 1)).long()
        offsets = offsets.clamp_max(self.samples).expand(B, S) * self.mask(stems)
        index = offsets[:, :, None, None] + torch.arange(length, device=stems.device)
        return stems.gather(-1, index.expand(B, S, C, length))


class _PerStem(Augmentation):
    """Apply :meth:`transform` to each (example, source) with probability ``proba`` (training mode only)."""

    def __init__(self, proba: float, only: Sequence[str] | None = None):
        super().__init__(only)
        self.proba = proba

    def applicable(self, stems: Tensor) -> bool:
        return True

    def forward(self, stems: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_stems(stems)
        if not self.training or not self.applicable(stems):
            return stems
        return self.transform(stems, self.draw(stems, self.proba, generator)[:, :, None, None])


class FlipChannels(_PerStem):
    """Swap left/right of each (example, source) with probability ``proba`` (stereo only; other channel counts
    pass through unchanged)."""

    def __init__(self, proba: float = 0.5, only: Sequence[str] | None = None):
        super().__init__(proba, only)

    def applicable(self, stems: Tensor) -> bool:
        return stems.shape[2] == 2

    def transform(self, stems: Tensor, chosen: Tensor) -> Tensor:
        return torch.where(chosen, stems.flip(2), stems)


class FlipSign(_PerStem):
    """Multiply each (example, source) by -1 with probability ``proba``."""

    def __init__(self, proba: float = 0.5, only: Sequence[str] | None = None):
        super().__init__(proba, only)

    def transform(self, stems: Tensor, chosen: Tensor) -> Tensor:
        return torch.where(chosen, -stems, stems)


class Scale(Augmentation):
    """Gain ``U[min, max]`` (linear) per (example, source), applied with probability ``proba``."""

    def __init__(self, proba: float = 1.0, min: float = 0.25, max: float = 1.25, only: Sequence[str] | None = None):
        super().__init__(only)
        if not 0 <= min <= max:
            raise ValueError(f"augment Scale: need 0 <= min <= max, got min={min}, max={max}")
        self.proba, self.low, self.high = proba, min, max

    def gains(self, stems: Tensor, generator: torch.Generator | None) -> Tensor:
        return self.low + (self.high - self.low) * _rand(stems.shape[:2], generator, stems.device)

    def forward(self, stems: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_stems(stems)
        if not self.training:
            return stems
        apply = self.draw(stems, self.proba, generator)
        gains = torch.where(apply, self.gains(stems, generator), torch.ones_like(apply, dtype=stems.dtype))
        return stems * gains[:, :, None, None].to(stems.dtype)


class GainDB(Scale):
    """Gain ``U[min_db, max_db]`` decibels per (example, source), applied with probability ``proba``
    (BS-RoFormer recipe: +-3 dB)."""

    def __init__(self, proba: float = 1.0, min_db: float = -3.0, max_db: float = 3.0,
                 only: Sequence[str] | None = None):
        if min_db > max_db:
            raise ValueError(f"augment GainDB: need min_db <= max_db, got {min_db} > {max_db}")
        super().__init__(proba, 0.0, 0.0, only)
        self.min_db, self.max_db = min_db, max_db

    def gains(self, stems: Tensor, generator: torch.Generator | None) -> Tensor:
        db = self.min_db + (self.max_db - self.min_db) * _rand(stems.shape[:2], generator, stems.device)
        return 10.0 ** (db / 20.0)


class Silence(_PerStem):
    """Replace each (example, source) by digital silence with probability ``proba`` (BS-RoFormer: 10 %)."""

    def __init__(self, proba: float = 0.1, only: Sequence[str] | None = None):
        super().__init__(proba, only)

    def transform(self, stems: Tensor, chosen: Tensor) -> Tensor:
        return stems.masked_fill(chosen, 0.0)


class Remix(Augmentation):
    """Within each group of ``group_size`` consecutive examples, permute every source independently across the
    group (probability ``proba`` per group). Groups never span devices when the per-device batch is a multiple of
    ``group_size``, so the augmentation does not depend on the number of devices; a batch that is not a multiple
    is an error (set ``data.batch_size`` accordingly)."""

    def __init__(self, proba: float = 1.0, group_size: int = 4, only: Sequence[str] | None = None):
        super().__init__(only)
        if group_size < 1:
            raise ValueError(f"augment Remix.group_size={group_size}: must be >= 1")
        self.proba, self.group_size = proba, int(group_size)

    def forward(self, stems: Tensor, generator: torch.Generator | None = None) -> Tensor:
        _check_stems(stems)
        if not self.training:
            return stems
        B, S, C, T = stems.shape
        g = self.group_size
        if B % g:
            raise ValueError(f"augment Remix: batch of {B} examples is not a multiple of group_size={g} (set "
                             "data.batch_size to a multiple per device, or augment.transforms.remix.group_size)")
        n = B // g
        perm = _rand((n, g, S), generator, stems.device).argsort(dim=1)
        keep = (_rand((n, 1, 1), generator, stems.device) >= self.proba) | ~self.mask(stems)
        perm = torch.where(keep, torch.arange(g, device=stems.device)[None, :, None], perm)
        grouped = stems.reshape(n, g, S, C, T)
        return grouped.gather(1, perm[..., None, None].expand(n, g, S, C, T)).reshape(B, S, C, T)


class Compose(nn.Module):
    """Apply augmentations in order to ``(B, S, C, T)`` stems.

    Args:
        transforms: ``{name: augmentation or None}`` (config order; ``None`` entries are dropped, so a recipe can
            switch one off with ``augment.transforms.remix=null``) or a list.
        sources: the batch's source names (``${data.sources}``) for the ``only`` rules.
    """

    def __init__(self, transforms: Mapping[str, nn.Module | None] | Sequence[nn.Module], sources: Sequence[str]):
        super().__init__()
        items = transforms.items() if isinstance(transforms, Mapping) else enumerate(transforms)
        self.transforms = nn.ModuleDict({str(k): v for k, v in items if v is not None})
        for t in self.transforms.values():
            if isinstance(t, Augmentation):
                t.bind(list(sources))

    @property
    def shift(self) -> int:
        """Samples removed by the chain (the data module reads that many more)."""
        return sum(t.samples for t in self.transforms.values() if isinstance(t, Shift))

    def forward(self, stems: Tensor, generator: torch.Generator | None = None) -> Tensor:
        for t in self.transforms.values():
            stems = t(stems, generator) if isinstance(t, Augmentation) else t(stems)
        return stems


# ----------------------------------------------------------------------------------------------- repitch / tempo


def phase_vocoder(spec: Tensor, rate: float, hop_length: int) -> Tensor:
    """Time-scale a complex STFT ``(..., F, N)`` by ``rate`` (> 1 faster / shorter): ``(..., F, ceil(N / rate))``.

    Magnitudes are interpolated between neighbouring frames; phases advance by each bin's measured instantaneous
    frequency (the classic phase vocoder), then every bin is locked to its nearest spectral peak (identity phase
    locking, Laroche & Dolson 1999: a bin keeps its analysis phase offset from the peak), which removes most of the
    "phasiness" of the plain vocoder (round trip on a synthetic vocal: 5-8 dB -> 14-16 dB spectral SNR)."""
    n_freq, n_frames = spec.shape[-2:]
    steps = torch.arange(0, n_frames, rate, device=spec.device, dtype=torch.float64)
    i0 = steps.floor().long()
    alpha = (steps - i0).to(spec.real.dtype)
    mag, phase = (torch.nn.functional.pad(v, (0, 2)) for v in (spec.abs(), spec.angle()))
    mag = torch.lerp(mag[..., i0], mag[..., i0 + 1], alpha)
    expected = torch.linspace(0, math.pi * hop_length, n_freq, device=spec.device, dtype=spec.real.dtype)[:, None]
    analysis = phase[..., i0]
    delta = phase[..., i0 + 1] - analysis - expected
    delta -= 2 * math.pi * torch.round(delta / (2 * math.pi))
    synth = torch.cat([phase[..., :1], (expected + delta)[..., :-1]], dim=-1).cumsum(-1)
    # nearest peak of every bin: last peak at or below it vs first peak at or above it
    below = torch.nn.functional.pad(mag[..., :-1, :], (0, 0, 1, 0), value=-1.0)
    above = torch.nn.functional.pad(mag[..., 1:, :], (0, 0, 0, 1), value=-1.0)
    peak = (mag >= below) & (mag > above)
    k = torch.arange(n_freq, device=spec.device)[:, None].expand_as(mag)
    prev = torch.where(peak, k, torch.full_like(k, -n_freq)).cummax(-2).values
    nxt = torch.where(peak, k, torch.full_like(k, 2 * n_freq)).flip(-2).cummin(-2).values.flip(-2)
    near = torch.where(k - prev <= nxt - k, prev, nxt).clamp(0, n_freq - 1)
    locked = synth.gather(-2, near) + analysis - analysis.gather(-2, near)
    return torch.polar(mag, locked)


def fft_resample(x: Tensor, length: int) -> Tensor:
    """Band-limited resampling of ``(..., T)`` to ``(..., length)`` samples by truncating / zero-padding the
    spectrum (exact for periodic signals; edges wrap, so callers crop a guard band)."""
    n = x.shape[-1]
    spec = torch.fft.rfft(x, dim=-1)
    bins = length // 2 + 1
    spec = spec[..., :bins] if spec.shape[-1] >= bins else torch.nn.functional.pad(spec, (0, bins - spec.shape[-1]))
    return torch.fft.irfft(spec, n=length, dim=-1) * (length / n)


def repitch(wav: Tensor, pitch: float, tempo: float, sample_rate: int, backend: str = "vocoder",
            n_fft: int = 2048, hop_length: int = 512) -> Tensor:
    """Change the pitch by ``pitch`` semitones and the tempo by the factor ``tempo`` (1.1 = 10 % faster) of
    ``wav`` ``(..., T)``, identically for every leading row; output ``(..., round(T / tempo))``.

    ``vocoder``: phase vocoder stretch by ``ratio / tempo`` then FFT resampling by ``1 / ratio`` (``ratio`` =
    2^(pitch/12)), batched over all rows. ``rubberband``: pedalboard's Rubber Band, one call for all rows."""
    lead, length = wav.shape[:-1], wav.shape[-1]
    out_len = round(length / tempo)
    flat = wav.reshape(-1, length)
    if backend == "rubberband":
        import numpy as np
        import pedalboard

        out = pedalboard.time_stretch(flat.float().numpy(), float(sample_rate), float(tempo), float(pitch))
        out = torch.from_numpy(np.ascontiguousarray(out)).to(wav.dtype)
    elif backend == "vocoder":
        ratio = 2.0 ** (pitch / 12.0)
        spec = stft(flat.float(), n_fft, hop_length)
        stretched = phase_vocoder(spec, tempo / ratio, hop_length)
        mid = istft(stretched, n_fft, hop_length, length=round(length * ratio / tempo))
        out = fft_resample(mid, out_len) if pitch else mid
        out = out.to(wav.dtype)
    else:
        raise ValueError(f"repitch backend={backend!r}: expected 'vocoder' or 'rubberband'")
    if out.shape[-1] != out_len:  # Rubber Band may round differently by a sample
        out = torch.nn.functional.pad(out[..., :out_len], (0, max(0, out_len - out.shape[-1])))
    return out.reshape(*lead, out_len)


class Repitch:
    """Dataset-level pitch/tempo augmentation for one example ``(S, C, L)`` (runs in data-loader workers).

    With probability ``proba``: pitch ~ uniform integer in ``[-max_pitch, max_pitch]`` semitones (uniform real
    with ``integer_pitch=False``), tempo change ~ N(0, ``tempo_std`` %) clipped to +-``max_tempo`` % (uniform in
    +-``max_tempo`` % when ``tempo_std`` is ``None``), identical for every stem in ``sources`` (default all;
    other stems are cropped unchanged). The caller reads :meth:`input_length` samples and gets exactly
    ``length`` back (a guard band on each side hides the edge effects of the transforms).

    Args:
        sample_rate: audio rate (``${data.sample_rate}``).
        backend: ``vocoder`` (fast, batched torch) or ``rubberband`` (pedalboard).
        sources: stem names to repitch (``None`` = all), e.g. ``[vocals]``.
    """

    def __init__(self, proba: float = 0.2, max_pitch: float = 2, max_tempo: float = 12.0,
                 tempo_std: float | None = 5.0, sample_rate: int = 44100, backend: str = "vocoder",
                 sources: Sequence[str] | None = None, integer_pitch: bool = True, guard: float = 0.05):
        if backend not in ("vocoder", "rubberband"):
            raise ValueError(f"data.repitch.backend={backend!r}: expected 'vocoder' or 'rubberband'")
        if not 0 <= max_tempo < 100:
            raise ValueError(f"data.repitch.max_tempo={max_tempo}: percent in [0, 100)")
        self.proba, self.max_pitch, self.max_tempo, self.tempo_std = proba, max_pitch, max_tempo, tempo_std
        self.integer_pitch = integer_pitch
        self.sample_rate, self.backend, self.sources = int(sample_rate), backend, sources
        self.guard = round(guard * sample_rate)

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
            shifted = repitch(src, pitch, tempo, self.sample_rate, self.backend)
            out[rows] = shifted[..., self.guard: self.guard + length]
        return out
