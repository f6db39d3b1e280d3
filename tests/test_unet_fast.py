"""The Spleeter U-Net's inference fast path (sub-pixel decoder, channels-last, band-only mask product) against the
plain path (``ConvTranspose2d`` + crop, extended mask times the complex STFT) at randomised weights."""

import copy

import pytest
import torch
import torch.nn.functional as F_
from torch import nn

import mss.models.unet as unet_module
from mss.audio.spectral import istft
from mss.models.subpixel import conv_transpose2d_stride2, subpixel_bias, subpixel_weight
from mss.models.unet import SpleeterUNet, UNet2d

SMALL = {"n_fft": 256, "hop_length": 64, "freq_bins": 64, "frames": 64, "filters": (4, 4, 8, 8, 16, 16)}


def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BN running statistic randomised, at the scale of a trained network (weights times
    ``1 + 0.3 n``, biases / BN shifts / running means ``0.1 n``, BN scales ``1 + 0.3 n``, running variances in
    ``[0.5, 1.5]``) so that float32 rounding is not amplified by exploding activations."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("num_batches_tracked"):
                continue
            noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) + 0.5)
            elif t.dim() > 1 or (name.endswith("weight") and "bn" in name):
                t.mul_(1 + 0.3 * noise) if t.dim() > 1 else t.copy_(1 + 0.3 * noise)
            else:  # biases, BN shifts, running means
                t.copy_(0.1 * noise)
    return model


def _plain(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The plain path: gradients enabled (the fast path is inference-only), result detached."""
    with torch.enable_grad():
        return model(x).detach()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("kernel", [(5, 5), (4, 4), (3, 3), (2, 2), (5, 3), (1, 1), (6, 6)])
@pytest.mark.parametrize("size", [(1, 1), (3, 4), (8, 5)])
def test_subpixel_equals_conv_transpose(kernel: tuple[int, int], size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    weight = torch.randn(3, 5, *kernel, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    full = F_.conv_transpose2d(x, weight, bias, stride=2)  # (2, 5, 2H + kh - 2, 2W + kw - 2)
    same = tuple((k - 2) // 2 if k >= 2 else 0 for k in kernel)  # the TF "same" window when it fits
    for start, win in [((0, 0), tuple(full.shape[-2:])), (same, (2 * size[0], 2 * size[1])), ((1, 2), (2, 1))]:
        if start[0] + win[0] > full.shape[-2] or start[1] + win[1] > full.shape[-1]:
            continue
        got = conv_transpose2d_stride2(x, subpixel_weight(weight), subpixel_bias(bias), kernel, start, win)
        want = full[..., start[0]:start[0] + win[0], start[1]:start[1] + win[1]]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_subpixel_weight_layout() -> None:
    weight = torch.arange(2 * 3 * 25, dtype=torch.float32).reshape(2, 3, 5, 5)  # (I, O, 5, 5)
    sub = subpixel_weight(weight).reshape(3, 2, 2, 2, 3, 3)  # (O, p, q, I, 3, 3)
    # parity (0, 0): taps j = 0, 1, 2 (kernel rows 0, 2, 4) at sub-kernel rows 2, 1, 0
    torch.testing.assert_close(sub[1, 0, 0, 0], weight[0, 1][[4, 2, 0]][:, [4, 2, 0]])
    # parity (1, 0): two row taps (kernel rows 1, 3) at sub rows 2, 1; sub row 0 is zero
    torch.testing.assert_close(sub[2, 1, 0, 1, 1:], weight[1, 2][[3, 1]][:, [4, 2, 0]])
    assert not sub[:, 1, :, :, 0].any() and not sub[:, :, 1, :, :, 0].any()
    with pytest.raises(ValueError, match="sub-kernel"):
        conv_transpose2d_stride2(torch.randn(1, 2, 3, 3), subpixel_weight(weight), None, (4, 5), (1, 1), (6, 6))


def test_layer_rule_of_the_spleeter_unet() -> None:
    unet = UNet2d(2)
    assert unet.subpixel == [o <= unet_module.SUBPIXEL_MAX_OUT for o in (256, 128, 64, 32, 16, 1)]
    assert unet.subpixel[-1] and not unet.subpixel[0]  # 32 -> 1 sub-pixel, 512 -> 256 transposed conv


@pytest.mark.parametrize("extension", ["zeros", "average"])
def test_fast_path_matches_plain_path_at_random_weights(extension: str) -> None:
    torch.manual_seed(0)
    model = _perturb(SpleeterUNet(["vocals", "drums"], mask_extension=extension, **SMALL)).eval()
    for unet in model.unets.values():  # every decoder layer through the sub-pixel path
        unet.subpixel = [True] * len(unet.dec_conv)
    mix = torch.randn(3, 2, 7000)
    with torch.inference_mode():
        fast = model(mix)
    plain = _plain(model, mix)
    assert _rel(fast, plain) < 1e-5
    model64 = copy.deepcopy(model).double()  # float64: the two paths agree to rounding, not just to 1e-5
    with torch.inference_mode():
        fast64 = model64(mix.double())
    assert _rel(fast64, _plain(model64, mix.double())) < 1e-12
    # the pieces: U-Net masks and the masked spectrogram
    x = torch.rand(3, 2, 64, 128)
    for unet in model.unets.values():
        with torch.no_grad():
            got = unet(x)
        assert _rel(got, _plain(unet, x)) < 1e-5
    spec, mask = torch.randn(2, 2, 129, 9, dtype=torch.complex64), torch.rand(2, 2, 2, 64, 9)
    with torch.no_grad():
        torch.testing.assert_close(model.masked_spectrogram(mask, spec), model.extend_mask(mask) * spec.unsqueeze(1),
                                   rtol=0, atol=0)


def test_fast_path_full_size_unet_at_random_weights() -> None:
    torch.manual_seed(0)
    unet = _perturb(UNet2d(2, conv_activation="leaky_relu", deconv_activation="relu"), seed=1).eval()
    x = torch.rand(1, 2, 128, 64)
    with torch.inference_mode():
        fast = unet(x)
    assert _rel(fast, _plain(unet, x)) < 1e-5


def test_fast_path_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"subpixel": 0, "transposed": 0, "masked": 0, "head": 0}

    def count(key, fn):
        def wrapper(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(unet_module, "conv_transpose2d_stride2", count("subpixel", conv_transpose2d_stride2))
    monkeypatch.setattr(F_, "conv_transpose2d", count("transposed", F_.conv_transpose2d))
    monkeypatch.setattr(SpleeterUNet, "masked_spectrogram", count("masked", SpleeterUNet.masked_spectrogram))
    monkeypatch.setattr(UNet2d, "_tap_head", count("head", UNet2d._tap_head))
    torch.manual_seed(0)
    model = SpleeterUNet(["vocals", "drums"], **SMALL).eval()
    for unet in model.unets.values():
        unet.subpixel = [False, True, False, True, True, True]
    mix = torch.randn(1, 2, 3000)
    with torch.inference_mode():
        model(mix)
    assert calls == {"subpixel": 2 * 4, "transposed": 2 * 2, "masked": 1, "head": 2}
    model(mix)  # gradients on: plain path only
    assert calls == {"subpixel": 2 * 4, "transposed": 2 * 2 + 2 * 6, "masked": 1, "head": 2}
    model.train()
    with torch.no_grad():  # training mode, no gradients: the sub-pixel path is exact here too
        model(mix)
    assert calls["subpixel"] == 2 * 4 * 2


def test_fast_path_follows_weight_updates() -> None:
    torch.manual_seed(0)
    unet = _perturb(UNet2d(1, filters=(4, 8, 8)), seed=2).eval()
    unet.subpixel = [True, True, True]
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        before = unet(x)
        unet.dec_conv[1].weight.mul_(-2.0)  # in-place update (an optimizer step)
        unet.dec_conv[2].bias.add_(1.0)
        after = unet(x)
    assert _rel(after, _plain(unet, x)) < 1e-5 and _rel(after, before) > 1e-3
    other = _perturb(UNet2d(1, filters=(4, 8, 8)), seed=3).eval()
    unet.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(unet(x), _plain(other, x), rtol=1e-5, atol=1e-6)
    unet64 = copy.deepcopy(unet).double()
    with torch.no_grad():
        torch.testing.assert_close(unet64(x.double()), _plain(other, x).double(), rtol=1e-5, atol=1e-6)


def test_state_dict_unchanged_by_the_fast_path() -> None:
    torch.manual_seed(0)
    model = SpleeterUNet(["vocals"], **SMALL).eval()
    keys = list(model.state_dict())
    with torch.inference_mode():
        model(torch.randn(1, 2, 3000))
    assert list(model.state_dict()) == keys
    assert not any("subpixel" in k for k in keys)


def test_masked_spectrogram_is_frame_major() -> None:
    model = SpleeterUNet(["a", "b"], **SMALL)
    spec, mask = torch.randn(1, 2, 129, 9, dtype=torch.complex64), torch.rand(1, 2, 2, 64, 9)
    out = model.masked_spectrogram(mask, spec)
    assert out.shape == (1, 2, 2, 129, 9) and out.stride(-2) == 1  # no transposed copy in the iSTFT
    wav = istft(out.reshape(4, 129, 9), 256, 64, 512)
    torch.testing.assert_close(wav, istft((model.extend_mask(mask) * spec.unsqueeze(1)).reshape(4, 129, 9), 256, 64,
                                          512), rtol=0, atol=0)


def test_tap_head_equals_the_dilated_conv() -> None:
    torch.manual_seed(0)
    unet = _perturb(UNet2d(2, filters=(4, 8)), seed=4).eval()
    x = torch.rand(3, 1, 21, 17)
    with torch.no_grad():
        got = unet._tap_head(x)
        torch.testing.assert_close(got, unet.head(x), rtol=1e-5, atol=1e-6)
    assert got.is_contiguous()
