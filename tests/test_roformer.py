"""BS-RoFormer and Mel-Band RoFormer: exact parameter counts of the named configs, band tables, shapes for any stem
and channel count, float32 STFT under autocast, the multi-resolution STFT loss, and overfitting a toy batch."""

from __future__ import annotations

import pytest
import torch

from mss.checkpoint import build_model
from mss.losses import CombinedLoss, MultiResolutionSTFTL1, WaveformL1
from mss.models.bs_roformer import PAPER_BANDS, BSRoformer, contiguous_bands
from mss.models.mel_roformer import MelRoformer, mel_bands
from mss.run import compose
from tests._overfit import SOURCES, assert_overfits, toy_batch

pytestmark = pytest.mark.usefixtures("single_thread")

COUNTS = {  # stereo, one stem (the counts are per stem: one mask head each)
    "bs_roformer": 72_160_188,
    "bs_roformer_l12": 93_426_108,
    "mel_roformer": 84_193_620,
    "bs_roformer_msst_small": 24_591_340,
    "mel_roformer_msst": 69_102_468,
}
TINY = dict(dim=16, depth=1, heads=2, head_dim=8, n_fft=256, hop_length=64, segment_length=8192)
TINY_BANDS = [4, 4, 8, 16, 32, 65]


def tiny(kind: str, sources, channels: int = 2, **kw):
    if kind == "bs":
        return BSRoformer(sources, freqs_per_bands=TINY_BANDS, audio_channels=channels, **{**TINY, **kw})
    return MelRoformer(sources, num_bands=8, audio_channels=channels, **{**TINY, **kw})


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_counts_through_configs(name):
    cfg = compose("train", [f"model={name}", "data.sources=[vocals]", "paths.output_dir=unused"])
    with torch.device("meta"):  # sizes only, no memory
        net = build_model(cfg.model)
    assert sum(p.numel() for p in net.parameters()) == COUNTS[name]
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    assert frozen == net.time_rope.freqs.numel() * 2  # the two RoPE tables


def test_bs_band_table_covers_every_bin_once():
    bands = contiguous_bands(PAPER_BANDS, 2048)
    assert len(bands) == 62
    assert [b for band in bands for b in band] == list(range(1025))
    assert [len(b) for b in bands[:24]] == [2] * 24 and [len(b) for b in bands[-2:]] == [128, 129]
    assert bands[60][0] == 768 and bands[61][0] == 896
    with pytest.raises(ValueError, match="sum to n_fft // 2 \\+ 1 = 513"):
        contiguous_bands(PAPER_BANDS, 1024)


def test_mel_bands_cover_every_bin_with_the_right_multiplicity():
    bands = mel_bands(60, 44100, 2048)
    sizes = [len(b) for b in bands]
    assert sizes == [7] + [6] * 14 + [7, 7, 7, 9, 9, 9, 10, 10, 11, 13, 13, 13, 15, 16, 17, 19, 20, 20, 22, 24, 26,
                                      28, 29, 31, 33, 36, 39, 41, 44, 47, 50, 54, 57, 61, 66, 71, 76, 80, 86, 93, 99,
                                      105, 113, 122, 130]
    assert all(b == list(range(b[0], b[-1] + 1)) for b in bands)  # contiguous
    assert bands[0] == list(range(7)) and bands[-1] == list(range(895, 1025))
    counts = torch.bincount(torch.tensor([i for b in bands for i in b]), minlength=1025)
    assert counts.sum() == 1979 and counts.min() == 1 and counts.max() == 2
    single = torch.nonzero(counts == 1).flatten().tolist()
    assert single == list(range(4)) + list(range(958, 1025))  # 71 bins in one band, 954 in two
    with pytest.raises(ValueError, match="contain no STFT bin"):
        mel_bands(60, 44100, 256)


def test_mel_bands_match_librosa_membership():
    librosa = pytest.importorskip("librosa")
    fb = librosa.filters.mel(sr=44100, n_fft=2048, n_mels=60)
    fb[0, 0] = fb[-1, -1] = 1.0
    assert mel_bands(60, 44100, 2048) == [(row > 0).nonzero()[0].tolist() for row in fb]


@pytest.mark.parametrize("kind", ["bs", "mel"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("stems", [1, 2, 4])
def test_shapes_for_any_stems_and_channels(kind, channels, stems):
    torch.manual_seed(0)
    net = tiny(kind, [f"s{i}" for i in range(stems)], channels).eval()
    mix = torch.randn(2, channels, 3001)  # not a multiple of the hop
    with torch.no_grad():
        out = net(mix)
    assert out.shape == (2, stems, channels, 3001) and torch.isfinite(out).all()


def test_bad_inputs_are_clear_errors():
    net = tiny("bs", ["vocals"], 2)
    with pytest.raises(ValueError, match=r"\(B, C, T\) with C=2"):
        net(torch.randn(1, 1, 1000))
    with pytest.raises(ValueError, match="sum to"):
        BSRoformer(["vocals"], freqs_per_bands=[4, 4], **TINY)
    with pytest.raises(ValueError, match="distinct"):
        tiny("mel", ["a", "a"])


def test_stft_runs_in_float32_under_autocast_and_zero_dc_removes_the_dc_bin():
    torch.manual_seed(0)
    net = tiny("mel", ["vocals", "other"], 2).eval()
    mix = torch.randn(1, 2, 4000)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(mix)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    with torch.no_grad():
        plain = net(mix)
        net.zero_dc = True
        diff = net(mix) - plain  # = minus the iSTFT of the DC bin alone: a slow, near-constant signal
    spec = torch.stft(diff[0, 0, 0], 256, 64, window=torch.hann_window(256), return_complex=True).abs().square()
    assert diff.abs().max() > 0 and spec[:3].sum() > 0.95 * spec.sum()


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = tiny("bs", ["a", "b"], 2, attn_dropout=0.0, ff_dropout=0.0)
    ckpt = tiny("bs", ["a", "b"], 2, attn_dropout=0.0, ff_dropout=0.0, gradient_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    mix = torch.randn(1, 2, 3000)
    for net in (plain, ckpt):
        net(mix).square().mean().backward()
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad)


def test_multires_stft_loss_contract():
    est, ref = torch.randn(2, 3, 2, 8000), torch.randn(2, 3, 2, 8000)
    loss = MultiResolutionSTFTL1()
    value = loss(est, ref)
    assert value.shape == (3,) and (value > 0).all()
    assert torch.allclose(loss(ref, ref), torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(B, S, C, T\)"):
        loss(est[0], ref[0])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bs", "mel"])
def test_overfitting_a_toy_batch_lowers_loss_and_raises_sdr(kind, synth_root):
    stems = toy_batch(synth_root, 16384)
    net = tiny(kind, SOURCES, 2, dim=32, attn_dropout=0.0, ff_dropout=0.0)
    loss_fn = CombinedLoss({"wave": WaveformL1(), "mrstft": MultiResolutionSTFTL1(windows=(1024, 512, 256),
                                                                                  min_n_fft=256)})
    assert_overfits(net, stems, loss_fn, lr=2e-3, steps=40, name=kind)
