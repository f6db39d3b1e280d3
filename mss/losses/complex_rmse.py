"""SCNet's training loss: the root-mean-square error between complex STFTs, per (example, source).

Shapes: estimates / references are stems ``(B, S, C, T)``; the loss returns ``(S,)`` (the mean over the batch of
each example's RMSE), as every mss loss does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mss.audio.spectral import stft
from mss.losses import check_shapes

__all__ = ["ComplexSpectrogramRMSE"]


class ComplexSpectrogramRMSE(nn.Module):
    """``sqrt(mean |STFT(est) - STFT(ref)|^2)`` over ``(C, F, N)`` and real/imaginary parts for each example and
    source, then the mean over examples (starrytong/SCNet ``scnet/loss.py``: ``spec_rmse_loss``).

    The reference averages the sources too; mss's module sums the per-source values, so the loss is ``S`` times the
    reference's (same gradient direction). Defaults are SCNet's STFT: rectangular window of ``n_fft`` samples,
    ``center=True`` with reflect padding, ``normalized=True`` (``1/sqrt(n_fft)``).
    """

    def __init__(self, n_fft: int = 4096, hop_length: int = 1024, window: str = "rectangular",
                 normalized: bool = True):
        super().__init__()
        self.n_fft, self.hop_length, self.window, self.normalized = n_fft, hop_length, window, normalized

    def forward(self, estimates: Tensor, references: Tensor) -> Tensor:
        check_shapes(estimates, references)
        pad_mode = "reflect" if estimates.shape[-1] > self.n_fft // 2 else "constant"
        with torch.autocast(estimates.device.type, enabled=False):
            both = stft(torch.stack([estimates, references]).float(), self.n_fft, self.hop_length,
                        pad_mode=pad_mode, normalized=self.normalized, window=self.window)
            diff = torch.view_as_real(both[0] - both[1])  # B S C F N 2
            return diff.square().mean(dim=(2, 3, 4, 5)).sqrt().mean(dim=0)
