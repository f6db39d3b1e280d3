"""Tests for chunked overlap-add inference (mss.inference.overlap_add)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mss.inference.overlap_add import apply_model, chunk_window

SEGMENT = 1000


class Identity(nn.Module):
    """``(B, C, T) -> (B, S, C, T)``: the mix repeated per source, times a per-source gain."""

    def __init__(self, sources: int = 2, segment_length: int | None = SEGMENT):
        super().__init__()
        self.register_buffer("gain", torch.arange(1, sources + 1, dtype=torch.float32))
        self.segment_length = segment_length
        self.sources = sources

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return mix.unsqueeze(1).repeat(1, self.sources, 1, 1) * self.gain[:, None, None]

    def expected(self, mix: torch.Tensor) -> torch.Tensor:
        return self.forward(mix if mix.dim() == 3 else mix[None])[0 if mix.dim() == 2 else slice(None)]


class Recorder(nn.Module):
    """Wraps a model and records the input shape of every call."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(mix.shape))
        return self.inner(mix)


class LTIConv(nn.Module):
    """A linear time-invariant separator: a 'same'-padded Conv1d, ``(B, C, T) -> (B, S, C, T)``."""

    def __init__(self, channels: int = 2, sources: int = 2, kernel: int = 31):
        super().__init__()
        self.conv = nn.Conv1d(channels, sources * channels, kernel, padding="same", bias=False)
        self.sources = sources

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        out = self.conv(mix)
        return out.view(mix.shape[0], self.sources, mix.shape[1], mix.shape[-1])


@pytest.mark.parametrize("weight", ["triangle", "hann", "ones"])
@pytest.mark.parametrize("power", [1.0, 2.0])
def test_window_strictly_positive(weight: str, power: float) -> None:
    for segment in (1, 2, 7, 1000):
        w = chunk_window(segment, weight, power)
        assert w.shape == (segment,)
        assert bool((w > 0).all()) and float(w.max()) == pytest.approx(1.0)


@pytest.mark.parametrize("length", [1, 333, SEGMENT, SEGMENT + 1, 10 * SEGMENT + 17])
@pytest.mark.parametrize("weight", ["triangle", "hann", "ones"])
@pytest.mark.parametrize("shifts", [0, 2])
def test_identity_reconstruction(length: int, weight: str, shifts: int) -> None:
    torch.manual_seed(0)
    model = Identity()
    mix = torch.randn(2, length)
    out = apply_model(model, mix, overlap=0.25, weight=weight, shifts=shifts, max_shift=300)
    assert out.shape == (2, 2, length)
    torch.testing.assert_close(out, model.expected(mix), atol=1e-6, rtol=0)


@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.9])
def test_identity_batched_input_and_power(overlap: float) -> None:
    model = Identity(sources=3)
    mix = torch.randn(3, 2, 4321)
    out = apply_model(model, mix, overlap=overlap, transition_power=3.0, batch_size=5)
    assert out.shape == (3, 3, 2, 4321)
    # up to 10 chunks overlap at 0.9: float32 accumulation error is relative (~1e-7 of |value| per add)
    torch.testing.assert_close(out, model.expected(mix), atol=1e-6, rtol=1e-6)
    assert not out.is_inference() and not out.requires_grad  # usable (even in place) outside inference mode


def test_batch_size_does_not_change_results() -> None:
    torch.manual_seed(0)
    mix = torch.randn(2, 2, 5555)
    for model in (Identity(), LTIConv()):
        outs = [apply_model(model, mix, segment=SEGMENT, batch_size=bs) for bs in (1, 3)]
        torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=0)


def test_model_sees_bounded_chunks() -> None:
    model = Recorder(Identity())
    apply_model(
        model, torch.randn(2, 2, 7 * SEGMENT + 5), segment=SEGMENT, batch_size=3, shifts=2, max_shift=100
    )
    assert model.shapes
    for shape in model.shapes:
        assert 1 <= shape[0] <= 3 and shape[1:] == (2, SEGMENT)


def test_lti_conv_overlap_reduces_boundary_error() -> None:
    torch.manual_seed(0)
    model = LTIConv(kernel=31)
    mix = torch.randn(2, 8 * SEGMENT + 123)
    with torch.no_grad():
        full = model(mix[None])[0]

    def max_err(**kwargs) -> float:
        return float((apply_model(model, mix, segment=SEGMENT, **kwargs) - full).abs().max())

    # No overlap, flat window: exact except within kernel//2 samples of an internal chunk boundary
    # (there the chunk sees zeros instead of its neighbours); the track borders match 'same' zero padding.
    out0 = apply_model(model, mix, segment=SEGMENT, overlap=0.0, weight="ones")
    mask = torch.ones(mix.shape[-1], dtype=torch.bool)
    for boundary in range(SEGMENT, mix.shape[-1], SEGMENT):
        mask[boundary - 15 : boundary + 15] = False
    torch.testing.assert_close(out0[..., mask], full[..., mask], atol=1e-5, rtol=0)
    assert float((out0 - full).abs().max()) > 1e-2

    err0 = max_err(overlap=0.0)
    err_overlap = max_err(overlap=0.5, weight="triangle")
    assert err_overlap < 0.5 * err0


def test_segment_defaults_and_errors() -> None:
    mix = torch.randn(2, 2500)
    model = Identity(segment_length=None)
    with pytest.raises(ValueError, match="segment"):
        apply_model(model, mix)
    out = apply_model(model, mix, segment=700)
    torch.testing.assert_close(out, model.expected(mix), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="overlap"):
        apply_model(model, mix, segment=700, overlap=1.0)
    with pytest.raises(ValueError, match="window"):
        apply_model(model, mix, segment=700, weight="boxcar")


def test_shifts_deterministic_given_seed() -> None:
    model = LTIConv()
    mix = torch.randn(2, 3 * SEGMENT + 7)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(apply_model(model, mix, segment=SEGMENT, shifts=3, max_shift=400))
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    assert outs[0].shape == (2, 2, 3 * SEGMENT + 7)


def test_max_shift_from_sample_rate() -> None:
    model = Recorder(Identity())
    model.segment_length = SEGMENT
    model.sample_rate = 1000  # max_shift = 500
    mix = torch.randn(2, 2000)
    torch.manual_seed(0)
    out = apply_model(model, mix, shifts=1, overlap=0.0, batch_size=100)
    torch.testing.assert_close(out, model.inner.expected(mix), atol=1e-6, rtol=0)
    # the shifted input is 2000 + 500 - offset (offset in [0, 500)) samples long -> 3 chunks of 1000
    assert model.shapes == [(3, 2, SEGMENT)]


def test_progress_bar_runs() -> None:
    model = Identity()
    mix = torch.randn(2, 3000)
    out = apply_model(model, mix, progress=True, shifts=1, max_shift=10)
    torch.testing.assert_close(out, model.expected(mix), atol=1e-6, rtol=0)


def test_apply_model_keeps_freed_heap_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    import mss.inference.speed as speed

    calls = []
    monkeypatch.setattr(speed, "tune_allocator", lambda: calls.append(1))
    apply_model(Identity(), torch.randn(2, 3 * SEGMENT))
    assert calls == [1]  # glibc mallopt (mss.platform.allocator): no fresh page faults for every batch
