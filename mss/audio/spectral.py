"""STFT helpers shared by the spectrogram models and filters.

Thin wrappers around :func:`torch.stft` / :func:`torch.istft` that

* accept any number of leading dimensions (``(..., T)`` waveforms, ``(..., F, N)`` spectrograms),
* use a periodic Hann window cached per ``(n_fft, device, dtype)`` (or, with ``window="rectangular"``, a window of
  ones: what :func:`torch.stft` uses when no window is passed, as SCNet does),
* always return / take complex tensors (``return_complex=True``).

Shape legend: ``T`` samples, ``F = n_fft // 2 + 1`` frequency bins, ``N`` frames.
With ``center=True`` a signal of ``T`` samples has ``N = 1 + T // hop_length`` frames.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["WINDOWS", "hann_window", "istft", "magnitude", "stft"]

WINDOWS = ("hann", "rectangular")

_WINDOWS: dict[tuple[int, str, torch.dtype], Tensor] = {}


def hann_window(n_fft: int, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Periodic Hann window of length ``n_fft``, cached per ``(n_fft, device, dtype)``."""
    device = torch.device(device if device is not None else "cpu")
    key = (n_fft, str(device), dtype)
    window = _WINDOWS.get(key)
    if window is None:
        # always a normal tensor (an inference tensor, made during validation, cannot be saved for backward later)
        with torch.inference_mode(False):
            window = torch.hann_window(n_fft, periodic=True, device=device, dtype=dtype)
        _WINDOWS[key] = window
    return window


def _window(kind: str, n_fft: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    if kind == "hann":
        return hann_window(n_fft, device, dtype)
    if kind == "rectangular":
        return torch.ones(n_fft, device=device, dtype=dtype)
    raise ValueError(f"window must be one of {WINDOWS}, got {kind!r}")


def stft(x: Tensor, n_fft: int, hop_length: int, center: bool = True, pad_mode: str = "constant",
         normalized: bool = False, window: str = "hann") -> Tensor:
    """Complex STFT of a real signal.

    Args:
        x: real waveform ``(..., T)``.
        n_fft: FFT size (= window length).
        hop_length: hop between frames in samples.
        center: pad ``n_fft // 2`` samples on both sides so frame ``n`` is centred on sample ``n * hop``.
        pad_mode: padding used when ``center`` (``"constant"`` = zeros, works for any ``T``; ``"reflect"``
            needs ``T > n_fft // 2``).
        normalized: scale by ``n_fft ** -0.5`` (the hybrid Demucs convention; :func:`istft` must match).
        window: ``"hann"`` (periodic) or ``"rectangular"`` (ones; SCNet).

    Returns:
        complex spectrogram ``(..., F, N)`` with ``F = n_fft // 2 + 1``.
    """
    if x.is_complex():
        raise ValueError("stft expects a real waveform (..., T), got a complex tensor")
    lead, length = x.shape[:-1], x.shape[-1]
    spec = torch.stft(x.reshape(-1, length), n_fft=n_fft, hop_length=hop_length,
                      window=_window(window, n_fft, x.device, x.dtype),
                      center=center, pad_mode=pad_mode, normalized=normalized, return_complex=True)
    return spec.reshape(*lead, *spec.shape[-2:])


def istft(spec: Tensor, n_fft: int, hop_length: int, length: int, center: bool = True,
          normalized: bool = False, window: str = "hann") -> Tensor:
    """Inverse of :func:`stft` (exact up to float precision for Hann with ``hop_length <= n_fft // 2``).

    Args:
        spec: complex spectrogram ``(..., F, N)``.
        n_fft, hop_length, center: as used for the forward transform (``center=False`` is rejected by
            :func:`torch.istft` for Hann, whose first window sample is 0).
        length: number of output samples ``T`` (output is cropped / zero-padded to it).
        normalized: the forward transform was ``normalized``.
        window: the forward transform's window (``"hann"`` or ``"rectangular"``).

    Returns:
        real waveform ``(..., T)``.
    """
    if not spec.is_complex():
        raise ValueError("istft expects a complex spectrogram (..., F, N)")
    lead = spec.shape[:-2]
    wav = torch.istft(spec.reshape(-1, *spec.shape[-2:]), n_fft=n_fft, hop_length=hop_length,
                      window=_window(window, n_fft, spec.device, spec.real.dtype), center=center,
                      normalized=normalized, length=length)
    return wav.reshape(*lead, length)


def magnitude(spec: Tensor) -> Tensor:
    """Magnitude ``|spec|`` of a complex spectrogram ``(..., F, N)`` (same shape, real dtype)."""
    return spec.abs()
