"""Stem pools: independent collections of single-stem files per source, without aligned mixtures (``data=stems_pool``).

Each training example draws, for every source, a random file of that source's pool and a random offset in it, and
scales it by a gain drawn uniformly in ``gains[source] = [min_db, max_db]`` (default 0 dB); the stems are then
summed into the mixture by the LightningModule as for any dataset. All draws come from torch's generator, so the
per-item seeds of :class:`mss.data.sampling.SeededDataset` make every example reproducible (and resumable).

``pools: {vocals: [DIR or glob, ...], drums: [...], ...}``: a folder stands for every audio file below it
(recursively), a glob for the files it matches. Files whose sample rate or channel count differ from
``data.sample_rate`` / ``data.channels`` are errors naming the file unless ``data.convert=true`` (then converted on
load), as for the folder datasets. A source of ``data.sources`` without a pool is an error unless
``data.missing_stems=allow``: it is then absent from every example (zeros, marked absent in ``present``).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mss.audio.io import AudioError, audio_info, load_audio
from mss.audio.pcm16 import is_pcm16
from mss.data.datamodule import MSSDataModule
from mss.data.datasets import ExcerptDataset
from mss.data.tracks import MISSING, DatasetError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif")


@dataclass(frozen=True)
class StemFile:
    """One file of a pool: its path, length (frames at its own rate) and sample rate."""

    path: str
    frames: int
    sample_rate: int


def check_file(path: str | os.PathLike, *, sample_rate: int, channels: int, convert: bool) -> StemFile:
    """A pool file, checked as :func:`mss.data.tracks.find_tracks` checks track files."""
    info = audio_info(path)
    if not convert and info.sample_rate != sample_rate:
        raise AudioError(f"{path}: sample rate is {info.sample_rate} Hz, expected data.sample_rate={sample_rate} "
                         "(set data.convert=true to resample on load)")
    if not convert and info.channels != channels:
        raise AudioError(f"{path}: has {info.channels} channel(s), expected data.channels={channels} (set "
                         "data.convert=true to convert on load)")
    if info.frames < 1:
        raise AudioError(f"{path}: holds no audio")
    return StemFile(str(path), int(info.frames), int(info.sample_rate))


def find_pool(specs: list[str] | str, source: str, *, sample_rate: int, channels: int, convert: bool = False,
              base: Path | None = None) -> list[StemFile]:
    """The checked files of one source's pool (sorted, duplicates once): each spec a folder (its audio files,
    recursively) or a glob; relative specs are relative to ``base`` (default: the working directory)."""
    specs = [specs] if isinstance(specs, str) else list(specs or [])
    paths: list[Path] = []
    for spec in specs:
        where = Path(os.path.expanduser(str(spec)))
        if base is not None and not where.is_absolute():
            where = base / where
        if where.is_dir():
            found = sorted(p for p in where.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        else:
            found = sorted(Path(p) for p in glob.glob(str(where), recursive=True) if Path(p).is_file())
        if not found:
            raise DatasetError(f"data.pools.{source}: {spec!r} matches no audio file (expected a folder of "
                               f"{'/'.join(AUDIO_EXTENSIONS)} files or a glob such as DIR/*/{source}.wav)")
        paths += found
    unique = list(dict.fromkeys(paths))
    return [check_file(p, sample_rate=sample_rate, channels=channels, convert=convert) for p in unique]


def parse_gains(gains: dict | None, sources: list[str]) -> dict[str, tuple[float, float]]:
    """``{source: (min_db, max_db)}`` for every source (0 dB where unset); bad entries name their key."""
    gains = dict(gains or {})
    unknown = sorted(set(gains) - set(sources))
    if unknown:
        raise ValueError(f"data.gains: {unknown} not in data.sources={sources}")
    out = {}
    for source in sources:
        spec = gains.get(source, (0.0, 0.0))
        spec = [spec, spec] if isinstance(spec, (int, float)) else list(spec)
        if len(spec) != 2 or float(spec[0]) > float(spec[1]):
            raise ValueError(f"data.gains.{source}={spec}: expected [min_db, max_db] with min_db <= max_db")
        out[source] = (float(spec[0]), float(spec[1]))
    return out


class PoolDataset(ExcerptDataset):
    """Training examples from stem pools: stems ``(S, C, T)`` (``T = segment``), each source a random excerpt of a
    random file of its pool scaled by a random gain; ``{"stems", "present": (S,) bool}`` when a source has no pool
    (:attr:`with_presence`). The :class:`mss.data.datasets.SegmentDataset` protocol (``item_shape``,
    ``item_dtype``, ``read(index, out, present)``, ``describe``), so :class:`mss.data.sampling.SeededDataset` and
    the shared-memory batch pool take it as they are. Items do not depend on ``index``, only on the generator.
    With ``int16`` items hold the 16-bit samples as they are (only without gains, for 16-bit PCM WAV files at the
    configured rate and channels: :meth:`StemPoolDataModule.int16_batches`)."""

    def __init__(self, pools: dict[str, list[StemFile]], sources: list[str], *, segment: int, samples_per_epoch: int,
                 channels: int, sample_rate: int, convert: bool = False,
                 gains: dict[str, tuple[float, float]] | None = None, int16: bool = False):
        self.sources, self.segment, self.samples_per_epoch = list(sources), int(segment), int(samples_per_epoch)
        self.pools = {s: list(pools.get(s, [])) for s in self.sources}
        if not any(self.pools.values()):
            raise ValueError("PoolDataset: every pool is empty")
        self.gains = parse_gains(gains, self.sources)
        if int16 and any(g != (0.0, 0.0) for g in self.gains.values()):
            raise ValueError("PoolDataset: int16 items cannot hold gain-scaled samples")
        self.item_dtype = torch.int16 if int16 else torch.float32
        self.load_kw = dict(channels=channels, sample_rate=sample_rate, convert=convert)
        self.with_presence = not all(self.pools.values())

    def _frames(self, file: StemFile) -> int:
        """Samples of ``file`` (in its own rate) that make one segment."""
        return -(-self.segment * file.sample_rate // self.load_kw["sample_rate"])

    def _draw(self) -> list[tuple[StemFile, int, float] | None]:
        """Per source (in order): ``(file, start sample in the file's rate, gain in dB)``, or ``None`` when its
        pool is empty. :meth:`read` and :meth:`describe` both draw here."""
        picks = []
        for source in self.sources:
            pool = self.pools[source]
            if not pool:
                picks.append(None)
                continue
            file = pool[int(torch.randint(0, len(pool), ()))]
            start = int(torch.randint(0, max(1, file.frames - self._frames(file) + 1), ()))
            lo, hi = self.gains[source]
            gain = lo + (hi - lo) * float(torch.rand(()))
            picks.append((file, start, gain))
        return picks

    def read(self, index: int, out: torch.Tensor | None = None, present: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Item ``index`` (written into ``out``, ``(S, C, T)`` of :attr:`item_dtype`, when given; presence into
        ``present``)."""
        picks = self._draw()
        stems = out if out is not None else torch.empty(self.item_shape, dtype=self.item_dtype)
        if present is not None:
            present.copy_(torch.tensor([p is not None for p in picks]))
        for row, pick in zip(stems, picks):
            if pick is None:
                row.zero_()
                continue
            file, start, gain = pick
            if file.sample_rate == self.load_kw["sample_rate"]:
                load_audio(file.path, start=start, out=row, **self.load_kw)
            else:  # read the segment's length in the file's rate, then resample (data.convert)
                wav = load_audio(file.path, start=start, frames=self._frames(file), **self.load_kw)[..., :self.segment]
                row[..., :wav.shape[-1]] = wav
                row[..., wav.shape[-1]:] = 0
            if gain:
                row.mul_(10 ** (gain / 20))
        return stems

    def describe(self, index: int) -> str:
        """Which file, offset and gain each source of item ``index`` came from (same draws as :meth:`read` in the
        same random state)."""
        parts = []
        for source, pick in zip(self.sources, self._draw()):
            if pick is None:
                parts.append(f"{source}: absent")
            else:
                file, start, gain = pick
                parts.append(f"{source}: {file.path} from sample {start} ({start / file.sample_rate:.2f} s) "
                             f"at {gain:+.2f} dB")
        return f"{self.segment} samples of " + ", ".join(parts)


class StemPoolDataModule(MSSDataModule):
    """``data=stems_pool``: training examples from per-source pools of single-stem files (:class:`PoolDataset`).

    Args (besides those of :class:`MSSDataModule` that apply: sources, sample_rate, channels, segment, batch_size,
    num_workers, samples_per_epoch, convert, cache_dir, seed, pin_memory, batch_pool, missing_stems):
        pools: ``{source: [folder or glob, ...]}`` (a single string is one spec).
        gains: ``{source: [min_db, max_db]}``, drawn uniformly per example (default 0 dB).
        valid_root: optional folder in MUSDB18-HQ layout whose ``valid_subset`` tracks validate and whose
            ``test_subset`` tracks are the test set; ``None``: no validation (and no test set: run with
            ``test=false``).
    """

    requires_root = False

    def __init__(self, *, pools: dict[str, list[str] | str], sources: list[str], gains: dict | None = None,
                 valid_root: str | None = None, valid_subset: str = "test", test_subset: str = "test",
                 missing_stems: str = "error", **kw):
        if missing_stems not in MISSING:
            raise ValueError(f"data.missing_stems={missing_stems!r}: expected one of {MISSING}")
        super().__init__(root=valid_root, sources=sources, valid_tracks=None, test_subset=test_subset,
                         missing_stems=missing_stems, **kw)
        pools = dict(pools or {})
        unknown = sorted(set(pools) - set(self.sources))
        if unknown:
            raise ValueError(f"data.pools: {unknown} not in data.sources={self.sources}")
        lacking = [s for s in self.sources if not pools.get(s)]
        if lacking and missing_stems != "allow":
            raise ValueError(f"data.pools: no pool for {lacking} of data.sources={self.sources} (add one, or set "
                             "data.missing_stems=allow to train with those sources absent)")
        if self.repitch is not None or self.effects is not None:
            raise ValueError("data=stems_pool does not apply data.repitch / data.effects (loader-side augmentations "
                             "of aligned tracks); use batch augmentations (augment=...) instead")
        self.pool_specs, self.gains = pools, parse_gains(gains, self.sources)
        self.valid_subset = valid_subset
        self.pools: dict[str, list[StemFile]] = {}

    def prepare_data(self) -> None:
        if self.root is not None:
            self._require_root()

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and "train" not in self.tracks:
            if self.segment * self.sample_rate < 1:
                raise ValueError(f"data.segment={self.segment}: must be positive")
            self.pools = {s: find_pool(self.pool_specs[s], s, sample_rate=self.sample_rate, channels=self.channels,
                                       convert=self.convert) if self.pool_specs.get(s) else []
                          for s in self.sources}
            self.tracks["train"] = []
            self.tracks["valid"] = self._find(self.valid_subset) if self.root is not None else []
        if stage in ("test", "predict", None) and "test" not in self.tracks:
            self.tracks["test"] = self._find(self.test_subset) if self.root is not None else []

    def int16_batches(self) -> bool:
        """Lossless int16 batches: no gains (they leave the 16-bit grid) and every pool file a 16-bit PCM WAV at
        ``sample_rate`` / ``channels``."""
        return all(g == (0.0, 0.0) for g in self.gains.values()) and all(
            is_pcm16(f.path, self.channels, self.sample_rate) for pool in self.pools.values() for f in pool)

    def track_dataset(self, split: str, shard: bool = False):
        if split == "test" and self.root is None:
            raise DatasetError("data=stems_pool without data.valid_root has no test tracks: set data.valid_root=DIR "
                               "(MUSDB18-HQ layout) or train with test=false")
        return super().track_dataset(split, shard)

    def train_dataset(self, int16: bool | None = None) -> PoolDataset:
        return PoolDataset(self.pools, self.sources, segment=self.segment_frames,
                           samples_per_epoch=self.samples_per_epoch, channels=self.channels,
                           sample_rate=self.sample_rate, convert=self.convert, gains=self.gains,
                           int16=self.int16_batches() if int16 is None else int16)
