"""Spectral losses of the RoFormer and Open-Unmix recipes, with the per-source contract of :mod:`mss.losses`:
``loss(estimates, references) -> (S,)``, estimates and references stems ``(B, S, C, T)``.

* :class:`MultiResolutionSTFTL1`: BS-RoFormer's multi-resolution **complex** STFT L1 (Lu et al. 2023, eq. 1): for
  every window size ``w`` in 4096, 2048, 1024, 512, 256 an STFT with hop 147, a Hann window of ``w`` centred in an
  FFT of ``max(w, 2048)``, reflect padding; the mean complex modulus ``|Y - Y_hat|`` per source, summed over the
  resolutions. Combined with :class:`mss.losses.WaveformL1` (``conf/module/loss/roformer.yaml``) it is the
  lucidrains / MSST training loss ``mean|y - y_hat| + sum_res mean|Y - Y_hat|``.
* :class:`SpectrogramMSE`: Open-Unmix's mean squared error between STFT magnitudes.

STFTs run in float32 with autocast disabled (the paper keeps STFT/iSTFT in FP32 under mixed precision).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F_
from torch import Tensor, nn

from mss.audio.spectral import stft
from mss.losses import check_shapes

__all__ = ["MultiResolutionSTFTL1", "SpectrogramMSE"]


class MultiResolutionSTFTL1(nn.Module):
    """Sum over resolutions of the mean complex STFT L1 distance, per source.

    Args:
        windows: Hann window lengths, one STFT each.
        hop_length: hop of every STFT (147 = 300 frames/s at 44.1 kHz).
        min_n_fft: FFT size is ``max(window, min_n_fft)`` (shorter windows are zero-padded, centred).
    """

    def __init__(self, windows: Sequence[int] = (4096, 2048, 1024, 512, 256), hop_length: int = 147,
                 min_n_fft: int = 2048):
        super().__init__()
        if not windows or any(int(w) < 2 for w in windows) or hop_length < 1:
            raise ValueError(f"windows must be lengths >= 2 and hop_length >= 1, got {windows}, {hop_length}")
        self.windows, self.hop_length, self.min_n_fft = [int(w) for w in windows], hop_length, min_n_fft

    def forward(self, estimates: Tensor, references: Tensor) -> Tensor:
        check_shapes(estimates, references)
        with torch.autocast(estimates.device.type, enabled=False):
            both = torch.stack([estimates, references]).float()
            length = both.shape[-1]
            flat = both.reshape(-1, length)
            total = estimates.new_zeros(estimates.shape[1], dtype=torch.float32)
            for win in self.windows:
                n_fft = max(win, self.min_n_fft)
                window = torch.hann_window(win, device=flat.device)
                pad_mode = "reflect" if length > n_fft // 2 else "constant"
                spec = torch.stft(flat, n_fft, self.hop_length, win_length=win, window=window, center=True,
                                  pad_mode=pad_mode, return_complex=True)
                spec = spec.reshape(*both.shape[:-1], *spec.shape[-2:])  # 2 B S C F N
                total = total + (spec[0] - spec[1]).abs().mean(dim=(0, 2, 3, 4))
        return total


class SpectrogramMSE(nn.Module):
    """Mean squared error between STFT magnitudes (periodic Hann ``n_fft``/``hop_length``), per source.

    Open-Unmix trains on ``MSE(|model output|, |STFT(target)|)``; here the model output is the waveform estimate,
    so its magnitude is that of the re-analysed iSTFT (a consistent spectrogram).
    """

    def __init__(self, n_fft: int = 4096, hop_length: int = 1024):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length

    def forward(self, estimates: Tensor, references: Tensor) -> Tensor:
        check_shapes(estimates, references)
        with torch.autocast(estimates.device.type, enabled=False):
            both = stft(torch.stack([estimates, references]).float(), self.n_fft, self.hop_length).abs()
        return F_.mse_loss(both[0], both[1], reduction="none").mean(dim=(0, 2, 3, 4))
