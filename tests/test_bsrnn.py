"""Band-Split RNN: exact parameter counts of the paper-size and MAG-small configs per stem (built through Hydra), the
floored band layouts, output parity with magronp/bsrnn (f2ecc62b) through a golden fixture (reference state dicts at
random weights, mapped by convert_mag_state_dict), shapes and clear errors, and overfitting a toy batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mss.checkpoint import build_model
from mss.losses import WaveformL1
from mss.models.bsrnn import BSRNN, OneGroupNorm, band_widths, convert_mag_state_dict
from mss.run import compose
from tests._overfit import assert_overfits, toy_batch

pytestmark = pytest.mark.usefixtures("single_thread")

GOLDEN = Path(__file__).parent / "data" / "bsrnn_golden.pt"
TINY = dict(n_fft=1024, hop_length=256, feature_dim=4, num_layers=1, mask_factor=1)

PAPER = {"vocals": 36_417_160, "other": 36_417_160, "bass": 32_797_192, "drums": 41_024_392}
SMALL = {"vocals": 8_020_296, "other": 8_020_296, "bass": 7_111_432, "drums": 9_177_032}


def build(name: str, sources: list[str]):
    cfg = compose("train", [f"model={name}", f"data.sources=[{','.join(sources)}]", "paths.output_dir=unused"])
    with torch.device("meta"):
        return build_model(cfg.model)


@pytest.mark.parametrize(("name", "counts"), [("bsrnn", PAPER), ("bsrnn_small", SMALL)])
def test_parameter_counts_per_stem(name, counts):
    for source, count in counts.items():
        assert sum(p.numel() for p in build(name, [source]).parameters()) == count, source
    net = build(name, list(counts))  # one independent network per stem
    assert sum(p.numel() for p in net.parameters()) == sum(counts.values())
    assert [len(net.nets[s].widths) for s in counts] == [41, 41, 30, 55]


def test_band_layouts_are_the_floored_reference_widths():
    vocals = band_widths("vocals", 1025, 44100)
    assert vocals == [4] * 10 + [11] * 12 + [23] * 8 + [46] * 8 + [92] * 2 + [117]
    assert band_widths("bass", 1025, 44100) == [2] * 10 + [4] * 5 + [23] * 6 + [46] * 4 + [92] * 4 + [295]
    assert band_widths("drums", 1025, 44100) == [2] * 20 + [4] * 10 + [11] * 8 + [23] * 8 + [46] * 8 + [305]
    assert band_widths("joint", 1025, 44100)[-3:] == [92, 92, 121] and len(band_widths("joint", 1025, 44100)) == 57
    assert band_widths([500, 525], 1025, 44100) == [500, 525]
    net = BSRNN(["guitar", "vocals"], band_split={"vocals": "bass"}, **TINY)
    assert net.nets["guitar"].widths == band_widths("joint", 513, 44100)  # unknown names: the joint layout
    assert net.nets["vocals"].widths == band_widths("bass", 513, 44100)


def test_one_group_norm_is_group_norm_with_one_group():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7)  # (M, D, L) as torch's GroupNorm sees it
    ref = torch.nn.GroupNorm(1, 5, eps=1e-7)
    ours = OneGroupNorm(5, eps=1e-7)
    with torch.no_grad():
        for p in (ref.weight, ref.bias):
            p.normal_()
        ours.load_state_dict(ref.state_dict())
    torch.testing.assert_close(ours(x.transpose(1, 2)).transpose(1, 2), ref(x), atol=1e-6, rtol=1e-5)


def unpack(packed: dict) -> dict[str, torch.Tensor]:
    flat, out, start = packed["flat"].float(), {}, 0
    for key, shape in zip(packed["keys"], packed["shapes"]):
        n = int(torch.Size(shape).numel())
        out[key] = flat[start:start + n].reshape(shape)
        start += n
    return out


def golden_net(fixture: dict) -> BSRNN:
    cfg = fixture["config"]
    net = BSRNN(fixture["sources"], n_fft=cfg["n_fft"], hop_length=cfg["n_hop"], feature_dim=cfg["feature_dim"],
                num_layers=cfg["num_repeat"], hidden_factor=cfg["fac_sep"], mask_factor=cfg["fac_mask"]).eval()
    for source in fixture["sources"]:
        net.nets[source].load_state_dict(convert_mag_state_dict(unpack(fixture["states"][source])))  # strict
    return net


def test_golden_parity_with_the_reference():
    """magronp/bsrnn BSRNN(targets=[t]) at feature dim 4, one layer, STFT 1024 / 256, every weight randomised (norm
    gains too), one net per stem for vocals, bass and drums (three band layouts), stereo input: same output."""
    fixture = torch.load(GOLDEN, weights_only=True)
    net = golden_net(fixture)
    with torch.no_grad():
        out = net(fixture["mix"])
    assert out.shape == fixture["out"].shape == (1, 3, 2, fixture["mix"].shape[-1])
    assert (out - fixture["out"]).abs().max() <= 1e-4
    assert fixture["out"].abs().max() > 1e-2  # the comparison is not between two near-zero signals


def test_mag_state_dict_conversion_refuses_other_variants():
    state = unpack(torch.load(GOLDEN, weights_only=True)["states"]["vocals"])
    converted = convert_mag_state_dict(state)
    assert not any(k.startswith(("stft", "istft")) for k in converted)
    assert converted["band_split.0.fc.weight"].shape == (4, 4)  # kernel-1 conv squeezed
    for key, match in (("maskers.1.mask.0.0.weight", "multi-target"), ("separator.0.attn_block.q.weight", "attention"),
                       ("separator.0.time_net.main_layer.0.weight", "layer type"),
                       ("separator.0.tac_module.transform.0.weight", "TAC")):
        with pytest.raises(ValueError, match=match):
            convert_mag_state_dict({**state, key: torch.zeros(1)})


@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_any_length_and_channels(channels):
    torch.manual_seed(0)
    net = BSRNN(["vocals", "drums"], audio_channels=channels, **TINY)
    for length in (300, 5001):  # shorter than n_fft / 2: zero padding instead of reflection
        with torch.no_grad():
            out = net(torch.randn(2, channels, length))
        assert out.shape == (2, 2, channels, length) and torch.isfinite(out).all()


def test_mixed_precision_keeps_the_complex_path_in_float32():
    torch.manual_seed(0)
    net = BSRNN(["vocals"], **TINY)
    mix = torch.randn(1, 2, 4000)
    with torch.no_grad():
        full = net(mix)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 Linear/LSTM, float32 STFT, masks and iSTFT
            half = net(mix)
    assert half.dtype == torch.float32 and (half - full).abs().max() < 0.05 * full.abs().max()


def test_bad_input_and_config_are_clear_errors():
    net = BSRNN(["vocals"], **TINY)
    with pytest.raises(ValueError, match="C=2"):
        net(torch.randn(1, 1, 4000))
    with pytest.raises(ValueError, match=r"n_fft=512 at sample_rate=44100"):
        BSRNN(["bass"], n_fft=512, hop_length=128)
    with pytest.raises(ValueError, match="unknown band_split layout 'piano'"):
        BSRNN(["vocals"], band_split="piano", **TINY)
    with pytest.raises(ValueError, match="sum to n_fft // 2 \\+ 1 = 513"):
        BSRNN(["vocals"], band_split={"vocals": [100, 100]}, **TINY)
    with pytest.raises(ValueError, match="not among the sources"):
        BSRNN(["vocals"], band_split={"bass": "bass"}, **TINY)
    with pytest.raises(ValueError, match="feature_dim must be positive"):
        BSRNN(["vocals"], **{**TINY, "feature_dim": 0})
    with pytest.raises(ValueError, match="hop_length=1024 must be <= n_fft // 2"):
        BSRNN(["vocals"], **{**TINY, "hop_length": 1024})


def test_overfitting_a_toy_batch_lowers_loss_and_raises_sdr(synth_root):
    sources = ["bass", "vocals"]  # two band layouts; four nets of 30-55 bands each would double the time
    stems = toy_batch(synth_root, 16384, sources=sources)
    torch.manual_seed(0)
    net = BSRNN(sources, n_fft=1024, hop_length=256, feature_dim=8, num_layers=1, mask_factor=2)
    assert_overfits(net, stems, WaveformL1(), lr=3e-3, steps=30, name="bsrnn")


def test_recurrent_layers_fall_back_to_float32_where_the_cpu_has_no_bf16_kernels(monkeypatch):
    """``run_rnn`` under CPU bf16 autocast: where oneDNN has bf16 RNN kernels the layer runs in bf16, elsewhere (or
    forced here) in float32 on the same (bf16-rounded) input; outside autocast it is the plain call."""
    from mss.models import blocks

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 5, batch_first=True, bidirectional=True)
    x = torch.randn(2, 7, 6).bfloat16()
    with torch.no_grad():
        plain = lstm(x.float())[0]
        assert torch.equal(blocks.run_rnn(lstm, x.float())[0], plain)
        monkeypatch.setattr(blocks, "cpu_bf16_rnn", lambda: False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            forced = blocks.run_rnn(lstm, x)[0]
        assert forced.dtype == torch.float32 and torch.equal(forced, plain)
        monkeypatch.undo()
        if blocks.cpu_bf16_rnn():  # this CPU has the kernels: bf16 output, close to float32
            with torch.autocast("cpu", dtype=torch.bfloat16):
                native = blocks.run_rnn(lstm, x)[0]
            assert native.dtype == torch.bfloat16 and (native.float() - plain).abs().max() < 0.05
