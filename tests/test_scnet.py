"""SCNet: exact parameter counts (SCNet / SCNet-large through Hydra), output parity with the official starrytong/SCNet
code and MSST's copy at randomised weights (golden fixture, through the MSST conversion), shapes, the rectangular
window, the complex-STFT RMSE loss, clear errors, and overfitting a toy batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mss.audio.spectral import istft, stft
from mss.checkpoint import build_model
from mss.losses.complex_rmse import ComplexSpectrogramRMSE
from mss.models.scnet import SCNet, band_edges
from mss.pretrained.msst_scnet import convert_state_dict, model_config
from mss.run import compose
from tests._overfit import SOURCES, assert_overfits, toy_batch

pytestmark = pytest.mark.usefixtures("single_thread")

GOLDEN = Path(__file__).parent / "data" / "scnet_golden.pt"
TINY = dict(dims=[4, 8, 8], n_fft=256, hop_length=64, dual_path_layers=2)


@pytest.mark.parametrize(("name", "count"), [("scnet", 10_578_768), ("scnet_large", 42_181_232)])
def test_parameter_counts(name, count):
    cfg = compose("train", [f"model={name}", "paths.output_dir=unused"])
    with torch.device("meta"):
        net = build_model(cfg.model)
    assert isinstance(net, SCNet) and net.sources == ["drums", "bass", "other", "vocals"]
    assert net.segment_length == 20 * 44100 and net.normalize_input
    assert sum(p.numel() for p in net.parameters()) == count


def test_band_edges_use_ceil():
    assert band_edges(2049, [0.175, 0.392, 0.433]) == [(0, 359), (359, 1162), (1162, 2049)]
    assert band_edges(10, [1.0]) == [(0, 10)]


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, map_location="cpu", weights_only=True)


@pytest.mark.parametrize(("normalize_input", "expected"), [(True, "official"), (False, "msst")])
def test_golden_parity_through_the_msst_conversion(golden, normalize_input, expected):
    """The reference state dict (random weights; official 5d95bf96 layout = MSST's) converted and loaded into the mss
    model gives the reference outputs: official code with input normalisation, MSST's copy without."""
    ref_cfg = golden["config"]
    cfg = model_config(ref_cfg, ref_cfg["sources"], 44100, normalize_input=normalize_input)
    net = build_model(cfg).eval()
    net.load_state_dict(convert_state_dict(golden["state_dict"]), strict=True)
    assert sum(p.numel() for p in net.parameters()) == sum(v.numel() for v in golden["state_dict"].values())
    with torch.no_grad():
        out = net(golden["mix"])
    assert out.shape == golden[expected].shape
    assert (out - golden[expected]).abs().max() <= 1e-4
    other = "msst" if expected == "official" else "official"
    assert (out - golden[other]).abs().max() > 1e-2  # the input normalisation changes the outputs


def test_conversion_strips_module_prefix_and_rejects_foreign_keys(golden):
    state = {f"module.{k}": v for k, v in golden["state_dict"].items()}
    assert convert_state_dict(state).keys() == convert_state_dict(golden["state_dict"]).keys()
    with pytest.raises(ValueError, match="band_split.to_features.0.weight"):
        convert_state_dict({"band_split.to_features.0.weight": torch.zeros(1)})


def test_model_config_maps_the_msst_section_and_names_unsupported_options():
    section = {"sources": ["drums", "bass", "other", "vocals"], "audio_channels": 2, "dims": [4, 64, 128, 256],
               "nfft": 4096, "hop_size": 1024, "win_size": 4096, "normalized": True,
               "band_SR": [0.225, 0.372, 0.403], "num_dplayer": 6}
    cfg = model_config(section, ["drums", "bass", "other", "vocals"], 44100)
    assert cfg["_target_"] == "mss.models.scnet.SCNet" and cfg["dims"] == [4, 64, 128, 256]
    assert cfg["band_ratios"] == [0.225, 0.372, 0.403] and cfg["normalize_input"] is False
    assert cfg["dual_path_layers"] == 6 and cfg["band_kernels"] == [3, 4, 16]
    with pytest.raises(ValueError, match="win_size=2048"):
        model_config({**section, "win_size": 2048}, section["sources"], 44100)
    with pytest.raises(ValueError, match="use_mamba"):
        model_config({**section, "use_mamba": True}, section["sources"], 44100)
    with pytest.raises(ValueError, match="4 stems but 1 source"):
        model_config(section, ["vocals"], 44100)


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("length", [64 * 12, 3001, 100])
def test_shapes_any_length_and_channel_count(channels, length):
    torch.manual_seed(0)
    net = SCNet(["a", "b"], audio_channels=channels, **{**TINY, "dims": [2 * channels, 8, 8]})
    for training in (True, False):
        net.train(training)
        with torch.no_grad():
            out = net(torch.randn(2, channels, length))
        assert out.shape == (2, 2, channels, length) and torch.isfinite(out).all()


def test_padding_gives_an_even_frame_count():
    net = SCNet(SOURCES, **TINY)
    for length in (1, 63, 64, 128, 1000, 1216):
        padded = length + net.padding(length)
        assert padded > length and padded % 64 == 0 and (padded // 64) % 2 == 1  # frames = padded/hop + 1, even


@pytest.mark.filterwarnings("ignore:A window was not provided")  # the reference's window-less torch.stft
def test_rectangular_window_is_torchs_default_and_inverts():
    x = torch.randn(2, 3000, dtype=torch.float64)
    spec = stft(x, 512, 128, pad_mode="reflect", normalized=True, window="rectangular")
    ref = torch.stft(x, 512, 128, window=None, center=True, normalized=True, return_complex=True)  # ones
    assert torch.allclose(spec, ref)
    assert torch.allclose(istft(spec, 512, 128, 3000, normalized=True, window="rectangular"), x)
    with pytest.raises(ValueError, match="window must be one of"):
        stft(x, 512, 128, window="hamming")


@pytest.mark.filterwarnings("ignore:A window was not provided")  # the reference's window-less torch.stft
def test_complex_rmse_loss():
    torch.manual_seed(0)
    est, ref = torch.randn(2, 3, 2, 4096), torch.randn(2, 3, 2, 4096)
    loss = ComplexSpectrogramRMSE(512, 128)(est, ref)
    assert loss.shape == (3,)
    a = torch.stft((est - ref).reshape(-1, 4096), 512, 128, normalized=True, return_complex=True)
    expected = torch.view_as_real(a).reshape(2, 3, -1).square().mean(-1).sqrt().mean(0)
    assert torch.allclose(loss, expected, atol=1e-6)
    assert ComplexSpectrogramRMSE(512, 128)(est, est).abs().max() == 0
    with pytest.raises(ValueError, match=r"\(B, S, C, T\)"):
        ComplexSpectrogramRMSE(512, 128)(est[0], ref[0])


def test_bad_input_and_impossible_configs_are_clear_errors():
    net = SCNet(SOURCES, **TINY)
    with pytest.raises(ValueError, match="C=2"):
        net(torch.randn(1, 1, 4000))
    bad = [
        (dict(dims=[6, 8, 8]), "dims\\[0\\]=6 must be 2 \\* audio_channels = 4"),
        (dict(dims=[4]), "dims must list at least two"),
        (dict(dual_path_layers=3), "dual_path_layers must be even"),
        (dict(band_ratios=[0.2, 0.3, 0.3]), "band_ratios must be positive and sum to 1"),
        (dict(band_strides=[1, 4]), "one entry per band"),
        (dict(conv_kernel=4), "conv_kernel must be odd"),
        (dict(compress=16), "compress=16 leaves no hidden channels"),
        (dict(hop_length=1024), "hop_length <= n_fft"),
    ]
    for override, message in bad:
        with pytest.raises(ValueError, match=message):
            SCNet(SOURCES, **{**TINY, **override})
    thin = SCNet(SOURCES, dims=[4, 4], n_fft=64, hop_length=16, band_ratios=[0.5, 0.49, 0.01])  # 33 bins: 17, 16, 0
    with pytest.raises(ValueError, match="band of the 33-row input is empty"):
        thin(torch.randn(1, 2, 2000))


def test_overfitting_a_toy_batch_lowers_loss_and_raises_sdr(synth_root):
    torch.manual_seed(0)
    stems = toy_batch(synth_root, 8192, active=True)
    net = SCNet(SOURCES, dims=[4, 16, 16], n_fft=512, hop_length=128, dual_path_layers=2)
    assert_overfits(net, stems, ComplexSpectrogramRMSE(512, 128), lr=1e-2, steps=20, name="scnet")
