"""Test-time augmentation (mss.inference.tta through apply_model): exact for equivariant models, exact for
flip_sign of linear ones, different (and as predicted) otherwise; evaluation.tta through mss.evaluate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mss.inference.overlap_add import apply_model
from mss.inference.tta import check_tta

SOURCES = ["drums", "bass", "other", "vocals"]


class _Toy(nn.Module):
    """``est_s = g_s · f(mix)`` with ``f`` the identity (equivariant to both flips), a non-symmetric channel
    mixing (linear, not channel-equivariant) or a rectifier (channel-equivariant, not sign-equivariant)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind, self.sources, self.sample_rate, self.audio_channels, self.segment_length = (
            kind, SOURCES, 44100, 2, 4096)
        self.gains = torch.tensor([0.1, 0.2, 0.3, 0.4])
        self.mixing = torch.tensor([[1.0, 0.5], [-0.25, 0.75]])

    def forward(self, mix):
        if self.kind == "channel_mix":
            mix = torch.einsum("dc,bct->bdt", self.mixing, mix)
        elif self.kind == "rectify":
            mix = torch.relu(mix)
        return self.gains.view(1, -1, 1, 1) * mix.unsqueeze(1)


BOTH = ["flip_channels", "flip_sign"]


def test_equivariant_model_is_unchanged_by_tta():
    mix = torch.randn(2, 10_000)
    model = _Toy("gain")
    plain = apply_model(model, mix)
    torch.testing.assert_close(apply_model(model, mix, tta=BOTH), plain, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(apply_model(_Toy("rectify"), mix, tta=["flip_channels"]),
                               apply_model(_Toy("rectify"), mix), atol=1e-7, rtol=1e-6)


def test_non_equivariant_models_differ_as_predicted():
    mix = torch.randn(1, 2, 10_000)
    linear = _Toy("channel_mix")
    plain = apply_model(linear, mix)
    torch.testing.assert_close(apply_model(linear, mix, tta=["flip_sign"]), plain, atol=1e-7, rtol=1e-6)  # exact
    swapped = apply_model(linear, mix.flip(1)).flip(2)
    flipped = apply_model(linear, mix, tta=["flip_channels"])
    assert (flipped - plain).abs().max() > 0.1
    torch.testing.assert_close(flipped, (plain + swapped) / 2)
    torch.testing.assert_close(apply_model(linear, mix, tta=BOTH), (2 * plain + swapped) / 3)
    rect = _Toy("rectify")
    torch.testing.assert_close(apply_model(rect, mix, tta=["flip_sign"]),
                               (apply_model(rect, mix) - apply_model(rect, -mix)) / 2)
    assert (apply_model(rect, mix, tta=["flip_sign"]) - apply_model(rect, mix)).abs().max() > 0.1


def test_tta_with_a_real_network_and_shifts(single_thread):
    """A tiny U-Net (random weights, not equivariant): TTA changes the estimates and keeps shape; with shifts each
    pass draws its own offsets, deterministic given the seed."""
    from omegaconf import OmegaConf

    from mss.checkpoint import build_model
    from mss.run import compose
    from tests.conftest import TINY_MODEL

    torch.manual_seed(0)
    cfg = compose("train", ["paths.output_dir=unused", "model.dropout=0.0", *TINY_MODEL])
    net = build_model(OmegaConf.to_container(cfg.model, resolve=True)).eval()
    mix = torch.randn(2, 12_000)
    plain, tta = apply_model(net, mix), apply_model(net, mix, tta=BOTH)
    assert tta.shape == plain.shape and (tta - plain).abs().max() > 1e-4
    torch.manual_seed(3)
    first = apply_model(net, mix, tta=BOTH, shifts=2, max_shift=1000)
    torch.manual_seed(3)
    torch.testing.assert_close(apply_model(net, mix, tta=BOTH, shifts=2, max_shift=1000), first)


def test_mono_skips_flip_channels_and_bad_names_are_errors():
    mono = _Toy("gain")
    mono.audio_channels = 1
    mix = torch.randn(1, 5000)
    torch.testing.assert_close(apply_model(mono, mix, tta=BOTH), apply_model(mono, mix), atol=1e-7, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown transform 'flip_time'"):
        apply_model(mono, mix, tta=["flip_time"])
    with pytest.raises(ValueError, match="each transform once"):
        check_tta(["flip_sign", "flip_sign"])
    assert check_tta("flip_sign") == ["flip_sign"] and check_tta(None) == []
