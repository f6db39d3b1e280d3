"""Separation losses with a shape contract: ``loss(estimates, references) -> (S,)`` per-source values, each averaged
over batch, channels and time (the LightningModule applies per-source weights and sums).

Shapes: ``estimates``/``references`` are stems ``(B, S, C, T)``.
"""

from __future__ import annotations

import torch
from torch import nn

from mss.audio.spectral import stft


def check_shapes(estimates: torch.Tensor, references: torch.Tensor) -> None:
    """The losses' shape contract: ``estimates`` and ``references`` both ``(B, S, C, T)`` (or alike for
    spectrogram losses); a ``ValueError`` naming both shapes otherwise."""
    if estimates.dim() != 4 or estimates.shape != references.shape:
        raise ValueError(f"loss expects estimates and references shaped (B, S, C, T) alike, got "
                         f"{tuple(estimates.shape)} and {tuple(references.shape)}")


class WaveformL1(nn.Module):
    """Mean absolute error on waveforms, per source (Demucs)."""

    def forward(self, estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        check_shapes(estimates, references)
        return (estimates - references).abs().mean(dim=(0, 2, 3))


class WaveformMSE(nn.Module):
    """Mean squared error on waveforms, per source."""

    def forward(self, estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        check_shapes(estimates, references)
        return (estimates - references).square().mean(dim=(0, 2, 3))


class SpectrogramL1(nn.Module):
    """Mean absolute error between STFT magnitudes of estimates and references, per source (Spleeter's ``L1_mask``
    loss on the masked magnitude, computed here from the waveforms so it applies to any model).

    ``freq_bins`` keeps the first bins only (Spleeter trains on F=1024 of 2049 bins); ``None`` keeps all.
    """

    def __init__(self, n_fft: int = 4096, hop_length: int = 1024, freq_bins: int | None = None):
        super().__init__()
        self.n_fft, self.hop_length, self.freq_bins = n_fft, hop_length, freq_bins

    def forward(self, estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        check_shapes(estimates, references)
        both = stft(torch.stack([estimates, references]).float(), self.n_fft, self.hop_length).abs()
        if self.freq_bins is not None:
            both = both[..., : self.freq_bins, :]
        return (both[0] - both[1]).abs().mean(dim=(0, 2, 3, 4))


class CombinedLoss(nn.Module):
    """Weighted sum of several per-source losses: ``{"wave": (WaveformL1(), 1.0), ...}`` via Hydra as
    ``losses: {wave: {_target_: ...}}, weights: {wave: 1.0}``."""

    def __init__(self, losses: dict[str, nn.Module], weights: dict[str, float] | None = None):
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in losses}

    def forward(self, estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[k] * loss(estimates, references) for k, loss in self.losses.items())


# spectral losses of the RoFormer / Open-Unmix recipes (after check_shapes, which they use)
from mss.losses.multires import MultiResolutionSTFTL1, SpectrogramMSE  # noqa: E402

__all__ = ["CombinedLoss", "MultiResolutionSTFTL1", "SpectrogramL1", "SpectrogramMSE", "WaveformL1", "WaveformMSE"]
