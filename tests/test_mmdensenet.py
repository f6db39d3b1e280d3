"""MMDenseNet / MMDenseLSTM: exact parameter counts of both canonical configurations (tky823 8663d6fc), shapes, the
bins above the bands passing through, output parity with tky823's MMDenseLSTM on a golden fixture (random weights,
tiny size, every block kind), configuration errors, and overfitting a toy batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mss.checkpoint import build_model
from mss.losses import SpectrogramMSE
from mss.models.mmdensenet import MMDenseNet
from mss.pretrained.tky_dense import convert_key, convert_state_dict, convert_targets
from mss.run import compose
from tests._overfit import assert_overfits, toy_batch

pytestmark = pytest.mark.usefixtures("single_thread")

GOLDEN = Path(__file__).parent / "data" / "mmdense_golden.pt"
TINY = dict(
    n_fft=512, hop_length=128,
    bands={"low": dict(bins=100, features=4, growth=[3, 3, 3], layers=[1, 2, 1], lstm=[0, 4, 0]),
           "high": dict(bins=150, features=4, growth=[2, 0, 2], layers=[1, 0, 1], lstm=[0, 2, 0], kernel=[4, 3])},
    full=dict(features=4, growth=[2, 2, 2, 2, 2], layers=[1, 1, 1, 1, 1], lstm=[0, 0, 0, 4, 0]),
    final=dict(growth=3, layers=2, dilated=True))


@pytest.mark.parametrize(("name", "count", "entries"), [("mmdenselstm", 1_370_784, 926), ("mmdensenet", 339_468, 558)])
def test_parameter_counts_per_target(name, count, entries):
    cfg = compose("train", [f"model={name}", "data.sources=[vocals]", "paths.output_dir=unused"])
    with torch.device("meta"):
        net = build_model(cfg.model)
    assert sum(p.numel() for p in net.parameters()) == count
    assert len(net.state_dict()) == entries  # as many entries as tky823's state dict
    with torch.device("meta"):
        four = build_model(compose("train", [f"model={name}", "paths.output_dir=unused"]).model)
    assert sum(p.numel() for p in four.parameters()) == 4 * count


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("targets", [1, 2])
def test_shapes_and_bins_above_the_bands_pass_through(channels, targets):
    torch.manual_seed(0)
    net = MMDenseNet([f"s{i}" for i in range(targets)], audio_channels=channels, **TINY)
    mix = torch.randn(2, channels, 5001)
    for training in (True, False):  # mixture phase / Wiener EM (single target: EM against the residual)
        net.train(training)
        with torch.no_grad():
            out = net(mix)
        assert out.shape == (2, targets, channels, 5001) and torch.isfinite(out).all()
    mag = torch.rand(1, channels, 257, 23)
    with torch.no_grad():
        est = net.targets["s0"](mag)
    assert est.shape == mag.shape and (est >= 0).all()
    assert torch.equal(est[:, :, 250:], mag[:, :, 250:])  # 7 bins above the 100 + 150 band bins are copied
    with pytest.raises(ValueError, match=f"C={channels}"):
        net(torch.randn(1, channels + 1, 5000))


def test_matches_tky823_golden_fixture():
    golden = torch.load(GOLDEN, weights_only=True)
    assert "8663d6fc" in golden["reference"]
    net = MMDenseNet(["vocals"], wiener_iterations=0, **golden["config"]).eval()
    state = convert_targets({"vocals": golden["state_dict"]})
    assert len(state) == len(golden["state_dict"])
    net.load_state_dict(state)  # strict: every reference tensor has its place, shapes agree
    with torch.no_grad():
        out = net(golden["mix"])[:, 0]
    assert out.shape == golden["output"].shape
    assert (out - golden["output"]).abs().max() <= 1e-4
    assert golden["output"].abs().max() > 0.1  # the fixture is not trivially zero


def test_key_conversion_and_refusals():
    assert convert_key("net.low.conv2d.weight") == "bands.low.stem.weight"
    assert convert_key("net.low.encoder.net.2.dense_block.net.4.norm2d.running_var") == \
        "bands.low.down.2.layers.4.norm.running_var"
    assert convert_key("net.full.decoder.net.3.dense_rnn_block.bottleneck_conv2d.weight") == \
        "bands.full.up.3.block.lstm_in.weight"
    assert convert_key("net.high.bottleneck_conv2d.rnn.weight_ih_l0_reverse") == \
        "bands.high.bottleneck.lstm.weight_ih_l0_reverse"
    assert convert_key("glu2d.map_gate.bias") == "out_gate.bias" and convert_key("scale_in") == "in_scale"
    with pytest.raises(ValueError, match="not a tky823 MMDenseNet"):
        convert_state_dict({"fc1.weight": torch.zeros(1)})


@pytest.mark.parametrize(("change", "message"), [
    (dict(bands={"low": dict(bins=300, features=4, growth=[2, 2, 2], layers=[1, 1, 1])}), "sum to 300 > n_fft"),
    (dict(bands={"low": dict(bins=100, features=4, growth=[2, 2, 2], layers=[1, 1, 1], lstm=[3, 0, 0])}),
     "down-path blocks cannot hold an LSTM"),
    (dict(bands={"low": dict(bins=100, features=4, growth=[2, 2, 2, 2], layers=[1, 1, 1, 1])}), "odd length"),
    (dict(bands={"low": dict(bins=100, features=4, growth=[2, 2, 2], layers=[1, 0, 1])}), "needs an LSTM"),
    (dict(bands={"low": dict(bins=100, features=4, growth=[2, 2, 2], layers=[1, 1, 1], depth=3)}),
     r"unknown option\(s\) \['depth'\]"),
    (dict(full=dict(features=4, growth=[2, 2, 2], layers=[1, 1, 1], lstm=[0, 0, 5])), "last block cannot hold"),
    (dict(final=dict(growth=3)), "final: needs growth and layers"),
    (dict(wiener_iterations=-1), "wiener_iterations"),
])
def test_bad_configurations_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        MMDenseNet(["vocals"], **{**TINY, **change})


@pytest.mark.slow  # 4-35 s on 2 shared cores, depending on load
def test_overfitting_a_toy_batch_lowers_loss_and_raises_sdr(synth_root):
    torch.manual_seed(0)
    stems = toy_batch(synth_root, 8192, sources=["bass", "vocals"])
    net = MMDenseNet(["bass", "vocals"], **TINY)
    assert_overfits(net, stems, SpectrogramMSE(512, 128), lr=1e-2, steps=30, name="mmdenselstm")
