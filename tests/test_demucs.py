"""Waveform Demucs (2019 paper / v2 release, v3 time-only) and the shared Demucs blocks: exact parameter counts of the
configs, shape contract for any sources / channels / length, parity with the reference package (demucs 4.0.1)
for the v3 model and the blocks, the v2 checkpoint layout, and an overfitting run through the training module."""

from __future__ import annotations

import copy

import pytest
import torch

from mss.checkpoint import build_model
from mss.losses import WaveformL1
from mss.models.blocks import BLSTM, DConv, LocalState, center_trim, rescale_module
from mss.models.demucs import Demucs, DemucsV2
from mss.run import compose
from tests._overfit import assert_overfits, toy_batch
from tests._reference import import_reference, randomise_

SOURCES4 = ["drums", "bass", "other", "vocals"]


pytestmark = pytest.mark.usefixtures("single_thread")  # small tensors: one thread is fastest


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("name", "count"), [("demucs", 149_462_504), ("demucs_v2", 265_679_496),
                                             ("demucs_v3", 133_753_064)])
def test_config_parameter_counts_are_exact(name, count):
    cfg = compose("train", [f"model={name}", "paths.output_dir=unused"])
    assert list(cfg.data.sources) == SOURCES4 and cfg.data.channels == 2
    with torch.device("meta"):  # full size, without allocating or initialising the weights
        net = build_model(cfg.model)
    assert n_params(net) == count


@pytest.mark.parametrize("cls", [DemucsV2, Demucs])
@pytest.mark.parametrize(("n_sources", "channels", "length"), [(2, 1, 9_999), (4, 2, 12_345), (6, 2, 7_001)])
def test_any_sources_channels_and_length(cls, n_sources, channels, length):
    sources = [f"s{i}" for i in range(n_sources)]
    net = cls(sources, audio_channels=channels, channels=4, depth=4).eval()
    with torch.no_grad():
        out = net(torch.randn(2, channels, length))
    assert out.shape == (2, n_sources, channels, length)
    assert torch.isfinite(out).all()
    assert net.sources == sources and net.audio_channels == channels and net.sample_rate == 44100
    assert net.segment_length > 0 and net.valid_length(length) >= length


def test_valid_length_matches_the_reference_figures():
    with torch.device("meta"):
        v2, v3 = DemucsV2(SOURCES4), Demucs(SOURCES4)
    assert v2.valid_length(441_000) == 447_146  # 10 s training excerpts of the v2 release
    assert v3.valid_length(441_000) == 441_002
    assert v3.valid_length(1) == 4_778
    assert v3.segment_length == 40 * 44_100 and v2.segment_length == 4 * 10 * 44_100


def test_wrong_input_shape_is_a_clear_error():
    net = DemucsV2(SOURCES4, channels=4, depth=2)
    with pytest.raises(ValueError, match=r"\(B, C=2, T\)"):
        net(torch.randn(1, 1, 1000))
    with pytest.raises(ValueError, match="divisible by heads"):
        LocalState(10, heads=4)


def test_v2_state_dict_layout():
    """Key names and shapes of the released v2 ``demucs.model.Demucs`` state dicts (C1=64, depth 6)."""
    with torch.device("meta"):
        net = DemucsV2(SOURCES4)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["encoder.0.0.weight"] == (64, 2, 8) and shapes["encoder.0.2.weight"] == (128, 64, 1)
    assert shapes["encoder.5.0.weight"] == (2048, 1024, 8) and shapes["encoder.5.2.weight"] == (4096, 2048, 1)
    assert shapes["decoder.0.0.weight"] == (4096, 2048, 3) and shapes["decoder.0.2.weight"] == (2048, 1024, 8)
    assert shapes["decoder.5.2.weight"] == (64, 8, 8) and shapes["decoder.5.2.bias"] == (8,)
    assert shapes["lstm.lstm.weight_ih_l1"] == (8192, 4096) and shapes["lstm.lstm.weight_hh_l1_reverse"] == (8192, 2048)
    assert shapes["lstm.linear.weight"] == (2048, 4096)
    assert len(shapes) == 6 * 4 * 2 + 2 * 2 * 4 + 2


@pytest.mark.parametrize("kwargs", [dict(channels=8, depth=5),
                                    dict(channels=4, depth=5, dconv_mode=3, lstm_layers=1, context=2,
                                         normalize=False, resample=False, norm_starts=2)])
def test_v3_matches_the_reference(kwargs):
    ref = import_reference("demucs.demucs")
    torch.manual_seed(0)
    reference = ref.Demucs(SOURCES4, **kwargs)
    randomise_(reference)
    ours = Demucs(SOURCES4, **kwargs)
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict())
    reference.eval(), ours.eval()
    mix = torch.randn(2, 2, 30_011)
    with torch.no_grad():
        err = (ours(mix) - reference(mix)).abs().max().item()
    assert err <= 1e-4, err


@pytest.mark.slow
def test_v3_class_defaults_match_the_reference():
    ref = import_reference("demucs.demucs")
    torch.manual_seed(0)
    reference = randomise_(ref.Demucs(SOURCES4)).eval()
    ours = Demucs(SOURCES4).eval()
    ours.load_state_dict(reference.state_dict())
    mix = torch.randn(1, 2, 44_100)
    with torch.no_grad():
        err = (ours(mix) - reference(mix)).abs().max().item()
    assert err <= 1e-4, err


def test_v3_loads_the_legacy_key_layout():
    net = Demucs(SOURCES4, channels=4, depth=3, dconv_mode=0).eval()
    legacy = {k.replace(".3.", ".2.") if k.endswith((".3.weight", ".3.bias")) else k: v
              for k, v in net.state_dict().items()}
    assert "encoder.0.2.weight" in legacy and "decoder.0.2.weight" in legacy
    other = Demucs(SOURCES4, channels=4, depth=3, dconv_mode=0).eval()
    other.load_state_dict(legacy)
    mix = torch.randn(1, 2, 5000)
    with torch.no_grad():
        torch.testing.assert_close(other(mix), net(mix))


@pytest.mark.parametrize("kwargs", [dict(), dict(lstm=True, attn=True), dict(norm=False, gelu=False, depth=-2),
                                    dict(compress=8, depth=3, init=1e-3, lstm=True)])
def test_dconv_matches_the_reference(kwargs):
    ref = import_reference("demucs.demucs")
    torch.manual_seed(1)
    reference = ref.DConv(32, **kwargs)
    randomise_(reference)
    ours = DConv(32, **kwargs)
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict())
    for length in (1, 37, 450):  # 450 > 200: chunked BiLSTM
        x = torch.randn(2, 32, length)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["LocalState", "BLSTM"])
def test_local_state_and_blstm_match_the_reference(name):
    ref = import_reference("demucs.demucs")
    torch.manual_seed(2)
    if name == "LocalState":  # including the periodic-kernel variant (nfreqs)
        reference, ours, channels = ref.LocalState(16, 4, 3, 2), LocalState(16, 4, 3, 2), 16
    else:  # 101 steps in chunks of 40
        reference, ours, channels = ref.BLSTM(8, 2, 40, True), BLSTM(8, 2, 40, True), 8
    randomise_(reference)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(3, channels, 101)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=1e-5)


def test_dconv_under_bf16_autocast_stays_close():
    torch.manual_seed(4)
    block = DConv(32, lstm=True, attn=True, init=0.5).eval()
    x = torch.randn(1, 32, 700)
    with torch.no_grad():
        full = block(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = block(x)
    assert torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.05 * full.abs().max()


def test_rescale_and_center_trim_follow_the_reference():
    ref = import_reference("demucs.demucs")
    torch.manual_seed(3)
    a = torch.nn.Sequential(torch.nn.Conv1d(3, 5, 4), torch.nn.ConvTranspose1d(5, 2, 8, 4), torch.nn.Linear(2, 2))
    b = copy.deepcopy(a)
    rescale_module(a, 0.1)
    ref.rescale_module(b, reference=0.1)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    x = torch.arange(10.0)
    assert center_trim(x, 7).tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    with pytest.raises(ValueError, match="longer"):
        center_trim(x, 11)


def test_overfitting_model_demucs_lowers_loss_and_raises_sdr(synth_root):
    stems = toy_batch(synth_root, 4096, active=True)
    cfg = compose("train", ["model=demucs", "model.channels=4", "model.depth=3", "paths.output_dir=unused"])
    assert_overfits(build_model(cfg.model), stems, WaveformL1(), lr=3e-3, steps=30, name="demucs")
