"""Batch augmentations for training.

Batch augmentations are small ``nn.Module`` s on the stem batch ``(B, S, C, T)`` that run on the training device
before the mixture is formed (``SeparationModule`` calls ``augment(stems)``, then ``mix = stems.sum(1)``):

- :class:`Shift`: random time offset per source (Demucs); the output is ``shift`` samples shorter (the data
  module reads ``data.segment + augment shift`` so the training length stays ``data.segment``).
- :class:`FlipChannels` (L/R swap per source), :class:`FlipSign` (x -1 per source), :class:`Scale` (gain
  U[min, max] per source), :class:`GainDB` (gain in dB per source), :class:`Silence` (stem replaced by zeros).
- :class:`RemixBatch`: each source is permuted independently across the examples of fixed-size groups of the batch, so
  new mixtures are formed without depending on how the global batch is split over devices.
- :class:`Compose`: the chain built from config (``conf/augment/*.yaml``); ``null`` entries are skipped.

Every augmentation draws its random numbers on the CPU from an optional ``torch.Generator`` (else torch's global
RNG, which Lightning seeds), then moves them to the batch's device: results are reproducible and identical on CPU
and GPU. ``only: [vocals]`` restricts an augmentation to some stems (names resolved by :class:`Compose`).

Dataset-level pitch/tempo changes are :class:`mss.augment.repitch.Repitch` (in the loader workers).

Shape legend: B batch, S sources, C channels, T time; F frequency bins, N frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Augmentation", "Compose", "FlipChannels", "FlipSign", "GainDB", "RemixBatch", "Scale", "Shift",
           "Silence"]


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
                             "samples (the data module reads data.segment + shift; check data.segment_margin)")
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


class RemixBatch(Augmentation):
    """Within each group of ``group_size`` consecutive examples, permute every source independently across the
    group (probability ``proba`` per group). Groups never span devices when the per-device batch is a multiple of
    ``group_size``, so the augmentation does not depend on the number of devices; a batch that is not a multiple
    is an error (set ``data.batch_size`` accordingly)."""

    def __init__(self, proba: float = 1.0, group_size: int = 4, only: Sequence[str] | None = None):
        super().__init__(only)
        if group_size < 1:
            raise ValueError(f"augment RemixBatch.group_size={group_size}: must be >= 1")
        self.proba, self.group_size = proba, int(group_size)

    moves_stems = True  # stems change examples: Compose moves their presence (missing stems) along

    def forward(self, stems: Tensor, generator: torch.Generator | None = None, present: Tensor | None = None
                ) -> Tensor | tuple[Tensor, Tensor]:
        """``present`` (``(B, S)`` bool, optional): which stems exist (missing stems); permuted with the stems and
        returned as ``(stems, present)``."""
        _check_stems(stems)
        if not self.training:
            return stems if present is None else (stems, present)
        B, S, C, T = stems.shape
        g = self.group_size
        if B % g:
            raise ValueError(f"augment RemixBatch: batch of {B} examples is not a multiple of group_size={g} (set "
                             "data.batch_size to a multiple per device, or augment.transforms.remix.group_size)")
        n = B // g
        perm = _rand((n, g, S), generator, stems.device).argsort(dim=1)
        keep = (_rand((n, 1, 1), generator, stems.device) >= self.proba) | ~self.mask(stems)
        perm = torch.where(keep, torch.arange(g, device=stems.device)[None, :, None], perm)
        grouped = stems.reshape(n, g, S, C, T)
        out = grouped.gather(1, perm[..., None, None].expand(n, g, S, C, T)).reshape(B, S, C, T)
        if present is None:
            return out
        return out, present.reshape(n, g, S).gather(1, perm.to(present.device)).reshape(B, S)


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

    def forward(self, stems: Tensor, generator: torch.Generator | None = None, present: Tensor | None = None
                ) -> Tensor | tuple[Tensor, Tensor]:
        """``present`` (``(B, S)`` bool, missing stems): carried through the augmentations that move stems between
        examples (:class:`RemixBatch`) and returned as ``(stems, present)``; the others keep presence as it is (a
        :class:`Silence`-d stem stays a present, silent target)."""
        for t in self.transforms.values():
            if present is not None and getattr(t, "moves_stems", False):
                stems, present = t(stems, generator, present=present)
            else:
                stems = t(stems, generator) if isinstance(t, Augmentation) else t(stems)
        return stems if present is None else (stems, present)
