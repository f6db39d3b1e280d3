"""STFT helpers shared by the spectrogram models and filters.

Thin wrappers around :func:`torch.stft` / :func:`torch.istft` that

* accept any number of leading dimensions (``(..., T)`` waveforms, ``(..., F, N)`` spectrograms),
* use a periodic Hann window cached per ``(n_fft, device, dtype)`` (or, with ``window="rectangular"``, a window of
  ones: what :func:`torch.stft` uses when no window is passed, as SCNet does),
* always return / take complex tensors (``return_complex=True``); :func:`stft_pairs` / :func:`istft_pairs` return /
  take the same spectrogram as real pairs ``(..., F, N, 2)`` (``torch.view_as_real``; the models that go on in
  real arithmetic call them).

Inside :func:`real_valued` (a context manager; :func:`mss.inference.export.export_onnx` exports in it) the transforms
take and give real pairs through ops that the ONNX exporter converts, with :func:`torch.stft`'s padding (``center``,
``constant`` / ``reflect``) and scaling (``normalized``); they match :func:`torch.stft` / :func:`torch.istft` within
float32 rounding. Two ways (``real_valued(dft=...)``):

* ``"fft"`` (default): framing (``unfold``) times the window, :func:`torch.fft.rfft` viewed as real pairs at once
  (exported as the ONNX ``DFT`` op, which onnxruntime computes by an FFT); the inverse by :func:`torch.fft.irfft`
  of the frames times the window, overlap-added by ``n_fft / hop_length`` shifted sums and divided by the
  overlap-added squared window. The complex intermediates never leave these helpers (:data:`COMPLEX_INSIDE`). A hop
  that does not divide ``n_fft`` takes the ``"conv"`` inverse.
* ``"conv"``: framing and DFT in one strided ``conv1d`` whose kernels are the window times the cosine / minus sine
  basis, the inverse by ``conv_transpose1d`` with the inverse basis (overlap-add) divided by the overlap-added
  squared window: no complex op at all, but ``O(n_fft^2)`` per frame (HT Demucs' 4096-point STFT + iSTFT: about
  113 GFLOP per 7.8 s stereo chunk).

The models check :func:`real_valued_active` to take their real-pair path (:func:`pair_abs`, :func:`pair_mul`);
:func:`stft` / :func:`istft` keep working there (through ``torch.view_as_complex``), but their complex results do
not export.

Shape legend: ``T`` samples, ``F = n_fft // 2 + 1`` frequency bins, ``N`` frames, ``2`` (real, imaginary).
With ``center=True`` a signal of ``T`` samples has ``N = 1 + T // hop_length`` frames.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F_
from torch import Tensor

__all__ = ["COMPLEX_INSIDE", "DFTS", "WINDOWS", "hann_window", "irfft_ortho_real", "istft", "istft_pairs", "magnitude",
           "pair_abs", "pair_mul", "real_valued", "real_valued_active", "rfft_ortho_real", "stft", "stft_pairs"]

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


DFTS = ("fft", "conv")
# the helpers whose complex intermediates (rfft / irfft) never leave them (export_onnx's complex-op check skips them)
COMPLEX_INSIDE = frozenset({"_stft_fft", "_istft_fft"})

_REAL_VALUED: contextvars.ContextVar[str | None] = contextvars.ContextVar("mss_spectral_real_valued", default=None)
_BASES: dict[tuple[int, str, bool], tuple[np.ndarray, np.ndarray]] = {}  # (n, window or 'ortho', inverse)
_ENVELOPES: dict[tuple[int, int, int, str], np.ndarray] = {}  # (n_fft, hop, frames, window)


@contextlib.contextmanager
def real_valued(dft: str = "fft") -> Iterator[None]:
    """Compute the STFT / iSTFT on real pairs by ops the ONNX exporter converts inside the ``with`` block; ``dft``:
    ``"fft"`` (:func:`torch.fft.rfft` / ``irfft``, exported as ONNX ``DFT``) or ``"conv"`` (DFT-kernel
    convolutions, no complex op)."""
    if dft not in DFTS:
        raise ValueError(f"dft must be one of {DFTS}, got {dft!r}")
    token = _REAL_VALUED.set(dft)
    try:
        yield
    finally:
        _REAL_VALUED.reset(token)


def real_valued_active() -> bool:
    """Whether :func:`real_valued` is in effect (the models then compute on real pairs, not complex tensors)."""
    return _REAL_VALUED.get() is not None


def _np_window(kind: str, n_fft: int) -> np.ndarray:
    if kind == "hann":  # periodic
        return 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    if kind == "rectangular":
        return np.ones(n_fft)
    raise ValueError(f"window must be one of {WINDOWS}, got {kind!r}")


def _basis(n_fft: int, window: str, inverse: bool, like: Tensor) -> tuple[Tensor, Tensor]:
    """DFT kernels ``(2F, 1, n_fft)`` times the window (rows: cosine for the real parts, then minus sine for the
    imaginary parts); ``inverse``: the one-sided inverse DFT (weights 1 for DC / Nyquist, else 2, over ``n_fft``)
    times the window, so that ``conv_transpose1d`` does the inverse DFT and the overlap-add at once. Also returns
    the window ``(n_fft,)``. Built in float64 numpy (phases from the exact integer ``k * n mod n_fft``) and cached
    as numpy arrays (a tensor made while the exporter traces is a fake one), returned on ``like``'s device and
    dtype."""
    key = (n_fft, window, inverse)
    if key not in _BASES:
        bins = n_fft // 2 + 1
        phase = (np.arange(bins)[:, None] * np.arange(n_fft)[None] % n_fft) * (2 * np.pi / n_fft)
        win = _np_window(window, n_fft)
        cos, sin = np.cos(phase) * win, -np.sin(phase) * win
        if inverse:
            weight = np.full((bins, 1), 2.0)
            weight[0] = 1.0
            if n_fft % 2 == 0:
                weight[-1] = 1.0
            cos, sin = cos * weight / n_fft, sin * weight / n_fft
        _BASES[key] = (np.concatenate([cos, sin])[:, None], win)
    basis, win = _BASES[key]
    return (torch.as_tensor(basis, dtype=like.dtype, device=like.device),
            torch.as_tensor(win, dtype=like.dtype, device=like.device))


def _centred(x: Tensor, n_fft: int, center: bool, pad_mode: str) -> Tensor:
    """``(..., T)`` -> ``(M, 1, T')``: the signals, padded by ``n_fft // 2`` on both sides when ``center`` (as
    :func:`torch.stft`)."""
    if pad_mode not in ("constant", "reflect"):
        raise ValueError(f"pad_mode must be 'constant' or 'reflect', got {pad_mode!r}")
    sig = x.reshape(-1, 1, x.shape[-1])
    return F_.pad(sig, (n_fft // 2, n_fft // 2), mode=pad_mode) if center else sig


def _stft_real(x: Tensor, n_fft: int, hop_length: int, center: bool, pad_mode: str, normalized: bool,
               window: str) -> Tensor:
    """:func:`stft_pairs` by real-valued ops: ``(..., T)`` -> ``(..., F, N, 2)``."""
    lead, frames = x.shape[:-1], _centred(x, n_fft, center, pad_mode)
    out = F_.conv1d(frames, _basis(n_fft, window, False, x)[0], stride=hop_length)  # M 2F N
    if normalized:
        out = out * n_fft ** -0.5
    out = out.reshape(-1, 2, n_fft // 2 + 1, out.shape[-1]).permute(0, 2, 3, 1)
    return out.reshape(*lead, *out.shape[1:])


def _istft_real(z: Tensor, n_fft: int, hop_length: int, length: int, center: bool, normalized: bool,
                window: str) -> Tensor:
    """:func:`istft_pairs` by real-valued ops: ``(..., F, N, 2)`` -> ``(..., T)``."""
    lead, (bins, frames) = z.shape[:-3], z.shape[-3:-1]
    if bins != n_fft // 2 + 1:
        raise ValueError(f"istft: expected {n_fft // 2 + 1} frequency bins for n_fft={n_fft}, got {bins}")
    ri = z.reshape(-1, bins, frames, 2).permute(0, 3, 1, 2).reshape(-1, 2 * bins, frames)  # M 2F N
    if normalized:
        ri = ri * n_fft ** 0.5
    basis, win = _basis(n_fft, window, True, z)
    wav = F_.conv_transpose1d(ri, basis, stride=hop_length)[:, 0]
    envelope = F_.conv_transpose1d(torch.ones(1, 1, frames, device=z.device, dtype=z.dtype),
                                   (win * win).view(1, 1, n_fft), stride=hop_length)[0, 0]
    start = n_fft // 2 if center else 0
    stop = min(start + length, wav.shape[-1])
    wav = wav[:, start:stop] / envelope[start:stop]
    wav = F_.pad(wav, (0, length - wav.shape[-1]))
    return wav.reshape(*lead, length)


def _constant(array: np.ndarray, like: Tensor) -> Tensor:
    # from numpy each call: a tensor made while the exporter traces is a fake one, so none is cached
    return torch.as_tensor(array, dtype=like.dtype, device=like.device)


def _stft_fft(x: Tensor, n_fft: int, hop_length: int, center: bool, pad_mode: str, normalized: bool,
              window: str) -> Tensor:
    """:func:`stft_pairs` by ``unfold`` and :func:`torch.fft.rfft`: ``(..., T)`` -> ``(..., F, N, 2)``."""
    lead, sig = x.shape[:-1], _centred(x, n_fft, center, pad_mode)
    frames = sig[:, 0].unfold(-1, n_fft, hop_length) * _constant(_np_window(window, n_fft), x)  # M N n_fft
    spec = torch.view_as_real(torch.fft.rfft(frames, dim=-1, norm="ortho" if normalized else "backward"))
    out = spec.transpose(1, 2)  # M F N 2
    return out.reshape(*lead, *out.shape[1:])


def _envelope(n_fft: int, hop_length: int, frames: int, window: str) -> np.ndarray:
    """Overlap-added squared window of ``frames`` frames ``((frames - 1) * hop + n_fft,)``, cached."""
    key = (n_fft, hop_length, frames, window)
    if key not in _ENVELOPES:
        win2 = _np_window(window, n_fft) ** 2
        env = np.zeros((frames - 1) * hop_length + n_fft)
        for i in range(frames):
            env[i * hop_length : i * hop_length + n_fft] += win2
        _ENVELOPES[key] = env
    return _ENVELOPES[key]


def _istft_fft(z: Tensor, n_fft: int, hop_length: int, length: int, center: bool, normalized: bool,
               window: str) -> Tensor:
    """:func:`istft_pairs` by :func:`torch.fft.irfft` and a shifted-sum overlap-add: ``(..., F, N, 2)`` ->
    ``(..., T)`` (``hop_length`` must divide ``n_fft``)."""
    lead, (bins, frames) = z.shape[:-3], z.shape[-3:-1]
    if bins != n_fft // 2 + 1:
        raise ValueError(f"istft: expected {n_fft // 2 + 1} bins for n_fft={n_fft}, got {bins}")
    spec = torch.view_as_complex(z.reshape(-1, bins, frames, 2).transpose(1, 2).contiguous())  # M N F
    wav = torch.fft.irfft(spec, n=n_fft, dim=-1, norm="ortho" if normalized else "backward")  # M N n_fft
    wav = wav * _constant(_np_window(window, n_fft), z)
    parts = n_fft // hop_length  # frame i, part k lands at (i + k) * hop
    wav = wav.reshape(-1, frames, parts, hop_length)
    total = (frames + parts - 1) * hop_length
    wav = sum(F_.pad(wav[:, :, k].reshape(-1, frames * hop_length), (k * hop_length, (parts - 1 - k) * hop_length))
              for k in range(parts))
    envelope = _envelope(n_fft, hop_length, frames, window)
    start = n_fft // 2 if center else 0
    stop = min(start + length, total)
    wav = wav[:, start:stop] / _constant(envelope[start:stop], z)
    wav = F_.pad(wav, (0, length - wav.shape[-1]))
    return wav.reshape(*lead, length)


def _stft_mode(x: Tensor, n_fft: int, hop_length: int, center: bool, pad_mode: str, normalized: bool,
               window: str) -> Tensor:
    fn = _stft_fft if _REAL_VALUED.get() == "fft" else _stft_real
    return fn(x, n_fft, hop_length, center, pad_mode, normalized, window)


def _istft_mode(z: Tensor, n_fft: int, hop_length: int, length: int, center: bool, normalized: bool,
                window: str) -> Tensor:
    fn = _istft_fft if _REAL_VALUED.get() == "fft" and n_fft % hop_length == 0 else _istft_real
    return fn(z, n_fft, hop_length, length, center, normalized, window)


def stft_pairs(x: Tensor, n_fft: int, hop_length: int, center: bool = True, pad_mode: str = "constant",
               normalized: bool = False, window: str = "hann") -> Tensor:
    """:func:`stft` as real pairs ``(..., F, N, 2)`` (``torch.view_as_real`` of it; by real-valued ops inside
    :func:`real_valued`). Arguments as for :func:`stft`."""
    if x.is_complex():
        raise ValueError("stft expects a real waveform (..., T), got a complex tensor")
    if real_valued_active():
        return _stft_mode(x, n_fft, hop_length, center, pad_mode, normalized, window)
    return torch.view_as_real(stft(x, n_fft, hop_length, center, pad_mode, normalized, window))


def istft_pairs(z: Tensor, n_fft: int, hop_length: int, length: int, center: bool = True,
                normalized: bool = False, window: str = "hann") -> Tensor:
    """:func:`istft` of a spectrogram given as real pairs ``(..., F, N, 2)`` (by real-valued ops inside
    :func:`real_valued`). Other arguments as for :func:`istft`."""
    if z.is_complex() or z.shape[-1:] != (2,):
        raise ValueError(f"istft_pairs expects real pairs (..., F, N, 2), got {z.dtype} {tuple(z.shape)}")
    if real_valued_active():
        return _istft_mode(z, n_fft, hop_length, length, center, normalized, window)
    return istft(torch.view_as_complex(z.contiguous()), n_fft, hop_length, length, center, normalized, window)


def rfft_ortho_real(x: Tensor) -> tuple[Tensor, Tensor]:
    """``torch.fft.rfft(x, norm="ortho")`` along the last axis by real-valued ops (a matmul with the cosine / minus
    sine basis): ``(..., n) -> (real, imaginary)``, each ``(..., n // 2 + 1)``."""
    n = x.shape[-1]
    basis = torch.as_tensor(_dft_matrix(n, False), dtype=x.dtype, device=x.device)  # n 2K
    out = torch.matmul(x, basis)
    return out[..., : n // 2 + 1], out[..., n // 2 + 1:]


def irfft_ortho_real(real: Tensor, imag: Tensor, n: int) -> Tensor:
    """``torch.fft.irfft(torch.complex(real, imag), n, norm="ortho")`` along the last axis by real-valued ops (the
    imaginary parts of the DC and Nyquist bins are ignored, as there): ``(..., n // 2 + 1) -> (..., n)``."""
    if real.shape[-1] != n // 2 + 1:
        raise ValueError(f"irfft: expected {n // 2 + 1} bins for n={n}, got {real.shape[-1]}")
    basis = torch.as_tensor(_dft_matrix(n, True), dtype=real.dtype, device=real.device)  # 2K n
    return torch.matmul(torch.cat([real, imag], dim=-1), basis)


def _dft_matrix(n: int, inverse: bool) -> np.ndarray:
    """Orthonormal one-sided DFT matrices (float64, cached): forward ``(n, 2K)`` (cosine | minus sine columns),
    inverse ``(2K, n)`` (weights 1 for DC / Nyquist, else 2), ``K = n // 2 + 1``."""
    key = (n, "ortho", inverse)
    if key not in _BASES:
        bins = n // 2 + 1
        phase = (np.arange(bins)[:, None] * np.arange(n)[None] % n) * (2 * np.pi / n)
        cos, sin = np.cos(phase) / np.sqrt(n), -np.sin(phase) / np.sqrt(n)
        if inverse:
            weight = np.full((bins, 1), 2.0)
            weight[0] = 1.0
            if n % 2 == 0:
                weight[-1] = 1.0
            _BASES[key] = (np.concatenate([cos * weight, sin * weight]), np.empty(0))
        else:
            _BASES[key] = (np.concatenate([cos, sin]).T.copy(), np.empty(0))
    return _BASES[key][0]


def pair_abs(z: Tensor) -> Tensor:
    """Magnitude of real pairs ``(..., 2)`` -> ``(...)``."""
    return torch.sqrt(z[..., 0] * z[..., 0] + z[..., 1] * z[..., 1])


def pair_mul(a: Tensor, b: Tensor) -> Tensor:
    """Complex product of real pairs ``(..., 2)`` (broadcasting)."""
    ar, ai, br, bi = a[..., 0], a[..., 1], b[..., 0], b[..., 1]
    return torch.stack([ar * br - ai * bi, ar * bi + ai * br], dim=-1)


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
    if real_valued_active():
        return torch.view_as_complex(_stft_mode(x, n_fft, hop_length, center, pad_mode, normalized,
                                                window).contiguous())
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
    if real_valued_active():
        return _istft_mode(torch.view_as_real(spec), n_fft, hop_length, length, center, normalized, window)
    lead = spec.shape[:-2]
    wav = torch.istft(spec.reshape(-1, *spec.shape[-2:]), n_fft=n_fft, hop_length=hop_length,
                      window=_window(window, n_fft, spec.device, spec.real.dtype), center=center,
                      normalized=normalized, length=length)
    return wav.reshape(*lead, length)


def magnitude(spec: Tensor) -> Tensor:
    """Magnitude ``|spec|`` of a complex spectrogram ``(..., F, N)`` (same shape, real dtype)."""
    return spec.abs()
