"""Mel-Band RoFormer (Wang, Lu, Won 2023): :class:`~mss.models.roformer.BandRoformer` with overlapping mel bands.

Band ``k`` holds every STFT bin where the ``k``-th triangle of a Slaney mel filterbank (librosa's default:
Slaney mel scale, ``fmin=0``, ``fmax=sr/2``) is positive; the DC bin is forced into the first band and the Nyquist bin
into the last one (as in the reference implementations). With 60 bands at 44.1 kHz / ``n_fft=2048`` this gives 60
contiguous bands with 1,979 bin memberships: 954 bins lie in two bands, 71 in one. Shared bins are gathered into
both bands and their two complex masks are averaged.

Shape legend: ``B`` batch, ``S`` stems, ``C`` channels, ``T`` samples, ``F`` bins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mss.audio.mel import mel_edges
from mss.models.roformer import BandRoformer

__all__ = ["MelRoformer", "mel_bands"]


def mel_bands(num_bands: int, sample_rate: int, n_fft: int) -> list[list[int]]:
    """Bins of each of ``num_bands`` mel bands (binarised Slaney mel filterbank, DC and Nyquist forced in).

    Raises:
        ValueError: some band holds no bin or some bin lies in no band (too many bands for the FFT size).
    """
    n_bins = n_fft // 2 + 1
    fft_hz = np.linspace(0.0, sample_rate / 2, n_bins)
    edges = mel_edges(num_bands, sample_rate)
    width = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    member = np.zeros((num_bands, n_bins), dtype=bool)
    for k in range(num_bands):
        rising, falling = -ramps[k] / width[k], ramps[k + 2] / width[k + 1]
        member[k] = np.minimum(rising, falling) > 0
    member[0, 0] = member[-1, -1] = True
    empty = np.flatnonzero(~member.any(axis=1))
    if empty.size:
        raise ValueError(f"mel bands {empty[:10].tolist()} contain no STFT bin at n_fft={n_fft}, "
                         f"sample_rate={sample_rate}; use fewer than {num_bands} bands or a larger n_fft")
    uncovered = np.flatnonzero(~member.any(axis=0))
    if uncovered.size:
        raise ValueError(f"{num_bands} mel bands leave STFT bins {uncovered[:10].tolist()} uncovered at "
                         f"n_fft={n_fft}, sample_rate={sample_rate}; use fewer bands or a larger n_fft")
    return [np.flatnonzero(row).tolist() for row in member]


class MelRoformer(BandRoformer):
    """Mel-Band RoFormer separator: mixture ``(B, C, T)`` -> stems ``(B, S, C, T)``.

    Defaults follow lucidrains / MSST (RMSNorm after every Transformer, no final norm, per-head gates) at the paper's
    size L=6, D=384 with 8 heads x 48 and one hidden mask layer: 84,193,620 parameters for stereo and one stem.

    Args:
        num_bands: number of mel bands (60 in the paper).
        **kwargs: see :class:`~mss.models.roformer.BandRoformer`.
    """

    def __init__(self, sources: Sequence[str], num_bands: int = 60, *, sample_rate: int = 44100, n_fft: int = 2048,
                 gates: bool = True, final_norm: bool = False, mask_norm: bool = False, transformer_norm: bool = True,
                 **kwargs):
        super().__init__(sources, mel_bands(num_bands, sample_rate, n_fft), sample_rate=sample_rate, n_fft=n_fft,
                         gates=gates, final_norm=final_norm, mask_norm=mask_norm, transformer_norm=transformer_norm,
                         **kwargs)
