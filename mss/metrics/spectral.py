"""Spectrogram-domain scores of whole tracks as ZFTurbo's MSST reports them (its ``utils/metrics.py``; the
definitions are restated here, the code is mss's). Per source, on ``(S, C, T)`` references and estimates; higher is
better for all three.

* ``bleedless`` / ``fullness`` (:func:`bleedless_fullness`): Hann STFT (``n_fft`` 4096, hop 1024, centred, zero
  padding) magnitudes of every channel, a Slaney mel filterbank (512 bands, :func:`mss.audio.mel.mel_filterbank`),
  then dB: ``20·log10(max(x, 1e-10))``, floored at 80 dB below the maximum over the source's channels, mel bands and
  frames. With ``d = est_dB − ref_dB``: ``bleedless = 100 / (1 + mean(d | d > 0))`` (energy the estimate adds:
  bleed) and ``fullness = 100 / (1 + mean(−d | d < 0))`` (energy it misses). A mean over no element is 0, so 100.
* ``l1_freq`` (:func:`l1_freq`): ``100 / (1 + 10·mean|‖STFT(ŝ)‖ − ‖STFT(s)‖|)`` with MSST's STFT, which has no
  window (rectangular, torch's default) and reflect padding: ``n_fft`` 2048, hop 1024.
"""

from __future__ import annotations

import torch

from mss.audio.mel import mel_filterbank

__all__ = ["bleedless_fullness", "l1_freq"]


def _check(references: torch.Tensor, estimates: torch.Tensor) -> None:
    if references.shape != estimates.shape or references.dim() != 3:
        raise ValueError(f"expected references and estimates shaped (S, C, T) alike, got "
                         f"{tuple(references.shape)} and {tuple(estimates.shape)}")


def _mel_db(x: torch.Tensor, fbank: torch.Tensor, n_fft: int, hop_length: int) -> torch.Tensor:
    """``(C, T)`` -> ``(C, M, N)`` mel magnitudes in dB, floored 80 dB below their maximum."""
    window = torch.hann_window(n_fft, dtype=x.dtype, device=x.device)
    mag = torch.stft(x, n_fft, hop_length, window=window, center=True, pad_mode="constant",
                     return_complex=True).abs()
    db = 20.0 * torch.log10((fbank @ mag).clamp_min(1e-10))
    return db.clamp_min(db.max() - 80.0)


def bleedless_fullness(references: torch.Tensor, estimates: torch.Tensor, sample_rate: int, n_fft: int = 4096,
                       hop_length: int = 1024, n_mels: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bleedless (S,), fullness (S,))`` of ``(S, C, T)`` stems (see the module docstring)."""
    _check(references, estimates)
    fbank = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels)).to(references.device)
    bleedless, fullness = [], []
    for ref, est in zip(references.float(), estimates.float()):
        diff = _mel_db(est, fbank, n_fft, hop_length) - _mel_db(ref, fbank, n_fft, hop_length)
        above, below = diff[diff > 0], diff[diff < 0]
        bleedless.append(100.0 / (1.0 + (above.mean().item() if above.numel() else 0.0)))
        fullness.append(100.0 / (1.0 - (below.mean().item() if below.numel() else 0.0)))
    return torch.tensor(bleedless), torch.tensor(fullness)


def l1_freq(references: torch.Tensor, estimates: torch.Tensor, n_fft: int = 2048, hop_length: int = 1024
            ) -> torch.Tensor:
    """``(S,)`` MSST's L1-frequency score of ``(S, C, T)`` stems (see the module docstring)."""
    _check(references, estimates)
    out = []
    for ref, est in zip(references.float(), estimates.float()):
        window = torch.ones(n_fft, dtype=ref.dtype, device=ref.device)
        spec = [torch.stft(x, n_fft, hop_length, window=window, center=True, pad_mode="reflect",
                           return_complex=True).abs() for x in (ref, est)]
        out.append(100.0 / (1.0 + 10.0 * (spec[1] - spec[0]).abs().mean().item()))
    return torch.tensor(out)
