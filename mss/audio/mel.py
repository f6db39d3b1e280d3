"""The Slaney mel scale and mel filterbank (librosa's defaults: ``htk=False``, ``norm="slaney"``, ``fmin=0``,
``fmax=sr/2``), shared by the Mel-Band RoFormer's band split and the mel-spectrogram metrics.

Shape legend: ``M`` mel bands, ``F = n_fft // 2 + 1`` STFT bins.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["hz_to_mel", "mel_edges", "mel_filterbank", "mel_to_hz"]

_LOG_STEP = math.log(6.4) / 27.0  # 27 mel per factor 6.4 above 1 kHz


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney mel scale: linear (3 mel / 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / _LOG_STEP
    return np.where(hz >= 1000.0, log, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= 15.0, 1000.0 * np.exp(_LOG_STEP * (mel - 15.0)), mel * 200.0 / 3)


def mel_edges(n_mels: int, sample_rate: int) -> np.ndarray:
    """The ``n_mels + 2`` triangle corners in Hz, equally spaced in mel from 0 to ``sample_rate / 2``."""
    return mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """``(M, F)`` float32 triangles over the STFT bins, each scaled to unit area in Hz (Slaney normalisation):
    what ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)`` returns."""
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_edges(n_mels, sample_rate)
    width = np.diff(edges)
    ramps = edges[:, None] - fft_hz[None, :]
    rising, falling = -ramps[:-2] / width[:-1, None], ramps[2:] / width[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(np.float32)
