"""Torch datasets over :class:`~mss.data.tracks.Track` lists.

- :class:`SegmentDataset`: random training excerpts, stems ``(S, C, T)``; with ``remix`` each source comes from an
  independently drawn track and offset (new mixtures that never existed); with ``repitch`` (a
  :class:`mss.data.augment.Repitch`) some examples get the same pitch/tempo change on every stem, here in the
  data-loader workers, still exactly ``T`` samples long.
- :class:`TrackDataset`: whole tracks for validation/test: ``{"name", "mixture": (C, T), "stems": (S, C, T)}``.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from mss.data.tracks import Track


def _pad_to(wav: torch.Tensor, length: int) -> torch.Tensor:
    return wav if wav.shape[-1] >= length else torch.nn.functional.pad(wav, (0, length - wav.shape[-1]))


class SegmentDataset(Dataset):
    """``samples_per_epoch`` random excerpts of ``segment`` samples. Item ``i`` without remix reads track
    ``i % len(tracks)`` (every track is seen equally often); the offset (and, with remix, the track of each source)
    is random. Randomness comes from torch's generator, which Lightning seeds per worker. A repitched example reads
    ``repitch.input_length(segment)`` samples (tempo up to +max_tempo plus guard bands) and is cut back to
    ``segment`` samples."""

    def __init__(self, tracks: list[Track], sources: list[str], *, segment: int, samples_per_epoch: int,
                 channels: int, sample_rate: int, remix: bool = False, convert: bool = False, repitch=None):
        if not tracks:
            raise ValueError("SegmentDataset: no training tracks")
        self.tracks, self.sources, self.segment = tracks, list(sources), int(segment)
        self.samples_per_epoch, self.remix, self.repitch = int(samples_per_epoch), remix, repitch
        self.load_kw = dict(channels=channels, sample_rate=sample_rate, convert=convert)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def _start(self, track: Track, frames: int) -> int:
        return int(torch.randint(0, max(1, track.length - frames + 1), ()).item())

    def _excerpt(self, track: Track, source: str, start: int, frames: int) -> torch.Tensor:
        wav = track.read_source(source, start=start, frames=frames, **self.load_kw)
        return _pad_to(wav[..., :frames], frames)

    def __getitem__(self, index: int) -> torch.Tensor:
        """Stems ``(S, C, T)`` with T = segment."""
        change = self.repitch.draw() if self.repitch is not None else None
        frames = self.segment if change is None else self.repitch.input_length(self.segment)
        if self.remix:
            picks = [self.tracks[t] for t in torch.randint(0, len(self.tracks), (len(self.sources),)).tolist()]
            stems = torch.stack([self._excerpt(t, s, self._start(t, frames), frames)
                                 for t, s in zip(picks, self.sources)])
        else:
            track = self.tracks[index % len(self.tracks)]
            start = self._start(track, frames)
            stems = torch.stack([self._excerpt(track, s, start, frames) for s in self.sources])
        return stems if change is None else self.repitch(stems, change, self.segment, self.sources)


class TrackDataset(Dataset):
    """Whole tracks: ``{"name": str, "mixture": (C, T), "stems": (S, C, T)}``."""

    def __init__(self, tracks: list[Track], sources: list[str], *, channels: int, sample_rate: int,
                 convert: bool = False):
        self.tracks, self.sources = tracks, list(sources)
        self.load_kw = dict(channels=channels, sample_rate=sample_rate, convert=convert)

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> dict:
        track = self.tracks[index]
        stems = torch.stack([track.read_source(s, **self.load_kw) for s in self.sources])
        return {"name": track.name, "mixture": track.read_mixture(**self.load_kw), "stems": stems}

