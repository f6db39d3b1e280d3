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


# the real-valued transforms (ONNX export) against torch.stft / torch.istft
CASES = [  # n_fft, hop, window, center, pad_mode, normalized, length
    (512, 128, "hann", True, "reflect", False, 1000),
    (512, 128, "hann", True, "constant", False, 1023),
    (256, 64, "rectangular", True, "constant", True, 777),
    (511, 100, "hann", True, "constant", False, 1501),  # odd n_fft: no Nyquist bin
    (2048, 512, "hann", True, "reflect", True, 5001),  # the hybrid Demucs convention
    (512, 128, "rectangular", False, "constant", False, 2000),
]


@pytest.mark.parametrize("dft", ["fft", "conv"])
@pytest.mark.parametrize(("n_fft", "hop", "window", "center", "pad_mode", "normalized", "length"), CASES)
def test_real_valued_stft_matches_torch(n_fft, hop, window, center, pad_mode, normalized, length, dft) -> None:
    from mss.audio.spectral import istft_pairs, real_valued, real_valued_active, stft_pairs

    torch.manual_seed(0)
    x = torch.randn(2, 3, length)
    win = torch.hann_window(n_fft) if window == "hann" else None
    ref = torch.view_as_real(torch.stft(x.reshape(6, length), n_fft, hop, window=win, center=center,
                                        pad_mode=pad_mode, normalized=normalized, return_complex=True))
    z = torch.randn_like(ref)
    inv = torch.istft(torch.view_as_complex(z), n_fft, hop, window=win, center=center, normalized=normalized,
                      length=length)
    assert not real_valued_active()
    with real_valued(dft):
        assert real_valued_active()
        got = stft_pairs(x, n_fft, hop, center, pad_mode, normalized, window)
        got_inv = istft_pairs(z.reshape(2, 3, *z.shape[1:]), n_fft, hop, length, center, normalized, window)
        # the complex API in the mode: the same numbers (through torch.complex)
        spec = stft(x, n_fft, hop, center, pad_mode, normalized, window)
    assert not real_valued_active()
    assert got.shape == (2, 3, *ref.shape[1:]) and got_inv.shape == (2, 3, length)
    scale = ref.abs().max()
    assert (got.reshape(ref.shape) - ref).abs().max() <= 2e-6 * scale  # float32 rounding of n_fft-term sums
    assert (got_inv.reshape(inv.shape) - inv).abs().max() <= 2e-6 * inv.abs().max()
    torch.testing.assert_close(torch.view_as_real(spec), got, rtol=0, atol=0)
    # normal mode: the pair functions are exactly view_as_real(stft) and istft(view_as_complex)
    assert torch.equal(stft_pairs(x, n_fft, hop, center, pad_mode, normalized, window).reshape(ref.shape), ref)


def test_real_valued_roundtrip_and_pair_ops() -> None:
    from mss.audio.spectral import istft_pairs, pair_abs, pair_mul, real_valued, stft_pairs

    x = torch.randn(2, 4096)
    with real_valued():
        y = istft_pairs(stft_pairs(x, 512, 128, pad_mode="reflect"), 512, 128, 4096)
    assert (y - x).abs().max() < 1e-5
    a, b = torch.randn(5, 3, 2), torch.randn(3, 2)
    torch.testing.assert_close(pair_mul(a, b), torch.view_as_real(torch.view_as_complex(a) * torch.view_as_complex(b)))
    torch.testing.assert_close(pair_abs(a), torch.view_as_complex(a).abs())
    with pytest.raises(ValueError, match="real pairs"):
        istft_pairs(torch.randn(33, 5), 64, 16, 64)
