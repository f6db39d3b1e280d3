"""Tests for mss.audio.wiener: initialisation, EM against a direct reference, consistency properties."""

import numpy as np
import pytest
import torch

from mss.audio.wiener import solve_small, wiener


def _random_problem(batch: int = 2, sources: int = 3, channels: int = 2, freqs: int = 9, frames: int = 40,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random complex sources (B S C F N), their mixture and their magnitudes (the 'oracle' targets)."""
    g = torch.Generator().manual_seed(seed)
    src = torch.complex(torch.randn(batch, sources, channels, freqs, frames, generator=g),
                        torch.randn(batch, sources, channels, freqs, frames, generator=g))
    src = src * torch.rand(batch, sources, 1, 1, frames, generator=g) * 5  # time-varying source powers
    return src, src.sum(dim=1), src.abs()


def _reference(targets: np.ndarray, mix: np.ndarray, iterations: int, eps: float = 1e-10,
               scale_factor: float = 10.0) -> np.ndarray:
    """Loop-based norbert-style EM for one batch item: targets (S C F N), mix (C F N) -> (S C F N)."""
    v0 = targets.astype(np.float64)
    x = mix.astype(np.complex128)
    y = x[None] * v0 / (eps + v0.sum(0, keepdims=True))
    scale = max(1.0, np.abs(x).max() / scale_factor)
    x, y = x / scale, y / scale
    n_src, n_ch, n_f, n_t = y.shape
    for _ in range(iterations):
        v = (np.abs(y) ** 2).mean(axis=1)  # S F N
        new = np.zeros_like(y)
        for f in range(n_f):
            r = [sum(np.outer(y[j, :, f, t], y[j, :, f, t].conj()) for t in range(n_t))
                 / (eps + v[j, f].sum()) for j in range(n_src)]
            for t in range(n_t):
                cxx = sum(v[j, f, t] * r[j] for j in range(n_src)) + np.sqrt(eps) * np.eye(n_ch)
                inv = np.linalg.inv(cxx)
                for j in range(n_src):
                    new[j, :, f, t] = v[j, f, t] * r[j] @ inv @ x[:, f, t]
        y = new
    return y * scale


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("iterations", [1, 2])
def test_matches_direct_reference(channels: int, iterations: int) -> None:
    _, mix, targets = _random_problem(batch=2, channels=channels, freqs=4, frames=12)
    targets = targets * (0.5 + torch.rand_like(targets))  # imperfect estimates
    out = wiener(targets, mix, iterations=iterations, window_frames=None)
    assert out.shape == targets.shape and out.dtype == mix.dtype
    for b in range(2):
        ref = _reference(targets[b].numpy(), mix[b].numpy(), iterations)
        np.testing.assert_allclose(out[b].numpy(), ref, rtol=1e-4, atol=1e-4)


def test_zero_iterations_softmask_is_ratio_mask() -> None:
    _, mix, targets = _random_problem()
    out = wiener(targets, mix, iterations=0, softmask=True)
    expected = mix.unsqueeze(1) * (targets / (1e-10 + targets.sum(dim=1, keepdim=True)))
    torch.testing.assert_close(out, expected)


def test_zero_iterations_magnitude_with_mixture_phase() -> None:
    _, mix, targets = _random_problem()
    out = wiener(targets, mix, iterations=0, softmask=False)
    torch.testing.assert_close(out.abs(), targets, rtol=1e-5, atol=1e-5)
    phase_diff = out * mix.unsqueeze(1).conj()  # real positive if phases agree
    assert (phase_diff.imag.abs() < 1e-3 * phase_diff.abs() + 1e-6).all()
    assert (phase_diff.real >= 0).all()


@pytest.mark.parametrize("channels", [1, 2])
def test_single_target_returns_mixture(channels: int) -> None:
    _, mix, _ = _random_problem(sources=1, channels=channels)
    targets = mix.abs().unsqueeze(1) * 0.3  # any positive estimate: the only source must take it all
    for iterations in (0, 1, 3):
        out = wiener(targets, mix, iterations=iterations)
        assert out.shape == (2, 1, channels, 9, 40)
        # the sqrt(eps) diagonal loading only matters in bins far below the (scaled) peak level
        assert (out[:, 0] - mix).abs().max() < 1e-3 * mix.abs().max()


@pytest.mark.parametrize("channels", [1, 2, 3])
@pytest.mark.parametrize("softmask", [True, False])
def test_estimates_sum_to_mixture(channels: int, softmask: bool) -> None:
    _, mix, targets = _random_problem(channels=channels)
    targets = targets * (0.5 + torch.rand_like(targets))
    for iterations in (1, 2):
        out = wiener(targets, mix, iterations=iterations, softmask=softmask)
        err = (out.sum(dim=1) - mix).abs().max() / mix.abs().max()
        assert err < 1e-3


def test_spatial_model_improves_over_ratio_mask() -> None:
    """Sources panned to different directions: EM with oracle magnitudes beats the ratio mask."""
    g = torch.Generator().manual_seed(3)
    shape = (1, 3, 1, 16, 100)
    mono = torch.complex(torch.randn(shape, generator=g), torch.randn(shape, generator=g))
    pan = torch.tensor([[1.0, 0.1], [0.6, 0.6], [0.1, 1.0]]).view(1, 3, 2, 1, 1)
    src = mono * pan
    mix, targets = src.sum(dim=1), src.abs()
    err0 = (wiener(targets, mix, iterations=0) - src).abs().square().mean()
    err1 = (wiener(targets, mix, iterations=1) - src).abs().square().mean()
    assert err1 < err0


def test_window_covering_everything_equals_whole_track() -> None:
    _, mix, targets = _random_problem(frames=50)
    whole = wiener(targets, mix, iterations=2, window_frames=None)
    torch.testing.assert_close(wiener(targets, mix, iterations=2, window_frames=50), whole)
    torch.testing.assert_close(wiener(targets, mix, iterations=2, window_frames=300), whole)
    windowed = wiener(targets, mix, iterations=2, window_frames=16)  # 16+16+16+2 frames
    assert windowed.shape == whole.shape
    torch.testing.assert_close(windowed[..., :16], wiener(targets[..., :16], mix[..., :16], iterations=2))
    torch.testing.assert_close(windowed[..., 48:], wiener(targets[..., 48:], mix[..., 48:], iterations=2))


def test_residual_adds_a_source() -> None:
    _, mix, targets = _random_problem()
    out0 = wiener(targets, mix, iterations=0, residual=True)
    assert out0.shape == (2, 4, 2, 9, 40)
    torch.testing.assert_close(out0.sum(dim=1), mix)
    out1 = wiener(targets * 0.5, mix, iterations=1, residual=True)
    assert out1.shape == (2, 4, 2, 9, 40)
    assert (out1.sum(dim=1) - mix).abs().max() < 1e-3 * mix.abs().max()


def test_batch_items_are_independent() -> None:
    _, mix, targets = _random_problem()
    mix = mix * torch.tensor([1.0, 100.0]).view(2, 1, 1, 1)  # very different scales in the batch
    targets = targets * torch.tensor([1.0, 100.0]).view(2, 1, 1, 1, 1)
    full = wiener(targets, mix, iterations=1)
    torch.testing.assert_close(full[:1], wiener(targets[:1], mix[:1], iterations=1))


def test_zero_targets_give_zero_bins() -> None:
    _, mix, targets = _random_problem()
    targets[..., 5:, :] = 0  # e.g. Spleeter estimates zero-padded above freq_bins
    out = wiener(targets, mix, iterations=1)
    assert torch.isfinite(out.real).all() and torch.isfinite(out.imag).all()
    assert out[..., 5:, :].abs().max() < 1e-6


def test_differentiable_and_dtypes() -> None:
    _, mix, targets = _random_problem()
    targets = targets.clone().requires_grad_(True)
    out = wiener(targets, mix, iterations=1)
    assert out.dtype == torch.complex64
    out.abs().sum().backward()
    assert targets.grad is not None and torch.isfinite(targets.grad).all()
    out64 = wiener(targets.detach().double(), mix.to(torch.complex128), iterations=1)
    assert out64.dtype == torch.complex128


def test_closed_form_solve_matches_linalg() -> None:
    g = torch.Generator().manual_seed(1)
    m = torch.complex(torch.randn(50, 2, 2, generator=g, dtype=torch.float64),
                      torch.randn(50, 2, 2, generator=g, dtype=torch.float64))
    a = m @ m.mH + 0.1 * torch.eye(2, dtype=torch.complex128)
    b = torch.complex(torch.randn(50, 2, generator=g, dtype=torch.float64),
                      torch.randn(50, 2, generator=g, dtype=torch.float64))
    expected = torch.linalg.solve(a, b.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(solve_small(a, b), expected)
    torch.testing.assert_close(solve_small(a[:, :1, :1], b[:, :1]), b[:, :1] / a[:, :1, 0])


def test_bad_inputs() -> None:
    _, mix, targets = _random_problem()
    with pytest.raises(ValueError, match="complex"):
        wiener(targets, mix.abs())
    with pytest.raises(ValueError, match="do not match"):
        wiener(targets[..., :5, :], mix)
    with pytest.raises(ValueError, match="iterations"):
        wiener(targets, mix, iterations=-1)
    with pytest.raises(ValueError, match="window_frames"):
        wiener(targets, mix, window_frames=0)
