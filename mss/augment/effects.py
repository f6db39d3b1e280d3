"""Dataset-level codec and effect augmentation: CPU work on one training example ``(S, C, T)`` in the data-loader
workers, after the excerpt is read (and repitched). Built from the top-level ``effects`` node (``augment=
codec_effects``) and handed to the data config by interpolation (``data.effects``), like ``repitch``.

Every transform has a probability ``proba`` (per stem, or per example for those acting on the mixture), draws its
random numbers from torch's generator (the loader seeds it per example: :class:`mss.data.sampling.SeededDataset`, so
an example is a function of the run's seed and its position) or from an explicit ``generator``, keeps the shape
``(S, C, T)``, the dtype and the sample alignment, and at ``proba=0`` returns its input untouched. ``sources``
(names of ``data.sources``) limits a per-stem transform to some stems; silent stems are skipped.

- :class:`Codec`: MP3/AAC round trip at a random bitrate (ffmpeg, :func:`mss.audio.codec.codec_round_trips`, delay
  compensated; or MP3 VBR in process with pedalboard's ``MP3Compressor``) of each stem or of the mixture
  (``target``). On the mixture, the codec error ``coded - mix`` is shared out to the stems in proportion to their
  energy, so ``sum(stems)`` is exactly the coded mixture (the training step forms the mixture from the stems) and
  the targets carry their share of the error.
- :class:`Lowpass`: zero-phase Butterworth low-pass (scipy ``sosfiltfilt``) at a log-uniform cutoff.
- :class:`Equalizer`: a few peaking filters at random frequencies, gains and Q (pedalboard ``PeakFilter``).
- :class:`Reverb`, :class:`Chorus`, :class:`Distortion`: pedalboard's (JUCE) effects with random settings; the
  reverb keeps the dry signal at unity and its tail is cut at the excerpt end, the distortion (tanh drive) is
  scaled back to the input RMS.
- :class:`Loudness`: gain so that the mixture (or each stem) has an integrated loudness (ITU-R BS.1770,
  pyloudnorm) drawn in ``[min_lufs, max_lufs]``; excerpts shorter than the 0.4 s gating block are left as they are.
- :class:`SourceMixup`: a second excerpt of the same source (a random training track and offset, read by the
  dataset) added to a stem.
- :class:`Effects`: the chain built from config (``null`` entries skipped), called by the dataset.

Random polarity is the batch augmentation :class:`mss.augment.batch.FlipSign` (no CPU work for the workers).

Shape legend: S sources, C channels, T time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from mss.audio.codec import CODECS, codec_round_trips

__all__ = ["Chorus", "Codec", "Distortion", "Effect", "Effects", "Equalizer", "Loudness", "Lowpass", "Reverb",
           "SourceMixup"]

Reader = Callable[[str], Tensor]  # source name -> another (C, T) excerpt of that source


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _log_uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return math.exp(_uniform(math.log(low), math.log(high), generator))


def _choice(items: Sequence, generator: torch.Generator | None):
    return items[int(torch.randint(len(items), (), generator=generator))]


def _range(name: str, value: Sequence[float], low: float = -math.inf, high: float = math.inf) -> tuple[float, float]:
    lo, hi = (float(v) for v in value)
    if not low <= lo <= hi <= high:
        raise ValueError(f"effects {name}={list(value)}: expected [min, max] with {low} <= min <= max <= {high}")
    return lo, hi


def _pedalboard():
    try:
        import pedalboard
    except ImportError as err:  # pragma: no cover - an extra of mss
        raise ImportError('effects need pedalboard: pip install "mss[augment]"') from err
    return pedalboard


class Effect:
    """Base class: probability ``proba`` per stem (of ``sources``, default all); subclasses implement
    :meth:`apply` on one stem ``(C, T)`` float32 numpy array, or override :meth:`__call__`."""

    per_stem = True

    def __init__(self, proba: float, sample_rate: int = 44100, sources: Sequence[str] | None = None):
        if not 0 <= proba <= 1:
            raise ValueError(f"effects {type(self).__name__}.proba={proba}: expected a probability in [0, 1]")
        self.proba, self.sample_rate = float(proba), int(sample_rate)
        self.sources = list(sources) if sources is not None else None

    def check_sources(self, names: Sequence[str]) -> None:
        unknown = sorted(set(self.sources or []) - set(names))
        if unknown:
            raise ValueError(f"effects {type(self).__name__}.sources: unknown source(s) {unknown}; data.sources are "
                             f"{list(names)}")

    def picked(self, names: Sequence[str] | None, count: int) -> list[bool]:
        if self.sources is None or names is None:
            return [True] * count
        return [n in self.sources for n in names]

    def apply(self, stem: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, stems: Tensor, names: Sequence[str] | None = None, generator: torch.Generator | None = None,
                 reader: Reader | None = None) -> Tensor:
        """``(S, C, T)`` → ``(S, C, T)``: each picked, non-silent stem transformed with probability ``proba``."""
        if self.proba == 0:
            return stems
        out = None
        for i, pick in enumerate(self.picked(names, stems.shape[0])):
            if not pick or torch.rand((), generator=generator).item() >= self.proba or not stems[i].any():
                continue
            out = stems.clone() if out is None else out
            y = self.apply(stems[i].float().numpy(), generator)
            out[i] = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(stems.dtype)
        return stems if out is None else out


class Codec(Effect):
    """Lossy codec round trip at a random bitrate, of each stem or of the mixture.

    Args:
        proba: per stem (``target=stems``) or per example (``target=mixture``).
        codecs: drawn uniformly from ``mp3``, ``aac`` (ffmpeg, at a bitrate of ``bitrates``) and ``mp3_vbr``
            (pedalboard's in-process LAME ``MP3Compressor`` at a VBR quality uniform in ``vbr_quality``, 0 best ~245
            kbit/s, 9 worst ~65 kbit/s; no subprocess, 2.4-2.8x cheaper, measured).
        bitrates: kbit/s, drawn uniformly from the list (per two channels).
        target: ``mixture`` (the codec error shared out to the stems by energy) or ``stems``.
    """

    def __init__(self, proba: float = 0.2, codecs: Sequence[str] = ("mp3", "aac"),
                 bitrates: Sequence[int] = (64, 96, 128, 192, 256), target: str = "mixture", sample_rate: int = 44100,
                 sources: Sequence[str] | None = None, vbr_quality: Sequence[float] = (2.0, 9.0)):
        super().__init__(proba, sample_rate, sources)
        known = sorted(CODECS) + ["mp3_vbr"]
        bad = sorted(set(codecs) - set(known))
        if bad or not codecs:
            raise ValueError(f"effects Codec.codecs={list(codecs)}: expected a non-empty list of {known}")
        if not bitrates or min(bitrates) < 8:
            raise ValueError(f"effects Codec.bitrates={list(bitrates)}: expected kbit/s values >= 8")
        if target not in ("mixture", "stems"):
            raise ValueError(f"effects Codec.target={target!r}: expected 'mixture' or 'stems'")
        if target == "mixture" and sources is not None:
            raise ValueError("effects Codec.sources only applies with target=stems (the mixture holds every stem)")
        self.codecs, self.bitrates, self.target = list(codecs), [int(b) for b in bitrates], target
        self.vbr_quality = _range("Codec.vbr_quality", vbr_quality, 0, 10)
        self.per_stem = target == "stems"

    def draw(self, generator: torch.Generator | None) -> tuple[str, float]:
        """``(codec, bitrate in kbit/s or VBR quality for mp3_vbr)``."""
        codec = _choice(self.codecs, generator)
        if codec == "mp3_vbr":
            return codec, _uniform(*self.vbr_quality, generator)
        return codec, _choice(self.bitrates, generator)

    def apply(self, stem: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
        return self.round_trip([stem], [self.draw(generator)])[0]

    def round_trip(self, wavs: list[np.ndarray], specs: list[tuple[str, float]]) -> list[np.ndarray]:
        """Coded ``wavs`` (each ``(C, T)``): the ffmpeg ones in one process pair, ``mp3_vbr`` in process."""
        out: list[np.ndarray | None] = [None] * len(wavs)
        pairs, where = [], []
        for k, (wav, (codec, setting)) in enumerate(zip(wavs, specs)):
            if codec == "mp3_vbr":
                out[k] = _pedalboard().MP3Compressor(vbr_quality=setting)(wav, self.sample_rate)
                continue
            for c in range(0, wav.shape[0], 2):  # files of at most two channels
                pairs.append((wav[c: c + 2], codec, int(setting)))
                where.append((k, c))
        if pairs:
            coded = codec_round_trips([p[0] for p in pairs], self.sample_rate, [p[1] for p in pairs],
                                      [p[2] for p in pairs])
            for k in {k for k, _ in where}:
                out[k] = np.concatenate([y for (kk, _), y in zip(where, coded) if kk == k])
        return out  # type: ignore[return-value]

    def __call__(self, stems: Tensor, names: Sequence[str] | None = None, generator: torch.Generator | None = None,
                 reader: Reader | None = None) -> Tensor:
        if self.target == "stems":
            return self.code_stems(stems, names, generator)
        if self.proba == 0 or torch.rand((), generator=generator).item() >= self.proba:
            return stems
        x = stems.double()
        mix = x.sum(0)
        if not mix.any():
            return stems
        error = torch.from_numpy(self.apply(mix.float().numpy(), generator)).double() - mix
        energy = x.square().sum((1, 2))
        share = energy / energy.sum() if energy.sum() > 0 else torch.full_like(energy, 1 / len(energy))
        return (x + share[:, None, None] * error).to(stems.dtype)

    def code_stems(self, stems: Tensor, names: Sequence[str] | None, generator: torch.Generator | None) -> Tensor:
        """Each picked, non-silent stem with probability ``proba`` through its own codec and bitrate, the ffmpeg ones
        all in one encoder and one decoder process (:func:`mss.audio.codec.codec_round_trips`)."""
        if self.proba == 0:
            return stems
        rows, specs = [], []
        for i, pick in enumerate(self.picked(names, stems.shape[0])):
            if pick and torch.rand((), generator=generator).item() < self.proba and stems[i].any():
                rows.append(i)
                specs.append(self.draw(generator))
        if not rows:
            return stems
        coded = self.round_trip([stems[i].float().numpy() for i in rows], specs)
        out = stems.clone()
        for i, y in zip(rows, coded):
            out[i] = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).to(stems.dtype)
        return out


class Lowpass(Effect):
    """Zero-phase Butterworth low-pass (``order`` of the filter run forwards and backwards) at a cutoff
    log-uniform in ``[min_hz, max_hz]`` (clipped below Nyquist)."""

    def __init__(self, proba: float = 0.1, min_hz: float = 2000.0, max_hz: float = 16000.0, order: int = 8,
                 sample_rate: int = 44100, sources: Sequence[str] | None = None):
        super().__init__(proba, sample_rate, sources)
        self.min_hz, self.max_hz = _range("Lowpass [min_hz, max_hz]", (min_hz, max_hz), 1.0)
        if self.max_hz >= sample_rate / 2:
            raise ValueError(f"effects Lowpass.max_hz={max_hz}: must be below Nyquist ({sample_rate / 2} Hz)")
        self.order = int(order)

    def apply(self, stem: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
        from scipy.signal import butter, sosfiltfilt

        cutoff = _log_uniform(self.min_hz, self.max_hz, generator)
        sos = butter(self.order, cutoff, btype="lowpass", fs=self.sample_rate, output="sos")
        return sosfiltfilt(sos, stem.astype(np.float64), axis=-1)


class Equalizer(Effect):
    """``bands`` peaking filters, each at a log-uniform frequency in ``[min_hz, max_hz]``, gain uniform in
    ``+-max_gain_db`` and Q log-uniform in ``q`` (pedalboard ``PeakFilter``, minimum phase)."""

    def __init__(self, proba: float = 0.2, bands: int = 3, max_gain_db: float = 6.0, min_hz: float = 60.0,
                 max_hz: float = 12000.0, q: Sequence[float] = (0.5, 2.0), sample_rate: int = 44100,
                 sources: Sequence[str] | None = None):
        super().__init__(proba, sample_rate, sources)
        self.bands, self.max_gain_db = int(bands), float(max_gain_db)
        self.min_hz, self.max_hz = _range("Equalizer [min_hz, max_hz]", (min_hz, max_hz), 1.0, sample_rate / 2)
        self.q = _range("Equalizer.q", q, 1e-3)

    def apply(self, stem: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
        pb = _pedalboard()
        board = pb.Pedalboard([pb.PeakFilter(cutoff_frequency_hz=_log_uniform(self.min_hz, self.max_hz, generator),
                                             gain_db=_uniform(-self.max_gain_db, self.max_gain_db, generator),
                                             q=_log_uniform(*self.q, generator)) for _ in range(self.bands)])
        return board(stem, self.sample_rate)


class Reverb(Effect):
    """Freeverb (pedalboard ``Reverb``) with ``room_size``, ``damping`` and ``wet_level`` uniform in their ranges,
    the dry signal at unity; the tail beyond the excerpt is cut."""

    def __init__(self, proba: float = 0.1, room_size: Sequence[float] = (0.1, 0.9),
                 damping: Sequence[float] = (0.2, 0.8), wet_level: Sequence[float] = (0.05, 0.3),
                 sample_rate: int = 44100, sources: Sequence[str] | None = None):
        super().__init__(proba, sample_rate, sources)
        self.room_size, self.damping = _range("Reverb.room_size", room_size, 0, 1), _range("Reverb.damping", damping,
                                                                                           0, 1)
        self.wet_level = _range("Reverb.wet_level", wet_level, 0, 1)

    def apply(self, stem: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
        fx = _pedalboard().Reverb(room_size=_uniform(*self.room_size, generator),
                                  damping=_uniform(*self.damping, generator),
                                  wet_level=_uniform(*self.wet_level, generator), dry_level=0.5)  # JUCE: 2 x dry
        return fx(stem, self.sample_rate)


class Chorus(Effect):
    """Chorus (pedalboard ``Chorus``): LFO ``rate_hz``, ``depth`` and wet ``mix`` uniform in their ranges."""

    def __init__(self, proba: float = 0.1, rate_hz: Sequence[float] = (0.5, 3.0), depth: Sequence[float] = (0.1, 0.5),
                 mix: Sequence[float] = (0.2, 0.5), centre_delay_ms: float = 7.0, sample_rate: int = 44100,
                 sources: Sequence[str] | None = None):
        super().__init__(proba, sample_rate, sources)
        self.rate_hz, self.depth = _range("Chorus.rate_hz", rate_hz, 0), _range("Chorus.depth", depth, 0, 1)
        self.mix, self.centre_delay_ms = _range("Chorus.mix", mix, 0, 1), float(centre_delay_ms)

    def apply(self, stem: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
        fx = _pedalboard().Chorus(rate_hz=_uniform(*self.rate_hz, generator), depth=_uniform(*self.depth, generator),
                                  mix=_uniform(*self.mix, generator), centre_delay_ms=self.centre_delay_ms)
        return fx(stem, self.sample_rate)


class Distortion(Effect):
    """tanh drive (pedalboard ``Distortion``) of ``drive_db`` uniform in its range, scaled back to the input RMS
    (``keep_level``)."""

    def __init__(self, proba: float = 0.05, drive_db: Sequence[float] = (5.0, 25.0), keep_level: bool = True,
                 sample_rate: int = 44100, sources: Sequence[str] | None = None):
        super().__init__(proba, sample_rate, sources)
        self.drive_db, self.keep_level = _range("Distortion.drive_db", drive_db, 0), bool(keep_level)

    def apply(self, stem: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
        y = _pedalboard().Distortion(drive_db=_uniform(*self.drive_db, generator))(stem, self.sample_rate)
        if self.keep_level:
            rms_in, rms_out = float(np.sqrt(np.mean(stem ** 2))), float(np.sqrt(np.mean(y ** 2)))
            y = y * (rms_in / rms_out) if rms_out > 0 else y
        return y


class Loudness(Effect):
    """Gain to an integrated loudness (ITU-R BS.1770, pyloudnorm) uniform in ``[min_lufs, max_lufs]``: of the
    mixture (one gain for every stem, the balance kept; ``target=mixture``) or of each stem (``target=stems``). The
    gain is lowered where it would push the mixture (or stem) peak above ``max_peak`` (``null``: no limit). Excerpts
    shorter than the 0.4 s gating block, and silent ones, are left as they are."""

    def __init__(self, proba: float = 0.5, min_lufs: float = -26.0, max_lufs: float = -12.0, target: str = "mixture",
                 max_peak: float | None = 1.0, sample_rate: int = 44100, sources: Sequence[str] | None = None):
        super().__init__(proba, sample_rate, sources)
        self.min_lufs, self.max_lufs = _range("Loudness [min_lufs, max_lufs]", (min_lufs, max_lufs), high=0.0)
        if target not in ("mixture", "stems"):
            raise ValueError(f"effects Loudness.target={target!r}: expected 'mixture' or 'stems'")
        self.target, self.max_peak = target, max_peak
        self.per_stem = target == "stems"
        self._meter = None

    def gain(self, x: np.ndarray, generator: torch.Generator | None) -> float:
        """Linear gain taking ``x`` ``(C, T)`` to the drawn loudness (1 where it cannot be measured)."""
        try:
            import pyloudnorm
        except ImportError as err:  # pragma: no cover - an extra of mss
            raise ImportError('effects Loudness needs pyloudnorm: pip install "mss[augment]"') from err
        lufs = _uniform(self.min_lufs, self.max_lufs, generator)
        if x.shape[-1] < round(0.4 * self.sample_rate):
            return 1.0
        if self._meter is None:
            self._meter = pyloudnorm.Meter(self.sample_rate)
        measured = self._meter.integrated_loudness(x.T.astype(np.float64))
        if not np.isfinite(measured):
            return 1.0
        gain = 10.0 ** ((lufs - measured) / 20.0)
        peak = float(np.abs(x).max())
        if self.max_peak is not None and peak * gain > self.max_peak:
            gain = self.max_peak / peak
        return gain

    def apply(self, stem: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
        return stem * self.gain(stem, generator)

    def __call__(self, stems: Tensor, names: Sequence[str] | None = None, generator: torch.Generator | None = None,
                 reader: Reader | None = None) -> Tensor:
        if self.target == "stems":
            return super().__call__(stems, names, generator, reader)
        if self.proba == 0 or torch.rand((), generator=generator).item() >= self.proba:
            return stems
        gain = self.gain(stems.sum(0).double().numpy(), generator)
        return stems if gain == 1.0 else stems * gain


class SourceMixup(Effect):
    """Same-source mixup: a stem gets a second excerpt of the same source added (from a random training track and
    offset, read by the dataset through ``reader``), scaled by a gain uniform in ``gain``."""

    def __init__(self, proba: float = 0.1, gain: Sequence[float] = (0.5, 1.0), sample_rate: int = 44100,
                 sources: Sequence[str] | None = None):
        super().__init__(proba, sample_rate, sources)
        self.gain = _range("SourceMixup.gain", gain, 0)

    def __call__(self, stems: Tensor, names: Sequence[str] | None = None, generator: torch.Generator | None = None,
                 reader: Reader | None = None) -> Tensor:
        if self.proba == 0:
            return stems
        if reader is None or names is None:
            raise ValueError("effects SourceMixup needs the dataset's excerpt reader and the source names")
        out = None
        for i, (name, pick) in enumerate(zip(names, self.picked(names, stems.shape[0]))):
            if not pick or torch.rand((), generator=generator).item() >= self.proba:
                continue
            other = reader(name)
            if other.shape != stems[i].shape:
                raise ValueError(f"effects SourceMixup: reader gave {tuple(other.shape)} for {name}, expected "
                                 f"{tuple(stems[i].shape)}")
            out = stems.clone() if out is None else out
            out[i] += _uniform(*self.gain, generator) * other.to(stems.dtype)
        return stems if out is None else out


class Effects:
    """The chain of dataset-level effects, in config order, on one example ``(S, C, T)``.

    Args:
        transforms: ``{name: Effect or None}`` (``None`` entries dropped: ``effects.transforms.reverb=null``).
        sources: the dataset's source names (``${data.sources}``), checked against each effect's ``sources``.
    """

    def __init__(self, transforms: Mapping[str, Effect | None], sources: Sequence[str]):
        self.transforms = {str(k): v for k, v in transforms.items() if v is not None}
        self.sources = list(sources)
        for name, t in self.transforms.items():
            if not isinstance(t, Effect):
                raise TypeError(f"effects.transforms.{name}: expected an mss.augment.effects.Effect, got "
                                f"{type(t).__name__}")
            t.check_sources(self.sources)

    @property
    def reads_excerpts(self) -> bool:
        """Whether a transform needs the dataset's excerpt reader (:class:`SourceMixup`)."""
        return any(isinstance(t, SourceMixup) and t.proba > 0 for t in self.transforms.values())

    def __call__(self, stems: Tensor, generator: torch.Generator | None = None, reader: Reader | None = None) -> Tensor:
        """``(S, C, T)`` float stems in the order of ``sources`` → the same shape and dtype."""
        if stems.dim() != 3 or stems.shape[0] != len(self.sources):
            raise ValueError(f"effects expect one example (S={len(self.sources)}, C, T), got {tuple(stems.shape)}")
        if not stems.is_floating_point():
            raise ValueError(f"effects expect float stems, got {stems.dtype}")
        for t in self.transforms.values():
            stems = t(stems, self.sources, generator, reader)
        return stems
