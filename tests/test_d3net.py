"""D3Net: exact parameter counts of the official per-target configurations (sony/ai-research-code cfe96dfe, traced
counts of families_more.md §4), shapes, bins >= valid_bins copied through, output parity with tky823's PyTorch port
of the official configuration on a golden fixture (random weights, tiny size), configuration errors, and overfitting
a toy batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mss.checkpoint import build_model
from mss.losses import SpectrogramMSE
from mss.models.d3net import D3Net
from mss.pretrained.tky_dense import convert_d3net_state_dict
from mss.run import compose
from tests._overfit import assert_overfits, toy_batch

pytestmark = pytest.mark.usefixtures("single_thread")

GOLDEN = Path(__file__).parent / "data" / "d3net_golden.pt"
TINY_TARGET = dict(band_split=[32], init_features=[4, 3], growth=[[3, 4, 3], [2, 2, 2]], layers=[[1, 2, 1], [1, 1, 1]],
                   blocks=[[2, 2, 2], [1, 1, 1]], full_features=4, full_growth=[3, 3, 4, 3, 2],
                   full_layers=[1, 1, 2, 1, 1], full_blocks=[2, 2, 2, 2, 2])
TINY = dict(n_fft=256, hop_length=64, valid_bins=96, final_growth=3, final_layers=2)


def tiny(sources, **target):
    return {**TINY, "targets": {name: {**TINY_TARGET, **target} for name in sources}}


@pytest.mark.parametrize(("target", "count", "bn_stats"), [
    ("vocals", 2_967_407, 8_082), ("drums", 2_873_284, 7_986), ("bass", 2_419_822, 7_228), ("other", 2_967_407, 8_082)])
def test_parameter_counts_per_target(target, count, bn_stats):
    cfg = compose("train", ["model=d3net", f"data.sources=[{target}]", "paths.output_dir=unused"])
    with torch.device("meta"):
        net = build_model(cfg.model)
    assert sum(p.numel() for p in net.parameters() if p.requires_grad) == count
    assert sum(b.numel() for n, b in net.named_buffers() if n.endswith(("running_mean", "running_var"))) == bn_stats
    head = net.targets[target]
    assert head.in_offset.numel() + head.in_scale.numel() + head.decode_scale.numel() + head.decode_bias.numel() == 7298
    assert torch.equal(D3Net([target], targets={target: cfg.model.targets[target]}).targets[target].decode_bias,
                       torch.ones(1600))  # decode_bias starts at 1 as the reference


@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_and_bins_above_valid_bins_pass_through(channels):
    torch.manual_seed(0)
    net = D3Net(["drums", "vocals"], audio_channels=channels, **tiny(["drums", "vocals"]))
    mix = torch.randn(2, channels, 5001)  # 79 frames: padded to 80 inside, cropped back
    for training in (True, False):
        net.train(training)
        with torch.no_grad():
            out = net(mix)
        assert out.shape == (2, 2, channels, 5001) and torch.isfinite(out).all()
    mag = torch.rand(1, channels, 129, 21)
    with torch.no_grad():
        est = net.targets["vocals"](mag)
    assert est.shape == mag.shape and (est >= 0).all()
    assert torch.equal(est[:, :, 96:], mag[:, :, 96:])  # bins >= valid_bins are the input magnitude
    with pytest.raises(ValueError, match=f"C={channels}"):
        net(torch.randn(1, channels + 1, 5000))


def test_matches_tky823_golden_fixture():
    golden = torch.load(GOLDEN, weights_only=True)
    assert "8663d6fc" in golden["reference"]
    net = D3Net(["vocals"], wiener_iterations=0, **golden["config"]).eval()
    net.targets["vocals"].load_state_dict(convert_d3net_state_dict(golden["state_dict"], 129))  # strict
    with torch.no_grad():
        out = net(golden["mix"])[:, 0]
    assert out.shape == golden["output"].shape
    assert (out - golden["output"]).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="not a tky823 D3Net"):
        convert_d3net_state_dict({"scale_in": torch.ones(3)}, 129)


@pytest.mark.parametrize(("change", "message"), [
    (dict(band_split=[100]), r"band_split=\[100\] must increase strictly"),
    (dict(band_split=[31]), "31 bins are not divisible by 2 \\*\\* 1"),
    (dict(init_features=[4]), "one entry per band"),
    (dict(full_growth=[3, 3, 4, 3]), "same odd length"),
    (dict(blocks=[[2, 0, 2], [1, 1, 1]]), "must be >= 1"),
])
def test_bad_configurations_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        D3Net(["vocals"], **tiny(["vocals"], **change))


def test_missing_or_unknown_target_settings_are_named():
    with pytest.raises(ValueError, match=r"no configuration in `targets` for source\(s\) \['bass'\]"):
        D3Net(["vocals", "bass"], **tiny(["vocals"]))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['dens_k'\]"):
        D3Net(["vocals"], **tiny(["vocals"], dens_k=[1]))
    with pytest.raises(ValueError, match="valid_bins=200"):
        D3Net(["vocals"], **{**tiny(["vocals"]), "valid_bins": 200})


@pytest.mark.slow  # 4-35 s on 2 shared cores, depending on load
def test_overfitting_a_toy_batch_lowers_loss_and_raises_sdr(synth_root):
    torch.manual_seed(0)
    stems = toy_batch(synth_root, 4096, sources=["bass", "vocals"])
    net = D3Net(["bass", "vocals"], **tiny(["bass", "vocals"]))
    assert_overfits(net, stems, SpectrogramMSE(256, 64), lr=1e-2, steps=25, name="d3net")
