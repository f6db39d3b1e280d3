"""Import of lucidrains (``bs-roformer`` 0.4.1) / MSST RoFormer checkpoints: random reference weights saved in their
layout, imported through the CLI, give the reference outputs to 1e-4 max-abs; the reference's own training loss equals
mss's ``module/loss=roformer`` on the imported network; foreign files are clear errors."""

from __future__ import annotations

import pytest
import torch
import yaml

from mss import load_model
from mss.losses import MultiResolutionSTFTL1, WaveformL1
from mss.pretrained.import_roformer import main
from tests._reference import import_reference, randomise_

pytestmark = pytest.mark.usefixtures("single_thread")

STFT = dict(stft_n_fft=256, stft_hop_length=64, stft_win_length=256)
SMALL = dict(dim=32, depth=2, dim_head=16, heads=2, time_transformer_depth=1, freq_transformer_depth=1)
BANDS = [4, 4, 8, 16, 32, 65]


def randomise(net: torch.nn.Module) -> torch.nn.Module:
    """Every trainable weight random (norm gains and attention temperatures included) so that every key mapping
    matters; the frozen rotary tables stay."""
    return randomise_(net, seed=0).eval()


def write(tmp_path, name: str, state: dict, model: dict, training: dict) -> tuple[str, str]:
    ckpt, config = tmp_path / f"{name}.ckpt", tmp_path / f"{name}.yaml"
    torch.save(state, ckpt)
    config.write_text(yaml.safe_dump({"audio": {"chunk_size": 8192, "sample_rate": 44100}, "model": model,
                                      "training": training}))
    return str(ckpt), str(config)


def imported(tmp_path, ckpt: str, config: str, *extra: str):
    out = tmp_path / (ckpt.rsplit("/", 1)[-1] + ".mss.ckpt")
    main([ckpt, f"config={config}", f"out={out}", *extra])
    return load_model(out)


def max_abs(ref: torch.nn.Module, net: torch.nn.Module, mix: torch.Tensor) -> float:
    with torch.no_grad():
        expected, got = ref(mix), net(mix)
    if expected.dim() == 3:  # the reference drops the stem axis for one stem
        expected = expected.unsqueeze(1)
    assert got.shape == expected.shape
    return (got - expected).abs().max().item()


def test_bs_roformer_import_matches_the_reference(tmp_path):
    bsr = import_reference("bs_roformer")
    ref = randomise(bsr.BSRoformer(stereo=True, num_stems=2, freqs_per_bands=tuple(BANDS), flash_attn=False,
                                   **SMALL, **STFT))
    model = {**SMALL, **STFT, "stereo": True, "num_stems": 2, "freqs_per_bands": BANDS, "zero_dc": False}
    ckpt, config = write(tmp_path, "bs", {"state_dict": ref.state_dict()}, model,
                         {"instruments": ["vocals", "other"], "target_instrument": None})
    net = imported(tmp_path, ckpt, config)
    assert net.sources == ["vocals", "other"] and net.hop_length == 64 and net.segment_length == 8192
    mix = torch.randn(2, 2, 64 * 120)  # a multiple of the hop: the reference's iSTFT keeps the length
    assert max_abs(ref, net, mix) <= 1e-4


def test_mel_roformer_import_with_linear_attention_matches_the_reference(tmp_path):
    bsr = import_reference("bs_roformer")
    ref = randomise(bsr.MelBandRoformer(stereo=False, num_stems=1, num_bands=8, linear_transformer_depth=1,
                                        mask_estimator_depth=2, flash_attn=False, match_input_audio_length=True,
                                        **SMALL, **STFT))
    model = {**SMALL, **STFT, "num_bands": 8, "sample_rate": 44100, "mask_estimator_depth": 2}
    ckpt, config = write(tmp_path, "mel", ref.state_dict(), model,
                         {"instruments": ["vocals", "other"], "target_instrument": "vocals"})
    net = imported(tmp_path, ckpt, config)
    assert net.sources == ["vocals"] and net.audio_channels == 1 and len(net.mask_heads[0].bands[0].layers) == 3
    mix = torch.randn(2, 1, 5000)
    assert max_abs(ref, net, mix) <= 1e-4

    # the reference training loss (waveform L1 + multi-resolution complex STFT L1) is mss's module/loss=roformer
    target = torch.randn(2, 1, 5000)
    with torch.no_grad():
        expected = ref(mix, target=target)
        est = net(mix)
        mrstft = MultiResolutionSTFTL1(min_n_fft=256)  # lucidrains: FFT size max(window, the model's n_fft)
        got = WaveformL1()(est, target[:, None]) + mrstft(est, target[:, None])
    assert torch.allclose(got.squeeze(), expected, rtol=1e-4)


def test_msst_mel_layout_without_linear_attention(tmp_path):
    """lucidrains keeps an empty slot 0 for the absent linear Transformer (time = 1, band = 2); MSST drops it
    (time = 0, band = 1). Both layouts import to the same network."""
    bsr = import_reference("bs_roformer")
    ref = randomise(bsr.MelBandRoformer(stereo=True, num_stems=1, num_bands=8, linear_transformer_depth=0,
                                        flash_attn=False, match_input_audio_length=True, **SMALL, **STFT))
    model = {**SMALL, **STFT, "stereo": True, "num_bands": 8, "linear_transformer_depth": 0}
    lucid = ref.state_dict()
    msst = {(k[:9] + str(int(k[9]) - 1) + k[10:] if k.startswith("layers.") else k): v for k, v in lucid.items()}
    assert any(k.startswith("layers.0.0.") for k in msst) and not any(k.startswith("layers.0.0.") for k in lucid)
    mix = torch.randn(1, 2, 4000)
    training = {"instruments": ["vocals", "other"], "target_instrument": "vocals"}
    for name, state in (("lucidrains", lucid), ("msst", msst)):
        net = imported(tmp_path, *write(tmp_path, name, state, model, training))
        assert max_abs(ref, net, mix) <= 1e-4


def test_import_errors_name_the_problem(tmp_path):
    torch.save({"fc1.weight": torch.zeros(2, 2)}, tmp_path / "umx.pth")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": {"dim": 8}}))
    with pytest.raises(ValueError, match="band_split.to_features"):
        main([str(tmp_path / "umx.pth"), f"config={tmp_path / 'c.yaml'}", f"out={tmp_path / 'o.ckpt'}"])
    with pytest.raises(SystemExit, match="usage"):
        main([str(tmp_path / "umx.pth")])

    bsr = import_reference("bs_roformer")
    ref = bsr.BSRoformer(freqs_per_bands=tuple(BANDS), **SMALL, **STFT)
    ckpt, config = write(tmp_path, "bs", ref.state_dict(), {**SMALL, **STFT, "num_residual_streams": 4},
                         {"instruments": ["vocals"]})
    with pytest.raises(ValueError, match="num_residual_streams"):
        main([ckpt, f"config={config}", f"out={tmp_path / 'o.ckpt'}"])
    (tmp_path / "bad.yaml").write_text("audio: {}\n")
    with pytest.raises(ValueError, match="'model:' section"):
        main([ckpt, f"config={tmp_path / 'bad.yaml'}", f"out={tmp_path / 'o.ckpt'}"])
    ckpt, config = write(tmp_path, "bs2", ref.state_dict(), {**SMALL, **STFT, "freqs_per_bands": [1, 2]},
                         {"instruments": ["vocals"]})
    with pytest.raises(ValueError, match="sum to n_fft // 2"):
        main([ckpt, f"config={config}", f"out={tmp_path / 'o.ckpt'}"])
