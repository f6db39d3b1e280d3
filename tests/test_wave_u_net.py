"""Wave-U-Net: exact parameter counts and window sizes of the paper's M6 (TF) and of the PyTorch version's defaults
(through Hydra), output parity with f90/Wave-U-Net-Pytorch at randomised weights (golden fixture, through the
converter), the importer CLI, the TF model's mechanics (decimation, linear interpolation, difference output),
shapes for any length, clear errors, and overfitting a toy batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mss.checkpoint import build_model, load_model
from mss.losses import WaveformMSE
from mss.models.wave_u_net import WaveUNet, sinc_filter, widths_of
from mss.pretrained.import_waveunet import convert_state_dict, import_waveunet, infer_options, main, model_config
from mss.run import compose
from tests._overfit import SOURCES, assert_overfits, toy_batch

pytestmark = pytest.mark.usefixtures("single_thread")

GOLDEN = Path(__file__).parent / "data" / "wave_u_net_golden.pt"
# the two published configurations at toy size
TF_TINY = dict(levels=3, features=8, output_size=256)
WUP_TINY = dict(model_rate=44100, levels=2, features=8, growth="double", block="double", kernel_size=5,
                up_kernel_size=5, stride=4, resampling="sinc", norm="group", activation="relu", mix_skip=False,
                output="direct", difference_source=None, output_activation="linear", per_source=True,
                output_size=512)


def m6_count() -> int:
    """M6's parameters from the paper's layer list: 12 down convs k15 (2 -> 24, 24 i -> 24 (i + 1)), the bottleneck
    k15 (288 -> 312), 12 up convs k5 on [skip, up-sampled], 3 output convs k1 on [mixture, 24 features]."""
    conv = lambda k, cin, cout: k * cin * cout + cout  # noqa: E731
    down = sum(conv(15, 2 if i == 0 else 24 * i, 24 * (i + 1)) for i in range(12)) + conv(15, 288, 312)
    up = sum(conv(5, 24 * (13 - i) + 24 * (12 - i), 24 * (12 - i)) for i in range(12))
    return down + up + 3 * conv(1, 2 + 24, 2)


def test_m6_analytic_count():
    assert m6_count() == 10_263_498


def test_parameter_counts_and_windows_through_hydra():
    cfg = compose("train", ["model=wave_u_net", "paths.output_dir=unused"])
    with torch.device("meta"):
        net = build_model(cfg.model)
    assert isinstance(net, WaveUNet) and net.sources == ["drums", "bass", "other", "vocals"]
    assert sum(p.numel() for p in net.parameters()) == m6_count() == 10_263_498
    assert all(p.requires_grad for p in net.parameters())
    assert (net.model_rate, net.input_frames, net.output_frames) == (22050, 147_443, 16_389)
    assert net.difference == 3 and list(net.nets) == ["all"]

    cfg = compose("train", ["model=wave_u_net_pytorch", "paths.output_dir=unused"])
    with torch.device("meta"):
        net = build_model(cfg.model)
    assert list(net.nets) == ["drums", "bass", "other", "vocals"]
    assert sum(p.numel() for p in net.parameters()) == 70_148_232
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == 69_910_152
    assert sum(p.numel() for p in net.nets["vocals"].parameters() if p.requires_grad) == 17_477_538
    assert (net.model_rate, net.input_frames, net.output_frames) == (44100, 97_961, 88_409)


def test_widths():
    assert widths_of(24, 12, "add")[-1] == 312 and widths_of(32, 5, "double") == [32, 64, 128, 256, 512, 1024]


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, map_location="cpu", weights_only=True)


def golden_net(golden) -> WaveUNet:
    ref = golden["config"]
    cfg = model_config(ref["instruments"], features=ref["features"], levels=ref["levels"], strides=ref["strides"],
                       kernel_size=ref["kernel_size"], output_size=ref["output_samples"] / ref["sr"])
    net = build_model(cfg)
    net.load_state_dict(convert_state_dict(golden["state_dict"]), strict=True)
    return net


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_golden_parity_with_wave_u_net_pytorch(golden, mode):
    """f90/Wave-U-Net-Pytorch 86c113da at random (perturbed) weights, 8 features, 3 levels, stride 4, GN, fixed
    sinc resampling, one net per source, through its own tiling loop (test.predict) on a 2,345-sample excerpt."""
    net = golden_net(golden)
    assert (net.input_frames, net.output_frames) == (golden["shapes"]["input_frames"],
                                                     golden["shapes"]["output_frames"])
    assert sum(p.numel() for p in net.parameters()) == sum(v.numel() for v in golden["state_dict"].values())
    net.train(mode == "train")
    with torch.no_grad():
        out = net(golden["mix"])
    expected = golden["out" if mode == "eval" else "out_train"]
    assert out.shape == expected.shape == (1, 4, 2, 2345)
    assert (out - expected).abs().max() <= 1e-4
    assert (golden["out"] - golden["out_train"]).abs().max() > 0.5  # eval clamps to [-1, 1]


def test_infer_options_reads_the_architecture_from_the_weights(golden):
    opts = infer_options(golden["state_dict"])
    assert opts == {"instruments": ["bass", "drums", "other", "vocals"], "channels": 2, "features": 8, "levels": 3,
                    "feature_growth": "double", "kernel_size": 5, "depth": 1, "conv_type": "gn"}
    # the untouched sinc filters also give the stride
    fresh = dict(golden["state_dict"])
    fresh["waveunets.bass.downsampling_blocks.0.downconv.filter"] = sinc_filter(15, 0.5 / 4).expand(16, 1, 15)
    assert infer_options(fresh)["strides"] == 4


def test_conversion_errors(golden):
    with pytest.raises(ValueError, match="not a Wave-U-Net-Pytorch key"):
        convert_state_dict({"encoder.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="res='learned'"):
        convert_state_dict({"waveunets.bass.downsampling_blocks.0.downconv.filter.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="conv_type='bn'"):
        convert_state_dict({"waveunets.bass.bottlenecks.0.norm.running_mean": torch.zeros(1)})
    module = {f"module.{k}": v for k, v in golden["state_dict"].items()}
    assert convert_state_dict(module).keys() == convert_state_dict(golden["state_dict"]).keys()
    assert len(convert_state_dict(golden["state_dict"], ["vocals"])) == len(golden["state_dict"]) // 4


def test_importer_cli_on_a_training_checkpoint(golden, tmp_path):
    ckpt = tmp_path / "model.pt"
    torch.save({"model_state_dict": golden["state_dict"], "optimizer_state_dict": {"state": {}, "param_groups": []},
                "state": {"step": 10, "worse_epochs": 0, "best_loss": 0.1, "epochs": 2}}, ckpt)
    seconds = golden["config"]["output_samples"] / 44100
    with pytest.warns(UserWarning, match="assuming strides=4"):
        path = main([str(ckpt), f"out={tmp_path / 'all.ckpt'}", "features=8", "levels=3", f"output_size={seconds}"])
    net = load_model(path).eval()
    with torch.no_grad():
        assert (net(golden["mix"]) - golden["out"]).abs().max() <= 1e-4
    saved = torch.load(path, map_location="cpu", weights_only=False)
    assert saved["imported_from"]["state"]["step"] == 10
    # one stem, strides given: only that network is imported
    path = main([str(ckpt), f"out={tmp_path / 'vocals.ckpt'}", "sources=vocals", "strides=4", f"output_size={seconds}"])
    net = load_model(path).eval()
    assert net.sources == ["vocals"] and list(net.nets) == ["vocals"]
    with torch.no_grad():
        assert (net(golden["mix"])[:, 0] - golden["out"][:, 3]).abs().max() <= 1e-4
    # options that contradict the weights, unknown stems and options, the usage
    with pytest.raises(ValueError, match="weights do not fit"):
        import_waveunet(ckpt, tmp_path / "x.ckpt", features=16, strides=4)
    with pytest.raises(ValueError, match=r"\['piano'\] not in the checkpoint"):
        import_waveunet(ckpt, tmp_path / "x.ckpt", ["piano"], strides=4)
    with pytest.raises(SystemExit, match="unknown option 'lr'"):
        main([str(ckpt), "out=x.ckpt", "lr=1"])
    with pytest.raises(SystemExit, match="usage"):
        main([str(ckpt)])


def test_linear_interpolation_decimation_and_difference_output():
    """TF M6 mechanics at model_rate = sample_rate: the up-sampling inserts midpoints (n -> 2n - 1), the
    decimation keeps every other sample, and the stems sum to the mixture in training mode."""
    torch.manual_seed(0)
    net = WaveUNet(SOURCES, model_rate=44100, **TF_TINY)
    block = net.nets["all"].up[0]
    x = torch.randn(1, block.merge_convs[0].conv.in_channels - 8 * 3, 5)
    seen = {}
    hook = block.merge_convs[0].register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))
    block(x, torch.randn(1, 8 * 3, 20))
    hook.remove()
    up = seen["x"][:, 8 * 3:]
    assert up.shape[-1] == 9 and torch.allclose(up[..., ::2], x) and torch.allclose(up[..., 1::2],
                                                                                    (x[..., :-1] + x[..., 1:]) / 2)
    down, skip = net.nets["all"].down[0](torch.randn(1, 2, 31))
    assert skip.shape[-1] == 17 and torch.equal(down, skip[..., ::2])
    mix = torch.randn(2, 2, 1000)
    with torch.no_grad():
        out = net(mix)
        assert torch.allclose(out.sum(1), mix, atol=1e-5)  # vocals = mixture - the others
        assert (out[:, :3].abs() < 1).all()  # tanh
        net.eval()
        assert (net(4 * mix)[:, 3].abs() <= 1).all()  # the difference source is clipped at test time


def test_the_sinc_filter_is_a_hann_windowed_sinc():
    taps = sinc_filter(15, 0.125).double()
    i = torch.arange(15, dtype=torch.float64)
    hann = 0.5 - 0.5 * torch.cos(2 * torch.pi * i / 14)
    ideal = torch.sinc(2 * 0.125 * (i - 7)) * hann
    assert torch.allclose(taps, ideal / ideal.sum(), atol=1e-6) and abs(taps.sum().item() - 1) < 1e-6


@pytest.mark.parametrize("kind", ["tf", "wup"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("length", [1, 2, 3, 101, 4001])
def test_shapes_any_length_and_channel_count(kind, channels, length):
    torch.manual_seed(0)
    net = WaveUNet(["a", "b", "c"], audio_channels=channels,
                   **{**(TF_TINY if kind == "tf" else WUP_TINY), "difference_source": None})
    for training in (True, False):
        net.train(training)
        with torch.no_grad():
            out = net(torch.randn(2, channels, length))
        assert out.shape == (2, 3, channels, length) and torch.isfinite(out).all()


def test_windows_are_batched_without_gradients():
    torch.manual_seed(0)
    net = WaveUNet(SOURCES, window_batch=2, **TF_TINY).eval()
    mix = torch.randn(1, 2, 6000)
    with torch.no_grad():
        chunked = net(mix)
    net.window_batch = 1000
    with torch.no_grad():
        assert torch.allclose(chunked, net(mix), atol=1e-6)


def test_bad_input_and_impossible_configs_are_clear_errors():
    net = WaveUNet(SOURCES, **TF_TINY)
    with pytest.raises(ValueError, match="C=2"):
        net(torch.randn(1, 1, 4000))
    with pytest.raises(ValueError, match="at least one sample"):
        net(torch.randn(1, 2, 0))
    bad = [
        (dict(block="triple"), "block='triple' is not supported; expected one of"),
        (dict(resampling="learned"), "resampling='learned' is not supported"),
        (dict(growth="triple"), "growth='triple'"),
        (dict(norm="batch"), "norm='batch'"),
        (dict(kernel_size=4), "kernel_size must be odd"),
        (dict(stride=1), "stride must be >= 2"),
        (dict(levels=0), "levels must be a positive integer"),
        (dict(norm="group", features=4), "multiple of norm_channels=8"),
        (dict(per_source=True), "output='difference' needs one joint network"),
        (dict(difference_source="piano"), "difference_source='piano' is not one of the sources"),
    ]
    for override, message in bad:
        with pytest.raises(ValueError, match=message):
            WaveUNet(SOURCES, **{**TF_TINY, **override})
    with pytest.raises(ValueError, match="conv_type='bn'"):
        model_config(SOURCES, conv_type="bn")


@pytest.mark.parametrize("kind", ["tf", "wup"])
def test_overfitting_a_toy_batch_lowers_loss_and_raises_sdr(synth_root, kind):
    torch.manual_seed(0)
    stems = toy_batch(synth_root, 8192, active=True)
    config = {**TF_TINY, "levels": 4, "features": 16, "output_size": 1024} if kind == "tf" else WUP_TINY
    net = WaveUNet(SOURCES, **config)
    assert_overfits(net, stems, WaveformMSE(), lr=3e-3, steps=30, name=f"wave_u_net ({kind})")
