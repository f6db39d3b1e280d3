"""The LightningDataModule for every folder-based dataset: MUSDB18-HQ (wav), MUSDB18 (stems, decoded once into a
cache), custom folders in the same layout, and the embedded synthetic dataset (generated on first use).

Batches: training ``(B, S, C, T)`` stems (the mixture is formed after augmentation, in the LightningModule);
validation/test one whole track at a time (``{"name", "mixture": (1, C, T), "stems": (1, S, C, T)}``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from mss.data.datasets import SegmentDataset, TrackDataset
from mss.data.tracks import DatasetError, Track, decode_stems, find_tracks, read_track_list

FORMATS = ("wav", "flac", "stems")


class MSSDataModule(L.LightningDataModule):
    """Folder datasets in MUSDB18-HQ layout (``root/{train,test}/<track>/<source>.wav``).

    Args:
        root: dataset folder. ``None`` is only allowed with ``synth`` (then a folder under ``cache_dir`` keyed by
            the generation parameters is used).
        sources: the stems the model separates, in order (``data.sources``; models read it by interpolation).
        format: ``wav``/``flac`` (MUSDB18-HQ layout) or ``stems`` (MUSDB18 ``.stem.mp4``, decoded once).
        segment: training excerpt length in seconds.
        remix: draw each source of a training example from a random track (new mixtures every epoch).
        valid_tracks: ``musdb`` (the official 14), a file of names relative to ``root``, or a list of names.
            Validation tracks are taken out of the training subset.
        aggregates: sources built by summing others when they have no file (``accompaniment``).
        convert: resample / convert channels of mismatching files on load (with a warning) instead of raising.
        synth: parameters for :func:`mss.data.synth.generate`; the dataset is generated when missing.
    """

    def __init__(self, *, root: str | None, sources: list[str], sample_rate: int = 44100, channels: int = 2,
                 format: str = "wav", segment: float = 6.0, batch_size: int = 4, num_workers: int = 0,
                 samples_per_epoch: int = 1000, remix: bool = False, valid_tracks="musdb",
                 train_subset: str = "train", test_subset: str = "test",
                 aggregates: dict[str, list[str]] | None = None, convert: bool = False,
                 cache_dir: str = "~/.cache/mss", synth: dict | None = None, pin_memory: bool = False):
        super().__init__()
        if format not in FORMATS:
            raise ValueError(f"data.format={format!r}: expected one of {FORMATS}")
        if not sources:
            raise ValueError("data.sources is empty: list the stems to separate, e.g. [drums, bass, other, vocals]")
        if root is None and synth is None:
            raise ValueError("data.root is not set: point it at a dataset folder in MUSDB18-HQ layout")
        self.sources, self.sample_rate, self.channels = list(sources), int(sample_rate), int(channels)
        self.format, self.segment, self.batch_size = format, float(segment), int(batch_size)
        self.num_workers, self.samples_per_epoch, self.remix = int(num_workers), int(samples_per_epoch), remix
        self.valid_spec, self.train_subset, self.test_subset = valid_tracks, train_subset, test_subset
        self.aggregates, self.convert, self.pin_memory = dict(aggregates or {}), convert, pin_memory
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self.synth = dict(synth) if synth is not None else None
        self.root = Path(root).expanduser() if root is not None else self._synth_root()
        self.tracks: dict[str, list[Track]] = {}
        self._decoded: Path | None = None

    def _synth_root(self) -> Path:
        spec = json.dumps({"sources": self.sources, "sample_rate": self.sample_rate, **self.synth}, sort_keys=True)
        return self.cache_dir / "synth" / hashlib.sha1(spec.encode()).hexdigest()[:12]

    # -- I/O happens here, never in __init__ ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.synth is not None:
            from mss.data.synth import generate

            generate(self.root, sources=self.sources, sample_rate=self.sample_rate, **self.synth)
        if self.format == "stems":
            self._decoded = decode_stems(self.root, [self.train_subset, self.test_subset], self.cache_dir)

    @property
    def wav_root(self) -> Path:
        """Root of the folder tree actually read (the decoded cache for ``format=stems``)."""
        if self.format != "stems":
            return self.root
        if self._decoded is None:
            self._decoded = decode_stems(self.root, [self.train_subset, self.test_subset], self.cache_dir)
        return self._decoded

    def _find(self, subset: str) -> list[Track]:
        return find_tracks(self.wav_root / subset, self.sources, sample_rate=self.sample_rate,
                           channels=self.channels, aggregates=self.aggregates,
                           extension="wav" if self.format == "stems" else self.format, convert=self.convert,
                           cache_dir=self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if not self.root.is_dir():
            raise DatasetError(f"data.root={self.root}: folder not found")
        if stage in ("fit", "validate", None) and "train" not in self.tracks:
            train = self._find(self.train_subset)
            valid_names = set(read_track_list(self.valid_spec, self.wav_root, [t.name for t in train]))
            self.tracks["train"] = [t for t in train if t.name not in valid_names]
            self.tracks["valid"] = [t for t in train if t.name in valid_names]
            if not self.tracks["train"]:
                raise DatasetError(f"{self.wav_root / self.train_subset}: no training tracks left after removing "
                                   f"the {len(valid_names)} validation tracks")
            if self.segment * self.sample_rate < 1:
                raise ValueError(f"data.segment={self.segment}: must be positive")
        if stage in ("test", "predict", None) and "test" not in self.tracks:
            self.tracks["test"] = self._find(self.test_subset)

    # -- loaders ---------------------------------------------------------------------------------------------
    def track_dataset(self, split: str) -> TrackDataset:
        """Whole tracks of ``split`` (``train``, ``valid`` or ``test``; call :meth:`setup` first)."""
        if split not in self.tracks:
            raise KeyError(f"split {split!r} is not set up; available: {sorted(self.tracks)}")
        return TrackDataset(self.tracks[split], self.sources, channels=self.channels, sample_rate=self.sample_rate,
                            convert=self.convert)

    def _loader(self, dataset, **kw) -> DataLoader:
        return DataLoader(dataset, num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0, **kw)

    def train_dataloader(self) -> DataLoader:
        dataset = SegmentDataset(self.tracks["train"], self.sources, segment=round(self.segment * self.sample_rate),
                                 samples_per_epoch=self.samples_per_epoch, channels=self.channels,
                                 sample_rate=self.sample_rate, remix=self.remix, convert=self.convert)
        return self._loader(dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.track_dataset("valid"), batch_size=1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.track_dataset("test"), batch_size=1)
