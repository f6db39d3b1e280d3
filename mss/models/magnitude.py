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

from mss.audio.spectral import istft, istft_pairs, pair_abs, real_valued_active, stft, stft_pairs
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
        if real_valued_active():  # ONNX export: the same on real pairs
            return self._forward_pairs(mix, pad_mode)
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

    def _forward_pairs(self, mix: Tensor, pad_mode: str) -> Tensor:
        """:meth:`forward` on real pairs ``(..., 2)`` (:func:`mss.audio.spectral.real_valued`, ONNX export): the
        mixture phase as ``atan2`` (``angle``) and the estimates as ``est * (cos, sin)`` (``polar``)."""
        if self.wiener_iterations > 0 and not self.training:
            raise ValueError(f"{type(self).__name__}: the Wiener filter (wiener_iterations > 0) has no real-valued "
                             "path; export with wiener_iterations=0 (python -m mss.export ... wiener_iterations=0)")
        spec = stft_pairs(mix.float(), self.n_fft, self.hop_length, pad_mode=pad_mode)  # B C F N 2
        est = torch.stack([net(pair_abs(spec)) for net in self.targets.values()], dim=1).float()  # B S C F N
        phase = torch.atan2(spec[..., 1], spec[..., 0]).unsqueeze(1)
        out = torch.stack([est * torch.cos(phase), est * torch.sin(phase)], dim=-1)
        return istft_pairs(out, self.n_fft, self.hop_length, mix.shape[-1])
