"""Tests for mss.models.unet (Spleeter U-Net): parameter counts, layer wiring, masks, shapes, I/O contract."""

import io
import math

import pytest
import torch
from torch import nn

from mss.audio.spectral import istft, stft
from mss.models.unet import SpleeterUNet, UNet2d, _tf_same_pad

SMALL = {"n_fft": 256, "hop_length": 64, "freq_bins": 64, "frames": 64, "filters": (4, 4, 8, 8, 16, 16)}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(1234)


def _small(sources: tuple[str, ...] = ("vocals", "drums"), **kwargs) -> SpleeterUNet:
    torch.manual_seed(0)
    return SpleeterUNet(list(sources), **{**SMALL, **kwargs})


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# ------------------------------------------------------------ parameter counts
def test_exact_parameter_count_per_source() -> None:
    model = SpleeterUNet(["vocals"])
    assert _count(model) == 9_823_749
    unet = model.unets["vocals"]
    convs = sum(p.numel() for m in unet.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))
                for p in m.parameters())
    bns = sum(p.numel() for m in unet.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert (convs, bns) == (9_820_739, 3_010)
    running = sum(b.numel() for n, b in unet.named_buffers() if "running" in n)
    assert running == 3_010  # non-trainable BN moving statistics, as in Spleeter


def test_exact_parameter_count_4stems_and_16khz() -> None:
    assert _count(SpleeterUNet(["vocals", "drums", "bass", "other"])) == 39_294_996
    # fully convolutional: the 16 kHz variant (F=1536) has the same weights
    assert _count(SpleeterUNet(["vocals"], freq_bins=1536)) == 9_823_749
    # 2stems config (LeakyReLU / ReLU) and 5stems softmax have the same per-source count
    assert _count(SpleeterUNet(["vocals", "accompaniment"], conv_activation="leaky_relu",
                               deconv_activation="relu")) == 2 * 9_823_749
    five = SpleeterUNet(["vocals", "piano", "drums", "bass", "other"], mask="softmax")
    assert _count(five) == 5 * 9_823_749


def test_mono_parameter_count() -> None:
    # deviation from Spleeter (which hard-codes a 2-channel head): first conv 1->16 and head 1->1
    assert _count(SpleeterUNet(["vocals"], audio_channels=1)) == 9_823_749 - 25 * 16 - (2 * 16 + 2 - 17)


def test_layer_hyperparameters() -> None:
    unet = SpleeterUNet(["vocals"]).unets["vocals"]
    assert [c.out_channels for c in unet.enc_conv] == [16, 32, 64, 128, 256, 512]
    assert [c.out_channels for c in unet.dec_conv] == [256, 128, 64, 32, 16, 1]
    assert [c.in_channels for c in unet.dec_conv] == [512, 512, 256, 128, 64, 32]
    assert all(c.kernel_size == (5, 5) and c.stride == (2, 2) for c in [*unet.enc_conv, *unet.dec_conv])
    assert unet.head.kernel_size == (4, 4) and unet.head.dilation == (2, 2) and unet.head.out_channels == 2
    assert [isinstance(d, nn.Dropout) and d.p == 0.5 for d in unet.dec_drop] == [True] * 3 + [False] * 3
    assert all(bn.eps == 1e-3 and bn.momentum == 0.01 for bn in [*unet.enc_bn, *unet.dec_bn])
    assert all(isinstance(a, nn.ELU) for a in [*unet.enc_act, *unet.dec_act])
    two = SpleeterUNet(["v"], conv_activation="leaky_relu", deconv_activation="relu").unets["v"]
    assert isinstance(two.enc_act[0], nn.LeakyReLU) and two.enc_act[0].negative_slope == 0.2
    assert isinstance(two.dec_act[0], nn.ReLU)
    # He-uniform init, zero biases
    for conv in [*unet.enc_conv, unet.head]:
        fan_in = conv.in_channels * math.prod(conv.kernel_size)
        assert conv.weight.abs().max() <= math.sqrt(6 / fan_in) and not conv.bias.any()


def test_tf_same_padding() -> None:
    assert _tf_same_pad(1024, 5, 2) == (1, 2)
    assert _tf_same_pad(512, 5, 2) == (1, 2)
    assert _tf_same_pad(7, 5, 2) == (2, 2)
    assert _tf_same_pad(100, 4, 1, 2) == (3, 3)  # 4x4 dilation-2 head


def test_spleeter_feature_map_shapes() -> None:
    """Encoder/decoder shapes of Spleeter's table (scaled down 8x spatially to stay fast)."""
    torch.manual_seed(0)
    unet = SpleeterUNet(["vocals"]).unets["vocals"].eval()
    shapes: list[tuple[int, ...]] = []
    hooks = [m.register_forward_hook(lambda _m, _i, o: shapes.append(tuple(o.shape)))
             for m in unet.enc_conv]
    with torch.no_grad():
        out = unet(torch.rand(1, 2, 1024 // 8, 512 // 8))
    for h in hooks:
        h.remove()
    filters = [16, 32, 64, 128, 256, 512]
    assert shapes == [(1, k, 128 // 2**i, 64 // 2**i) for i, k in enumerate(filters, 1)]
    assert out.shape == (1, 2, 128, 64) and ((out >= 0) & (out <= 1)).all()  # sigmoid mask


# ------------------------------------------------------------ wiring
def test_skip_and_bottleneck_wiring() -> None:
    """Decoder gets the raw conv6 output; skips are raw conv outputs (before BN/activation); BN6 unused."""
    unet = _small().unets["vocals"].eval()
    unet.subpixel = [False] * 6  # the hooks need the ConvTranspose2d modules called (the inference fast path is not)
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str, use_input: bool = False):
        def hook(_m, inputs, output):
            seen[name] = inputs[0] if use_input else output
        return hook

    handles = [unet.enc_conv[i].register_forward_hook(keep(f"conv{i + 1}")) for i in range(6)]
    handles += [unet.dec_conv[i].register_forward_hook(keep(f"deconv_in{i + 1}", True)) for i in range(6)]
    handles.append(unet.enc_bn[-1].register_forward_hook(keep("bn6")))
    with torch.no_grad():
        unet(torch.rand(2, 2, 64, 64))
    for h in handles:
        h.remove()
    assert "bn6" not in seen  # BN6/act6 output is discarded in Spleeter, so it is not even computed
    assert seen["deconv_in1"] is seen["conv6"]
    for i in range(1, 6):  # decoder block i+1 input = [raw conv_{6-i}, up_i]
        skip = seen[f"conv{6 - i}"]
        torch.testing.assert_close(seen[f"deconv_in{i + 1}"][:, :skip.shape[1]], skip)
    # BN6 exists with its parameters (Spleeter's trainable count)
    assert unet.enc_bn[-1].weight.numel() == 16


def test_unet_depth_and_input_divisibility() -> None:
    unet = UNet2d(1, filters=(4, 8, 8))
    assert unet(torch.rand(2, 1, 16, 24)).shape == (2, 1, 16, 24)


# ------------------------------------------------------------ forward contract
@pytest.mark.parametrize("length", [1, 777, 4096 + 33, 12345])
def test_output_shape_and_length(length: int) -> None:
    model = _small(("a", "b", "c")).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 2, length))
    assert out.shape == (2, 3, 2, length) and torch.isfinite(out).all()


def test_model_attributes() -> None:
    model = SpleeterUNet(["vocals", "accompaniment"])
    assert model.sources == ["vocals", "accompaniment"]
    assert (model.audio_channels, model.sample_rate) == (2, 44100)
    assert model.segment_length == 511 * 1024  # exactly 512 STFT frames (center=True)
    assert model.spectrogram(torch.zeros(1, 2, model.segment_length)).shape[-1] == 512
    assert abs(model.segment_length / model.sample_rate - 11.87) < 0.01


def test_sigmoid_and_softmax_estimates() -> None:
    mag = torch.rand(2, 2, 64, 40) * 3
    est = _small().eval().estimate_magnitudes(mag)
    assert est.shape == (2, 2, 2, 64, 40) and (est >= 0).all() and (est <= mag.unsqueeze(1)).all()
    est = _small(("a", "b", "c"), mask="softmax").eval().estimate_magnitudes(mag)
    torch.testing.assert_close(est.sum(dim=1), mag)  # softmax masks sum to 1 across sources


@pytest.mark.parametrize("mask", ["sigmoid", "softmax"])
def test_ratio_masks_sum_to_one(mask: str) -> None:
    model = _small(("a", "b", "c"), mask=mask).eval()
    est = model.estimate_magnitudes(torch.rand(1, 2, 64, 30))
    masks = model.ratio_masks(est)
    assert ((masks >= 0) & (masks <= 1)).all()
    torch.testing.assert_close(masks.sum(dim=1), torch.ones_like(masks[:, 0]))
    torch.testing.assert_close(model.ratio_masks(torch.zeros_like(est)), torch.full_like(est, 1 / 3))


def test_outputs_sum_to_lowpassed_mixture_with_zeros_extension() -> None:
    model = _small(mask_extension="zeros").eval()
    mix = torch.randn(2, 2, 5000)
    with torch.no_grad():
        out = model(mix)
    spec = stft(mix, 256, 64)
    spec[..., 64:, :] = 0  # hard cutoff above freq_bins
    lowpassed = istft(spec, 256, 64, 5000)
    assert (out.sum(dim=1) - lowpassed).abs().max() < 1e-4
    assert (out.sum(dim=1) - mix).abs().max() > 0.1  # the band above freq_bins is lost


def test_outputs_sum_to_mixture_with_average_extension() -> None:
    model = _small(mask_extension="average").eval()
    mix = torch.randn(2, 2, 5000)
    with torch.no_grad():
        out = model(mix)
    assert (out.sum(dim=1) - mix).abs().max() < 1e-4


def test_extend_mask() -> None:
    mask = torch.rand(1, 2, 2, 64, 10)
    zeros = _small(mask_extension="zeros").extend_mask(mask)
    assert zeros.shape == (1, 2, 2, 129, 10)
    assert not zeros[..., 64:, :].any() and torch.equal(zeros[..., :64, :], mask)
    avg = _small(mask_extension="average").extend_mask(mask)
    torch.testing.assert_close(avg[..., 64:, :], mask.mean(dim=-2, keepdim=True).expand(-1, -1, -1, 65, -1))
    full = _small(freq_bins=129)  # nothing to extend (freq_bins padded internally to 192 for the U-Net)
    assert full.extend_mask(torch.rand(1, 2, 2, 129, 3)).shape == (1, 2, 2, 129, 3)
    with torch.no_grad():
        assert full.eval()(torch.randn(1, 2, 3000)).shape == (1, 2, 2, 3000)


def test_mono() -> None:
    model = _small(audio_channels=1).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 1, 2000)).shape == (3, 2, 1, 2000)


# ------------------------------------------------------------ training / eval
def test_gradients_flow() -> None:
    model = _small().train()
    mix = torch.randn(2, 2, 6000)
    out = model(mix)
    (out - mix.unsqueeze(1) / 2).abs().mean().backward()
    for name, p in model.named_parameters():
        if ".enc_bn.5." in name:  # BN6: output discarded as in Spleeter, no gradient
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_wiener_mode() -> None:
    model = _small(wiener_iterations=1, dropout=0.0)
    plain = _small(wiener_iterations=0, dropout=0.0)
    plain.load_state_dict(model.state_dict())
    mix = torch.randn(2, 2, 5000)
    model.train(), plain.train()
    torch.testing.assert_close(model(mix), plain(mix))  # ratio masks during training
    model.eval(), plain.eval()
    with torch.no_grad():
        out, ref = model(mix), plain(mix)
    assert out.shape == (2, 2, 2, 5000) and torch.isfinite(out).all()
    assert not torch.allclose(out, ref)
    # Wiener estimates also sum to the low-passed mixture (targets are zero above freq_bins)
    spec = stft(mix, 256, 64)
    spec[..., 64:, :] = 0
    assert (out.sum(dim=1) - istft(spec, 256, 64, 5000)).abs().max() < 1e-2


def test_state_dict_roundtrip() -> None:
    model = _small(("a", "b", "c"), mask="softmax").train()
    with torch.no_grad():
        model(torch.randn(2, 2, 6000))  # update BN running statistics
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone = _small(("a", "b", "c"), mask="softmax")
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    model.eval(), clone.eval()
    mix = torch.randn(1, 2, 4000)
    with torch.no_grad():
        torch.testing.assert_close(clone(mix), model(mix), rtol=0, atol=0)


# ------------------------------------------------------------ validation
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"conv_activation": "gelu"}, "unknown activation 'gelu'"),
    ({"deconv_activation": "tanh"}, "unknown activation 'tanh'"),
    ({"mask": "relu"}, "unknown mask 'relu'"),
    ({"mask_extension": "mirror"}, "unknown mask_extension 'mirror'"),
    ({"freq_bins": 130}, r"freq_bins=130 must be in \[1, n_fft // 2 \+ 1 = 129\]"),
    ({"filters": ()}, "filters"),
    ({"wiener_iterations": -1}, "wiener_iterations"),
])
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _small(**kwargs)


def test_bad_sources() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        SpleeterUNet([])
    with pytest.raises(ValueError, match="duplicate"):
        SpleeterUNet(["a", "a"])


@pytest.mark.parametrize("shape", [(2, 4000), (1, 1, 2, 4000), (2, 1, 4000), (2, 3, 4000)])
def test_bad_input_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected mixture waveform \(B, C, T\) with C=2"):
        _small()(torch.randn(*shape))
