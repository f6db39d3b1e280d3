"""Torch datasets over :class:`~mss.data.tracks.Track` lists.

- :class:`SegmentDataset`: random training excerpts, stems ``(S, C, T)``; with ``random_tracks`` each source comes
  from an independently drawn track and offset (new mixtures that never existed); with ``repitch`` (a
  :class:`mss.augment.repitch.Repitch`) some examples get the same pitch/tempo change on every stem, here in the
  data-loader workers, still exactly ``T`` samples long; with ``effects`` (a :class:`mss.augment.effects.Effects`)
  codec round trips, filters, reverb... then apply to the example, also in the workers (same shape and alignment).
- :class:`TrackDataset`: whole tracks for validation/test: ``{"name", "mixture": (C, T), "stems": (S, C, T),
  "present": (S,)}``.

Tracks may lack sources (``data.missing_stems=allow``: :meth:`mss.data.tracks.Track.present`). Then a training item
is ``{"stems": (S, C, T), "present": (S,) bool}`` (an absent stem reads as zeros and is marked absent, for the
loss to skip it), and batches ``{"stems": (B, S, C, T), "present": (B, S)}``; otherwise plain stems tensors.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from mss.data.tracks import Track


class ExcerptDataset(Dataset):
    """The protocol of the training datasets (:class:`SegmentDataset`, :class:`mss.data.pools.PoolDataset`) that
    :class:`mss.data.sampling.SeededDataset` writes into batches: ``samples_per_epoch`` items of :attr:`item_shape`,
    read by the subclass's ``read(index, out=None, present=None)``; a subclass sets ``sources``, ``segment``,
    ``load_kw`` and ``with_presence``."""

    sources: list[str]
    segment: int
    samples_per_epoch: int
    load_kw: dict
    with_presence: bool

    def __len__(self) -> int:
        return self.samples_per_epoch

    @property
    def item_shape(self) -> tuple[int, int, int]:
        """``(S, C, T)`` of every item."""
        return len(self.sources), self.load_kw["channels"], self.segment

    def __getitem__(self, index: int) -> torch.Tensor | dict:
        """Stems ``(S, C, T)`` with T = segment; with :attr:`with_presence` ``{"stems", "present": (S,) bool}``."""
        if not self.with_presence:
            return self.read(index)
        present = torch.empty(len(self.sources), dtype=torch.bool)
        return {"stems": self.read(index, present=present), "present": present}


class SegmentDataset(ExcerptDataset):
    """``samples_per_epoch`` random excerpts of ``segment`` samples. Item ``i`` without ``random_tracks`` reads
    track ``i % len(tracks)`` (every track is seen equally often); the offset (and, with ``random_tracks``, the track
    of each source) is random. Randomness comes from torch's generator, which Lightning seeds per worker. A
    repitched example reads ``repitch.input_length(segment)`` samples (tempo up to +max_tempo plus guard bands) and
    is cut back to ``segment`` samples; ``effects`` then transform the example (their random draws follow the read's,
    and :class:`~mss.augment.effects.SourceMixup` reads extra excerpts through :meth:`excerpt`). With ``int16``
    items hold the 16-bit samples as they are (``float = int16 / 32768``: half the bytes to move from the loader
    workers; only for single-file 16-bit sources, without repitch or effects)."""

    def __init__(self, tracks: list[Track], sources: list[str], *, segment: int, samples_per_epoch: int,
                 channels: int, sample_rate: int, random_tracks: bool = False, convert: bool = False, repitch=None,
                 int16: bool = False, effects=None):
        if not tracks:
            raise ValueError("SegmentDataset: no training tracks")
        if int16 and repitch is not None:
            raise ValueError("SegmentDataset: int16 items cannot hold repitched (resynthesised) audio")
        if int16 and effects is not None:
            raise ValueError("SegmentDataset: int16 items cannot hold audio transformed by effects")
        self.effects = effects
        self.item_dtype = torch.int16 if int16 else torch.float32
        self.tracks, self.sources, self.segment = tracks, list(sources), int(segment)
        self.samples_per_epoch, self.random_tracks, self.repitch = int(samples_per_epoch), random_tracks, repitch
        self.load_kw = dict(channels=channels, sample_rate=sample_rate, convert=convert)
        self.with_presence = any(not t.present(s) for t in tracks for s in self.sources)

    def _start(self, track: Track, frames: int) -> int:
        return int(torch.randint(0, max(1, track.length - frames + 1), ()).item())

    def _draw(self, index: int) -> tuple[tuple[float, float] | None, int, list[Track], list[int]]:
        """The random choices of item ``index``: ``(repitch change or None, frames read, track of each source,
        start sample of each source)``. :meth:`read` and :meth:`describe` both draw them here, in this order."""
        change = self.repitch.draw() if self.repitch is not None else None
        frames = self.segment if change is None else self.repitch.input_length(self.segment)
        if self.random_tracks:
            picks = [self.tracks[t] for t in torch.randint(0, len(self.tracks), (len(self.sources),)).tolist()]
            starts = [self._start(t, frames) for t in picks]
        else:
            track = self.tracks[index % len(self.tracks)]
            picks, starts = [track] * len(self.sources), [self._start(track, frames)] * len(self.sources)
        return change, frames, picks, starts

    def read(self, index: int, out: torch.Tensor | None = None, present: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Item ``index``, written into ``out`` (``(S, C, T)`` of :attr:`item_dtype`, e.g. a row of a shared-memory
        batch) when given: every stem is read straight into its row (no per-stem tensors, no stacking copy). The
        presence of each source (``(S,)`` bool) is written into ``present`` when given."""
        change, frames, picks, starts = self._draw(index)
        if present is not None:
            present.copy_(torch.tensor([t.present(s) for t, s in zip(picks, self.sources)]))
        direct = out is not None and change is None and self.effects is None
        stems = out if direct else torch.empty(*self.item_shape[:2], frames, dtype=self.item_dtype)
        for row, track, source, start in zip(stems, picks, self.sources, starts):
            track.read_source(source, start=start, frames=frames, out=row, **self.load_kw)
        if change is None and self.effects is None:
            return stems
        if change is not None:
            stems = self.repitch(stems, change, self.segment, self.sources)
        if self.effects is not None:
            stems = self.effects(stems, reader=self.excerpt)
        return stems if out is None else out.copy_(stems)

    def excerpt(self, source: str) -> torch.Tensor:
        """Another excerpt ``(C, segment)`` of ``source``, from a random training track and offset (torch's
        generator): the second excerpt of same-source mixup."""
        track = self.tracks[int(torch.randint(0, len(self.tracks), ()))]
        row = torch.empty(self.item_shape[1], self.segment, dtype=torch.float32)
        track.read_source(source, start=self._start(track, self.segment), frames=self.segment, out=row,
                          **self.load_kw)
        return row

    def describe(self, index: int) -> str:
        """Where item ``index`` comes from (track, start sample and time; per source with ``random_tracks``; the repitch
        change), drawn as :meth:`read` draws it but without reading audio: called in the same random state (the
        same item seed), it names exactly the excerpt :meth:`read` returned."""
        change, frames, picks, starts = self._draw(index)
        where = [f"{t.name} from sample {s} ({s / t.sample_rate:.2f} s)" for t, s in zip(picks, starts)]
        text = (f"{where[0]}, {frames} samples" if not self.random_tracks else
                f"{frames} samples of " + ", ".join(f"{src}: {w}" for src, w in zip(self.sources, where)))
        if change is not None:
            text += f", repitched {change[0]:+.2f} semitones at tempo x{change[1]:.3f}"
        return text


class TrackDataset(Dataset):
    """Whole tracks: ``{"name": str, "mixture": (C, T), "stems": (S, C, T), "present": (S,) bool}`` (an absent
    source's stem is zeros and ``present`` False: metrics skip it)."""

    def __init__(self, tracks: list[Track], sources: list[str], *, channels: int, sample_rate: int,
                 convert: bool = False):
        self.tracks, self.sources = tracks, list(sources)
        self.load_kw = dict(channels=channels, sample_rate=sample_rate, convert=convert)

    def __len__(self) -> int:
        return len(self.tracks)

    def __getitem__(self, index: int) -> dict:
        track = self.tracks[index]
        stems = torch.stack([track.read_source(s, **self.load_kw) for s in self.sources])
        present = torch.tensor([track.present(s) for s in self.sources])
        return {"name": track.name, "mixture": track.read_mixture(**self.load_kw), "stems": stems, "present": present}

