"""Tests for mss.audio.spectral: shapes, window cache and exact STFT -> iSTFT reconstruction."""

import pytest
import torch

from mss.audio.spectral import hann_window, istft, magnitude, stft


@pytest.mark.parametrize("lead", [(), (3,), (2, 3)])
@pytest.mark.parametrize("length", [1, 300, 1023, 1024, 4096, 5000, 10007])
def test_roundtrip_float32(lead: tuple[int, ...], length: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(*lead, length)
    spec = stft(x, n_fft=512, hop_length=128)
    assert spec.is_complex() and spec.dtype == torch.complex64
    assert spec.shape == (*lead, 257, 1 + length // 128)
    y = istft(spec, n_fft=512, hop_length=128, length=length)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert (y - x).abs().max() < 1e-5


@pytest.mark.parametrize("length", [777, 44100 + 13])
def test_roundtrip_float64_spleeter_stft(length: int) -> None:
    x = torch.randn(2, 2, length, dtype=torch.float64)
    spec = stft(x, n_fft=4096, hop_length=1024)
    assert spec.dtype == torch.complex128 and spec.shape[-2] == 2049
    y = istft(spec, 4096, 1024, length)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)


def test_roundtrip_reflect_pad() -> None:
    x = torch.randn(2, 8192)
    y = istft(stft(x, 512, 128, pad_mode="reflect"), 512, 128, 8192)
    assert (y - x).abs().max() < 1e-5


def test_window_cache_and_magnitude() -> None:
    w = hann_window(256, "cpu", torch.float32)
    assert w is hann_window(256, torch.device("cpu"), torch.float32)
    assert w is not hann_window(256, "cpu", torch.float64)
    torch.testing.assert_close(w, torch.hann_window(256, periodic=True))
    spec = stft(torch.randn(2, 1000), 256, 64)
    mag = magnitude(spec)
    assert mag.dtype == torch.float32 and mag.shape == spec.shape
    torch.testing.assert_close(mag, spec.abs())


def test_gradient_through_roundtrip() -> None:
    x = torch.randn(1, 2, 3000, requires_grad=True)
    y = istft(magnitude(stft(x, 256, 64)).clamp_min(0) * stft(x, 256, 64).sgn(), 256, 64, 3000)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_type_errors() -> None:
    with pytest.raises(ValueError, match="real waveform"):
        stft(torch.randn(100, dtype=torch.complex64), 64, 16)
    with pytest.raises(ValueError, match="complex spectrogram"):
        istft(torch.randn(33, 5), 64, 16, 64)
