"""Band-Split RoFormer (Lu, Wang, Kong, Hung, ICASSP 2024): :class:`~mss.models.roformer.BandRoformer` with the 62
non-overlapping bands of the paper.

Band scheme for ``n_fft = 2048`` (1025 bins): 24 bands of 2 bins, 12 of 4, 8 of 12, 8 of 24, 8 of 48, then 128 and
129 (:data:`PAPER_BANDS`); any other table whose sizes sum to ``n_fft // 2 + 1`` can be given.

Shape legend: ``B`` batch, ``S`` stems, ``C`` channels, ``T`` samples.
"""

from __future__ import annotations

from collections.abc import Sequence

from mss.models.roformer import BandRoformer

__all__ = ["PAPER_BANDS", "BSRoformer", "contiguous_bands"]

PAPER_BANDS: tuple[int, ...] = (2,) * 24 + (4,) * 12 + (12,) * 8 + (24,) * 8 + (48,) * 8 + (128, 129)


def contiguous_bands(freqs_per_bands: Sequence[int], n_fft: int) -> list[list[int]]:
    """Bin lists of consecutive bands of the given sizes, checked to cover the ``n_fft // 2 + 1`` bins exactly once."""
    sizes = [int(f) for f in freqs_per_bands]
    n_bins = n_fft // 2 + 1
    if any(f < 1 for f in sizes) or sum(sizes) != n_bins:
        raise ValueError(f"freqs_per_bands must be positive and sum to n_fft // 2 + 1 = {n_bins} "
                         f"(n_fft={n_fft}), got {len(sizes)} bands summing to {sum(sizes)}")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [list(range(s, s + f)) for s, f in zip(starts, sizes)]


class BSRoformer(BandRoformer):
    """BS-RoFormer separator: mixture ``(B, C, T)`` -> stems ``(B, S, C, T)``.

    Defaults are the paper's L=6 model (D=384, 8 heads x 48, dropout 0.1, no gates, per-band mask RMSNorm plus the
    final RMSNorm of the reference code, one hidden mask layer of 4D, hop 441, 8-s segments): 72,160,188 parameters
    for stereo and one stem (2 x 24 of them the frozen RoPE frequencies), the paper's 72.2M. lucidrains / MSST
    checkpoints use ``head_dim=64, gates=True, mask_norm=False`` and hop 512 (MSST: ``zero_dc=True``).

    Args:
        freqs_per_bands: bins per band, low to high (``None``: the paper's 62 bands, needs ``n_fft=2048``).
        **kwargs: see :class:`~mss.models.roformer.BandRoformer`.
    """

    def __init__(self, sources: Sequence[str], freqs_per_bands: Sequence[int] | None = None, *,
                 n_fft: int = 2048, **kwargs):
        bands = contiguous_bands(PAPER_BANDS if freqs_per_bands is None else freqs_per_bands, n_fft)
        super().__init__(sources, bands, n_fft=n_fft, **kwargs)
