"""TFC-TDF U-Nets (MDX23C = v3, KUIELab-MDX-Net = v2): exact parameter counts through Hydra, parity with golden
outputs of the reference code (MSST ccc011ab ``mdx23c_tfc_tdf_v3.py``; kuielab/mdx-net Leaderboard_A 1537f1dd) at
tiny sizes with random weights, the MSST ``mdx23c`` conversion, any input length / channel count, clear errors, and
overfitting a toy batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from mss.checkpoint import build_model
from mss.losses import WaveformL1
from mss.models.tfc_tdf import MDX23C, MDXNetV2, valid_length
from mss.pretrained.msst_mdx23c import convert_state_dict, model_config
from mss.run import compose
from tests._overfit import SOURCES, assert_overfits, toy_batch

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = Path(__file__).parent / "data"
MSST_MUSDB = {  # MSST configs/config_musdb18_mdx23c.yaml (audio + model sections)
    "audio": {"chunk_size": 261120, "dim_f": 4096, "dim_t": 256, "hop_length": 1024, "n_fft": 8192,
              "num_channels": 2, "sample_rate": 44100, "min_mean_abs": 0.001},
    "model": {"act": "gelu", "bottleneck_factor": 4, "growth": 128, "norm": "InstanceNorm",
              "num_blocks_per_scale": 2, "num_channels": 128, "num_scales": 5, "num_subbands": 4, "scale": [2, 2]},
    "training": {"instruments": ["vocals", "bass", "drums", "other"], "target_instrument": None},
}
TINY_V3 = dict(n_fft=256, hop_length=64, dim_f=128, num_subbands=2, num_scales=2, num_blocks_per_scale=1,
               num_channels=8, growth=4, bottleneck_factor=2)
TINY_V2 = dict(n_fft=256, hop_length=64, dim_f=64, dim_t=16, num_blocks=5, layers=2, growth=4, bottleneck=4)


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(("sources", "expected"), [("[vocals,bass,drums,other]", 111_994_368),
                                                   ("[vocals,other]", 111_990_272), ("[vocals]", 111_988_224)])
def test_mdx23c_parameter_count(sources, expected):
    cfg = compose("train", ["model=mdx23c", f"data.sources={sources}", "paths.output_dir=unused"])
    with torch.device("meta"):
        net = build_model(cfg.model)
    assert count(net) == expected and len(net.state_dict()) == 319  # no buffers (InstanceNorm keeps no stats)
    assert net.segment_length == 261_120 and valid_length(261_120, 1024, 32) == 261_120


@pytest.mark.parametrize(("sources", "expected"), [("[vocals]", 7_423_236), ("[drums,bass,other,vocals]",
                                                                              4 * 7_423_236)])
def test_tfc_tdf_v2_parameter_count_per_source(sources, expected):
    cfg = compose("train", ["model=tfc_tdf_v2", f"data.sources={sources}", "paths.output_dir=unused"])
    with torch.device("meta"):
        net = build_model(cfg.model)
    assert count(net) == sum(p.numel() for p in net.parameters() if p.requires_grad) == expected
    assert net.n_fft == {s: {"vocals": 6144, "drums": 4096, "bass": 16384, "other": 8192}[s] for s in net.sources}
    assert net.segment_length == 1024 * 255
    # 444 reference entries minus the frozen window / freq_pad Parameters, per source
    assert len(net.state_dict()) == 442 * len(net.sources)


def test_msst_config_of_the_musdb_checkpoint_builds_the_canonical_model():
    cfg = model_config(MSST_MUSDB, ["vocals", "bass", "drums", "other"], 44100)
    with torch.device("meta"):
        net = build_model(cfg)
    assert isinstance(net, MDX23C) and count(net) == 111_994_368 and net.segment_length == 261_120
    shipped = compose("train", ["model=mdx23c", "data.sources=[vocals,bass,drums,other]", "paths.output_dir=unused"])
    assert cfg == OmegaConf.to_container(shipped.model, resolve=True)  # conf/model/mdx23c.yaml is that checkpoint


def _golden_v3(wrap):
    golden = torch.load(DATA / "mdx23c_golden.pt", weights_only=True)
    cfg = model_config(golden["msst_config"], golden["msst_config"]["training"]["instruments"], 44100)
    net = build_model(cfg).eval()
    net.load_state_dict(convert_state_dict(wrap(golden["state_dict"])), strict=True)
    with torch.no_grad():
        out = net(golden["mix"])
    return out, golden["output"]


@pytest.mark.parametrize("wrap", [lambda s: s, lambda s: {"model_state_dict": {f"module.{k}": v for k, v in s.items()}},
                                  lambda s: {"state_dict": s}], ids=["bare", "model_state_dict+module.", "state_dict"])
def test_mdx23c_matches_the_msst_reference_output(wrap):
    out, ref = _golden_v3(wrap)
    assert out.shape == ref.shape == (1, 4, 2, 960)
    assert ref.abs().max() > 0.1 and (out - ref).abs().max() <= 1e-4


def test_mdx23c_golden_detects_a_wrong_model():
    golden = torch.load(DATA / "mdx23c_golden.pt", weights_only=True)
    cfg = model_config(golden["msst_config"], ["vocals", "bass", "drums", "other"], 44100)
    net = build_model(cfg).eval()
    state = convert_state_dict(golden["state_dict"])
    key = "encoder_blocks.1.tfc_tdf.blocks.0.tdf.0.weight"  # one norm gain of the deepest encoder scale
    state[key] = state[key] * 0.9
    net.load_state_dict(state)
    with torch.no_grad():
        assert (net(golden["mix"]) - golden["output"]).abs().max() > 4e-4  # 10 % off: well above the tolerance


def test_tfc_tdf_v2_matches_the_kuielab_reference_output():
    golden = torch.load(DATA / "tfc_tdf_v2_golden.pt", weights_only=True)
    ref_cfg = golden["config"]
    net = MDXNetV2(["vocals"], n_fft=ref_cfg["n_fft"], hop_length=ref_cfg["hop_length"], dim_f=ref_cfg["dim_f"],
                   dim_t=ref_cfg["dim_t"], num_blocks=ref_cfg["num_blocks"], layers=ref_cfg["l"],
                   growth=ref_cfg["g"], kernel=ref_cfg["k"], bottleneck=ref_cfg["bn"], bias=ref_cfg["bias"]).eval()
    state = golden["state_dict"]
    assert state["window"].shape == (256,) and state["freq_pad"].shape == (1, 4, 129 - 64, 1)  # frozen tables
    net.load_state_dict({f"targets.vocals.{k}": v for k, v in state.items() if k not in ("window", "freq_pad")},
                        strict=True)
    with torch.no_grad():
        out = net(golden["mix"])[:, 0]
    ref = golden["output"]
    err = (out - ref).abs().max()
    assert out.shape == ref.shape == (1, 2, 960)
    assert err <= 1e-4 and err <= 1e-4 * ref.abs().max()  # the output is small (multiplicative skips): relative too
    net.targets["vocals"].ds[0][1].running_mean += 0.05  # a wrong batch-norm statistic shows
    with torch.no_grad():
        assert (net(golden["mix"])[:, 0] - ref).abs().max() > 1e-2 * ref.abs().max()


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("kind", ["v3", "v2"])
def test_any_length_channels_and_sources(kind, channels):
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    net = (MDX23C(names, audio_channels=channels, **TINY_V3) if kind == "v3" else
           MDXNetV2(names, audio_channels=channels, **{**TINY_V2, "n_fft": {"a": 256, "b": 512, "c": 256}}))
    for length in (959, 960, 5001):  # 960 = 64 * 15: 16 frames, no padding
        mix = torch.randn(2, channels, length)
        out = net(mix)
        assert out.shape == (2, 3, channels, length) and torch.isfinite(out).all()
    out.abs().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match=f"C={channels}"):
        net(torch.randn(1, channels + 1, 960))


@pytest.mark.parametrize("kind", ["v3", "v2"])
def test_bf16_autocast_keeps_the_stft_in_float32(kind):
    torch.manual_seed(0)
    net = MDX23C(["a", "b"], **TINY_V3) if kind == "v3" else MDXNetV2(["a", "b"], **TINY_V2)
    mix = torch.randn(1, 2, 960)
    with torch.no_grad():
        full = net(mix)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = net(mix)
    assert half.dtype == torch.float32 and (half - full).abs().max() < 0.1 * full.abs().max()


def test_padding_keeps_the_valid_chunk_and_the_sources_are_independent():
    torch.manual_seed(0)
    net = MDXNetV2(["vocals", "bass"], **{**TINY_V2, "n_fft": {"vocals": 256, "bass": 512}}).eval()
    single = MDXNetV2(["bass"], **{**TINY_V2, "n_fft": 512}).eval()
    single.targets["bass"].load_state_dict(net.targets["bass"].state_dict())
    mix = torch.randn(1, 2, 960)
    with torch.no_grad():
        assert torch.allclose(net(mix)[:, 1], single(mix)[:, 0], atol=1e-6)
    assert valid_length(961, 64, 16) == 64 * 31 and valid_length(1, 64, 16) == 960


def test_bad_configurations_are_named():
    with pytest.raises(ValueError, match="dim_f=100 must be divisible"):
        MDX23C(["a"], **{**TINY_V3, "dim_f": 100})
    with pytest.raises(ValueError, match="norm='LayerNorm'"):
        MDX23C(["a"], **{**TINY_V3, "norm": "LayerNorm"})
    with pytest.raises(ValueError, match="act='tanh'"):
        MDX23C(["a"], **{**TINY_V3, "act": "tanh"})
    with pytest.raises(ValueError, match="dim_f=4096 must lie"):
        MDX23C(["a"], n_fft=4096)
    with pytest.raises(ValueError, match=r"no FFT size for source\(s\) \['piano'\]"):
        MDXNetV2(["vocals", "piano"], n_fft={"vocals": 6144})
    with pytest.raises(ValueError, match="dim_f=2048 exceeds the 2047 bins of n_fft=4092"):
        MDXNetV2(["vocals"], n_fft=4092)
    with pytest.raises(ValueError, match="divisible by 2 \\*\\* \\(num_blocks // 2\\) = 32"):
        MDXNetV2(["vocals"], dim_f=2000)


def test_msst_options_mss_lacks_are_refused_by_name():
    with pytest.raises(ValueError, match="model.use_mask"):
        model_config({**MSST_MUSDB, "model": {**MSST_MUSDB["model"], "use_mask": True}}, SOURCES, 44100)
    with pytest.raises(ValueError, match="audio.stft_normalized"):
        model_config({**MSST_MUSDB, "audio": {**MSST_MUSDB["audio"], "stft_normalized": True}}, SOURCES, 44100)
    with pytest.raises(ValueError, match="model.norm='LayerNorm'"):
        model_config({**MSST_MUSDB, "model": {**MSST_MUSDB["model"], "norm": "LayerNorm"}}, SOURCES, 44100)
    with pytest.raises(ValueError, match="model.act='tanh'"):
        model_config({**MSST_MUSDB, "model": {**MSST_MUSDB["model"], "act": "tanh"}}, SOURCES, 44100)
    with pytest.raises(ValueError, match="1 target"):
        model_config({**MSST_MUSDB, "training": {"instruments": SOURCES, "target_instrument": "vocals"}},
                     SOURCES, 44100)
    cfg = model_config({**MSST_MUSDB, "training": {"instruments": SOURCES, "target_instrument": "vocals"}},
                       ["vocals"], 48000)
    assert cfg["sources"] == ["vocals"] and cfg["sample_rate"] == 48000
    with pytest.raises(ValueError, match="lacks model.growth"):
        model_config({**MSST_MUSDB, "model": {k: v for k, v in MSST_MUSDB["model"].items() if k != "growth"}},
                     SOURCES, 44100)
    with pytest.raises(ValueError, match="not an MSST mdx23c state dict"):
        convert_state_dict({"band_split.to_features.0.0.gamma": torch.ones(2)})
    with pytest.raises(ValueError, match="unexpected key"):
        convert_state_dict({"first_conv.weight": torch.ones(1), "encoder_blocks.0.x": torch.ones(1),
                            "stft.window": torch.ones(1)})


def test_mdx23c_overfits_a_toy_batch(synth_root):
    torch.manual_seed(0)
    stems = toy_batch(synth_root, 128 * 63)  # 64 frames of hop 128
    net = MDX23C(SOURCES, n_fft=512, hop_length=128, dim_f=256, num_subbands=2, num_scales=2, num_blocks_per_scale=1,
                 num_channels=8, growth=8, bottleneck_factor=4)
    assert_overfits(net, stems, WaveformL1(), lr=3e-3, steps=40, name="mdx23c")


@pytest.mark.slow  # four networks: ~20 s on a loaded core
def test_tfc_tdf_v2_overfits_a_toy_batch(synth_root):
    torch.manual_seed(0)
    stems = toy_batch(synth_root, 128 * 63)
    net = MDXNetV2(SOURCES, n_fft=512, hop_length=128, dim_f=256, dim_t=64, num_blocks=5, layers=1, growth=4,
                   bottleneck=4)
    assert_overfits(net, stems, WaveformL1(), lr=3e-3, steps=40, name="tfc_tdf_v2")
