"""BandIt: exact parameter counts (MSST vocals / other and 3-stem DnR configs through Hydra), the musical filterbank,
output parity with MSST's models/bandit (v1) and models/bandit_v2 (ZFTurbo MSST ccc011ab) at randomised weights
(golden fixture, through the MSST conversion and the import CLI), shapes, clear errors, and overfitting a toy
batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from mss import load_model
from mss.checkpoint import build_model
from mss.losses import WaveformL1
from mss.models.bandit import BandIt, musical_bands
from mss.pretrained.import_msst import main as import_main
from mss.pretrained.msst_bandit import convert_state_dict, model_config
from mss.run import compose
from tests._overfit import assert_overfits, toy_batch

pytestmark = pytest.mark.usefixtures("single_thread")

GOLDEN = Path(__file__).parent / "data" / "bandit_golden.pt"
TINY = dict(n_fft=512, hop_length=128, n_bands=8, emb_dim=8, rnn_dim=8, n_sqm_modules=1, mlp_dim=16)


def build(sources: list[str]):
    cfg = compose("train", ["model=bandit", f"data.sources=[{','.join(sources)}]", "paths.output_dir=unused"])
    with torch.device("meta"):
        return build_model(cfg.model)


@pytest.mark.parametrize(("sources", "count"), [(["vocals", "other"], 28_383_848),
                                                (["speech", "music", "effects"], 37_022_688)])
def test_parameter_counts(sources, count):
    net = build(sources)
    assert isinstance(net, BandIt) and net.sources == sources and net.segment_length == 6 * 44100
    assert sum(p.numel() for p in net.parameters()) == count
    assert len(net.bands) == 64 and len(net.rnns) == 16 and len(net.decoders) == len(sources)
    assert sum(p.numel() for p in net.band_split.parameters()) == 565_112
    assert sum(p.numel() for p in net.rnns.parameters()) == 10_541_056
    assert sum(p.numel() for p in net.decoders[0].parameters()) == 8_638_840


def test_musical_filterbank_layout_and_weights():
    bands, weights = musical_bands(64, 2048, 44100)
    widths = [end - start for start, end in bands]
    assert bands[0] == (0, 3) and bands[1] == (1, 3) and bands[-1] == (918, 1025)
    assert widths[:8] == [3, 2, 2, 2, 2, 2, 3, 3] and widths[-3:] == [180, 201, 107]
    cover = torch.zeros(1025)
    for (start, end), w in zip(bands, weights):
        cover[start:end] += w
    assert torch.allclose(cover, torch.ones(1025))  # the weights average the overlapping bands
    assert musical_bands(64, 2048, 48000)[0] == bands  # the layout does not depend on the sample rate


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("case", ["v1", "v2", "v1_variant", "v2_variant"])
def test_golden_parity_through_the_msst_conversion(golden, case):
    """MSST's BandIt (v1 MultiMaskMultiSourceBandSplitRNNSimple / v2 Bandit; every weight randomised) converted into
    the mss model gives the reference output. The variants cover LSTM / plain RNN, unidirectional, real masks, no
    frequency weights, ELU(alpha) / ReLU, reflect / constant padding."""
    fixture = golden["cases"][case]
    cfg = model_config(fixture["config"], fixture["config"]["stems"], 44100)
    net = build_model(cfg).eval()
    state = convert_state_dict(fixture["state_dict"])
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = net(golden["mix"])
    assert out.shape == fixture["out"].shape
    assert (out - fixture["out"]).abs().max() <= 1e-4
    if case == "v1":  # the conversion and every option matter: a wrong setting breaks parity
        # (normalized hardly matters: the band LayerNorms cancel the STFT scale up to their eps)
        for override in (dict(use_freq_weights=False), dict(pad_mode="reflect")):
            other = build_model({**cfg, **override}).eval()
            other.load_state_dict(state)
            with torch.no_grad():
                assert (other(golden["mix"]) - fixture["out"]).abs().max() > 1e-2, override


def test_v2_band_split_features_are_reordered(golden):
    """v2 flattens a band as (bin, re/im), v1 and mss as (re/im, bin): the converter permutes the v2 weights."""
    state = golden["cases"]["v2"]["state_dict"]
    ln = state["band_split.norm_fc_modules.1.combined.0.weight"]
    fc = state["band_split.norm_fc_modules.1.combined.1.weight"]
    out = convert_state_dict(state)
    width = ln.numel() // 2
    assert torch.equal(out["band_split.1.norm.weight"][:width], ln[0::2])  # real parts first
    assert torch.equal(out["band_split.1.fc.weight"][:, width:], fc[:, 1::2])  # then imaginary parts
    assert len(out) < len(state)  # the duplicated v2 mask weights are kept once


def test_conversion_errors_name_the_key(golden):
    v1 = dict(golden["cases"]["v1"]["state_dict"])
    with pytest.raises(ValueError, match="output2"):
        convert_state_dict({**v1, "bsrnn.mask_estim.vocals.norm_mlp.0.output2.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="periodic Hann"):
        convert_state_dict({**v1, "stft.window": torch.ones(2048)})
    v2 = dict(golden["cases"]["v2"]["state_dict"])
    with pytest.raises(ValueError, match="even seqband"):
        convert_state_dict({**v2, "tf_model.seqband.1.norm.weight": torch.zeros(8)})
    key = "mask_estim.speech.norm_mlp.0.combined.0.weight"
    with pytest.raises(ValueError, match="differs from the other copy"):
        convert_state_dict({**v2, key: v2[key] + 1})
    prefixed = {f"module.{k}": v for k, v in v1.items()}
    assert convert_state_dict(prefixed).keys() == convert_state_dict(v1).keys()


def test_model_config_maps_and_refuses_options_by_name(golden):
    v1 = golden["cases"]["v1"]["config"]
    cfg = model_config({**v1, "hop_length": 256, "pad_mode": "reflect", "cond_dim": 0}, ["vocals", "other"], 44100)
    assert (cfg["n_fft"], cfg["hop_length"], cfg["pad_mode"]) == (2048, 512, "constant")  # v1's STFT is fixed
    assert cfg["rnn_type"] == "GRU" and cfg["segment"] == 6.0 and cfg["n_bands"] == 8
    v2 = golden["cases"]["v2"]["config"]
    cfg = model_config(v2, ["speech", "music"], 48000)
    assert (cfg["n_fft"], cfg["pad_mode"], cfg["segment"], cfg["sample_rate"]) == (512, "reflect", 8.0, 48000)
    refused = [
        (v1, {"band_specs": "dnr:vox7"}, "vocal"),
        (v1, {"band_specs": "tribark"}, "tribark"),
        (v1, {"mult_add_mask": True}, "mult_add_mask"),
        (v1, {"normalize_channel_independently": True}, "normalize_channel_independently"),
        (v1, {"in_channel": 2}, "in_channel"),
        (v1, {"n_fft": 4096}, "n_fft"),
        (v1, {"rnn_type": "Mamba"}, "rnn_type"),
        (v1, {"use_mamba": True}, "use_mamba"),
        (v2, {"band_type": "mel"}, "band_type"),
        (v2, {"treat_channel_as_feature": False}, "treat_channel_as_feature"),
        (v2, {"win_length": 256}, "win_length"),
        (v2, {"window_fn": "hamming_window"}, "window_fn"),
        (v2, {"pad_mode": "circular"}, "pad_mode"),
    ]
    for base, override, message in refused:
        with pytest.raises(ValueError, match=message):
            model_config({**base, **override}, base["stems"], 44100)
    with pytest.raises(ValueError, match="2 stems but 3 source"):
        model_config(v1, ["a", "b", "c"], 44100)
    with pytest.raises(ValueError, match="cannot tell the BandIt version"):
        model_config({"n_bands": 8}, ["a"], 44100)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_import_cli_reads_both_yaml_layouts(golden, tmp_path, version):
    """``python -m mss.pretrained.import_msst model.ckpt config=... out=...`` without ``type=``: v1 YAMLs are named
    by ``name: MultiMaskMultiSourceBandSplitRNN`` (arguments under ``model:``), v2 by ``cls: Bandit`` (``kwargs:``)."""
    fixture = golden["cases"][version]
    section = {k: v for k, v in fixture["config"].items()}
    head = ({"name": "MultiMaskMultiSourceBandSplitRNN", "model": section} if version == "v1" else
            {"cls": "Bandit", "kwargs": section})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        **head, "audio": {"chunk_size": 264600, "num_channels": 2, "sample_rate": 44100},
        "training": {"instruments": list(section["stems"]), "target_instrument": None}}))
    torch.save(fixture["state_dict"], tmp_path / "model.ckpt")  # MSST saves the bare state dict
    import_main([str(tmp_path / "model.ckpt"), f"config={tmp_path / 'config.yaml'}", f"out={tmp_path / 'x.ckpt'}"])
    net = load_model(tmp_path / "x.ckpt")
    assert isinstance(net, BandIt) and net.sources == list(section["stems"])
    with torch.no_grad():
        assert (net(golden["mix"]) - fixture["out"]).abs().max() <= 1e-4


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("length", [128 * 10, 3001, 200])
def test_shapes_any_length_and_channel_count(channels, length):
    torch.manual_seed(0)
    for pad_mode in ("constant", "reflect"):
        net = BandIt(["a", "b", "c"], audio_channels=channels, pad_mode=pad_mode, **TINY)
        with torch.no_grad():
            out = net(torch.randn(2, channels, length))
        assert out.shape == (2, 3, channels, length) and torch.isfinite(out).all()


def test_channels_are_processed_independently():
    torch.manual_seed(0)
    net = BandIt(["a", "b"], **TINY).eval()
    mix = torch.randn(1, 2, 4000)
    with torch.no_grad():
        both = net(mix)
        left = BandIt(["a", "b"], audio_channels=1, **TINY).eval()
        left.load_state_dict(net.state_dict())
        assert torch.allclose(both[:, :, :1], left(mix[:, :1]), atol=1e-6)


def test_bad_input_and_impossible_configs_are_clear_errors():
    net = BandIt(["a", "b"], **TINY)
    with pytest.raises(ValueError, match="C=2"):
        net(torch.randn(1, 1, 4000))
    bad = [
        (dict(rnn_type="Mamba"), "rnn_type must be one of"),
        (dict(pad_mode="circular"), "pad_mode must be one of"),
        (dict(hop_length=512), "hop_length=512 must be <= n_fft // 2"),
        (dict(n_bands=1), "n_bands must be >= 2"),
        (dict(emb_dim=0), "emb_dim must be positive"),
        (dict(hidden_activation="Tanhh"), "hidden_activation='Tanhh' is not a torch.nn activation"),
    ]
    for override, message in bad:
        with pytest.raises(ValueError, match=message):
            BandIt(["a", "b"], **{**TINY, **override})


def test_overfitting_a_toy_batch_lowers_loss_and_raises_sdr(synth_root):
    torch.manual_seed(0)
    stems = toy_batch(synth_root, 8192, sources=["vocals", "other"], active=True)
    net = BandIt(["vocals", "other"], n_fft=512, hop_length=128, n_bands=16, emb_dim=16, rnn_dim=16,
                 n_sqm_modules=1, mlp_dim=32)
    assert_overfits(net, stems, WaveformL1(), lr=1e-2, steps=30, name="bandit")
