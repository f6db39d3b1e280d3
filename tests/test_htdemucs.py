"""Hybrid Demucs (v3) and Hybrid Transformer Demucs (v4): exact parameter counts, the model contract for any source /
channel count, the training-segment rule, and a small HT Demucs that overfits a toy batch."""

from __future__ import annotations

import pytest
import torch

from mss.checkpoint import build_model
from mss.losses import WaveformL1
from mss.models.hdemucs import HDemucs
from mss.models.htdemucs import HTDemucs
from mss.run import compose
from tests._overfit import assert_overfits, toy_batch

SOURCES4 = ["drums", "bass", "other", "vocals"]
SOURCES6 = SOURCES4 + ["guitar", "piano"]
# small dims with every structural feature: HT (3 freq layers, transformer 32 wide); HD (freq axis collapsed at layer 3,
# time branch injected there, shared time layer 4 with BiLSTM + local attention)
TINY_HT = dict(channels=8, nfft=512, depth=3, dconv_comp=4, t_layers=2, segment=0.5)
TINY_HD = dict(channels=8, nfft=1024, depth=5)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name, expected, segment_length", [("htdemucs", 26_899_536, None),
                                                            ("htdemucs_released", 41_984_456, 343_980),
                                                            ("hdemucs", 83_637_832, 40 * 44100),
                                                            ("htdemucs_sparse", 54_604_232, round(12.2 * 44100))])
def test_parameter_counts_of_the_configs(name, expected, segment_length):
    cfg = compose("train", [f"model={name}", "paths.output_dir=unused"])
    net = build_model(cfg.model)
    assert n_params(net) == expected
    assert net.segment_length == (segment_length or round(cfg.data.segment * 44100))  # released: 39/5 s


def test_htdemucs_class_defaults_are_the_paper_model():
    assert n_params(HTDemucs(SOURCES4)) == 26_899_536


CASES = [(HTDemucs, TINY_HT, s, c) for s in (SOURCES4[:2], SOURCES4, SOURCES6) for c in (1, 2)]
CASES += [(HDemucs, TINY_HD, SOURCES4[:2], 1), (HDemucs, TINY_HD, SOURCES6, 2)]


@pytest.mark.parametrize("klass, kwargs, sources, channels", CASES,
                         ids=[f"{k.__name__}-{len(s)}src-{c}ch" for k, _, s, c in CASES])
def test_shapes_for_any_sources_and_channels(klass, kwargs, sources, channels):
    torch.manual_seed(0)
    net = klass(sources, audio_channels=channels, **kwargs).eval()
    assert net.sources == sources and net.audio_channels == channels and net.sample_rate == 44100
    for length in (22050, 12_345):  # the segment, and a shorter odd length
        with torch.no_grad():
            out = net(torch.randn(2, channels, length))
        assert out.shape == (2, len(sources), channels, length)
        assert torch.isfinite(out).all()


def test_segment_is_enforced_and_shorter_inputs_are_padded():
    torch.manual_seed(0)
    net = HTDemucs(SOURCES4, **TINY_HT).eval()
    assert net.segment_length == 22050
    with pytest.raises(ValueError, match="longer than the training segment of 22050"):
        net(torch.randn(1, 2, 22051))
    mix = torch.randn(1, 2, 15_000)
    with torch.no_grad():
        short = net(mix)
        padded = net(torch.nn.functional.pad(mix, (0, 7050)))[..., :15_000]
    torch.testing.assert_close(short, padded)
    free = HTDemucs(SOURCES4, use_train_segment=False, **TINY_HT).eval()
    with torch.no_grad():
        assert free(torch.randn(1, 2, 30_000)).shape[-1] == 30_000


def test_hdemucs_spectrogram_only_and_masking_variants():
    torch.manual_seed(0)
    mix = torch.randn(1, 2, 12_000)
    for kwargs in (dict(hybrid=False), dict(cac=False, wiener_iters=1, end_iters=1), dict(cac=False, wiener_iters=-1,
                                                                                        end_iters=-1)):
        net = HDemucs(SOURCES4, **TINY_HD, **kwargs).eval()
        assert not hasattr(net, "tencoder") or net.hybrid
        with torch.no_grad():
            assert net(mix).shape == (1, 4, 2, 12_000)


def test_tiny_htdemucs_overfits_a_toy_batch(synth_root):
    stems = toy_batch(synth_root, 16384)
    net = HTDemucs(SOURCES4, **{**TINY_HT, "segment": 16384 / 44100})
    assert_overfits(net, stems, WaveformL1(), lr=1e-2, steps=30, name="htdemucs")


def test_training_works_after_inference_mode():
    """The cached STFT window made under ``torch.inference_mode`` (validation) must not break a later backward."""
    torch.manual_seed(0)
    net = HTDemucs(SOURCES4[:2], **TINY_HT)
    mix = torch.randn(1, 2, 8820)
    with torch.inference_mode():
        net.eval()(mix)
    net.train()
    net(mix).abs().mean().backward()
    assert all(p.grad is not None for p in net.crosstransformer.parameters())
