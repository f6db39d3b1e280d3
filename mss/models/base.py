"""The separator contract every model family implements.

A separator is a pure :class:`torch.nn.Module` that maps a mixture to its stems,
``forward(mix (B, C, T)) -> (B, S, C, T)``, and says what it separates: ``sources`` (the ``S`` names, in output
order), ``sample_rate`` (Hz), ``audio_channels`` (``C``) and ``segment_length`` (samples per chunk for overlap-add
inference, :func:`mss.inference.overlap_add.apply_model`; ``None`` when whole tracks are processed at once).
Training, evaluation, bags and separation rely on these attributes only, so any module that subclasses
:class:`Separator` (or sets the same attributes) plugs into ``model=...``.

Shape legend: ``B`` batch, ``S`` sources, ``C`` audio channels, ``T`` samples.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["Separator"]


class Separator(nn.Module):
    """Base class of the separators: stores and validates the contract's attributes.

    Args:
        sources: names of the separated sources, in output order.
        audio_channels: channels ``C`` of the mixture and of every stem.
        sample_rate: sampling rate in Hz the model was built (and trained) for.
        segment_length: samples per overlap-add chunk at inference, or ``None`` for whole tracks.
    """

    def __init__(self, sources: Sequence[str], audio_channels: int, sample_rate: int,
                 segment_length: int | None = None):
        super().__init__()
        sources, name = list(sources), type(self).__name__
        if not sources or not all(isinstance(s, str) for s in sources):
            raise ValueError(f"{name}: sources must be a non-empty list of distinct names, got {sources}")
        if len(set(sources)) != len(sources):
            raise ValueError(f"{name}: duplicate source names in {sources} (sources must be distinct)")
        if int(audio_channels) < 1 or int(sample_rate) < 1:
            raise ValueError(f"{name}: audio_channels and sample_rate must be positive, got "
                             f"{audio_channels} and {sample_rate}")
        if segment_length is not None and int(segment_length) < 1:
            raise ValueError(f"{name}: segment_length must be positive or None, got {segment_length}")
        self.sources = sources
        self.audio_channels = int(audio_channels)
        self.sample_rate = int(sample_rate)
        self.segment_length = None if segment_length is None else int(segment_length)

    def check_mixture(self, mix: Tensor) -> None:
        """Raise a ``ValueError`` naming the expected shape unless ``mix`` is ``(B, audio_channels, T)``."""
        if mix.dim() != 3 or mix.shape[1] != self.audio_channels:
            c = self.audio_channels
            raise ValueError(f"{type(self).__name__}: expected mixture waveform (B, C, T) with C={c}, i.e. a "
                             f"(B, C={c}, T) tensor; got shape {tuple(mix.shape)}")
