"""The shared inference of magnitude-estimating separators (Open-Unmix, MMDenseNet/MMDenseLSTM, D3Net): one network
per target maps the mixture's magnitude spectrogram to the target's, and the complex estimates come from the
mixture phase or, in eval mode with ``wiener_iterations > 0``, from multichannel Wiener EM
(:func:`mss.audio.wiener.wiener`, ``softmask=False``; with one target, or with ``residual``, the residual
``mix - sum(targets)`` joins the EM as an extra source and is dropped afterwards). STFT and iSTFT run in float32 even
under autocast.

Shape legend: ``B`` batch, ``S`` targets, ``C`` channels, ``F`` bins, ``N`` frames, ``T`` samples.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mss.audio.spectral import istft, stft
from mss.audio.wiener import wiener
from mss.models.base import Separator

__all__ = ["MagnitudeSeparator"]


class MagnitudeSeparator(Separator):
    """A :class:`Separator` whose ``targets`` (an ``nn.ModuleDict``, one network per source, in source order) map
    magnitudes ``(B, C, F, N) -> (B, C, F, N)``; subclasses build ``targets`` and call :meth:`set_masking`."""

    targets: nn.ModuleDict

    def set_masking(self, n_fft: int, hop_length: int, wiener_iterations: int, wiener_window: int | None,
                    residual: bool) -> None:
        """The STFT and the Wiener post-processing (``wiener_iterations`` EM iterations on windows of
        ``wiener_window`` frames; 0: mixture phase only)."""
        if wiener_iterations < 0:
            raise ValueError(f"{type(self).__name__}: wiener_iterations must be >= 0, got {wiener_iterations}")
        self.n_fft, self.hop_length = n_fft, hop_length
        self.wiener_iterations, self.wiener_window, self.residual = wiener_iterations, wiener_window, residual

    def forward(self, mix: Tensor) -> Tensor:
        """Separate ``mix``: ``(B, C, T)`` -> ``(B, S, C, T)``."""
        self.check_mixture(mix)
        length = mix.shape[-1]
        pad_mode = "reflect" if length > self.n_fft // 2 else "constant"
        with torch.autocast(mix.device.type, enabled=False):
            spec = stft(mix.float(), self.n_fft, self.hop_length, pad_mode=pad_mode)  # B C F N
        mag = spec.abs()
        est = torch.stack([net(mag) for net in self.targets.values()], dim=1).float()  # B S C F N
        with torch.autocast(mix.device.type, enabled=False):
            if self.wiener_iterations > 0 and not self.training:
                residual = self.residual or len(self.sources) == 1
                out = wiener(est, spec, iterations=self.wiener_iterations, softmask=False, residual=residual,
                             window_frames=self.wiener_window)[:, :len(self.sources)]
            else:
                out = torch.polar(est, spec.angle().unsqueeze(1).expand_as(est))
            return istft(out, self.n_fft, self.hop_length, length)
