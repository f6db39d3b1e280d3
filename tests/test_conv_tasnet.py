"""Conv-TasNet (Demucs v2 music version): exact parameter counts through Hydra, the reference's full-size state-dict
layout, output parity with facebookresearch/demucs v2 (64ed2cb0) ``demucs/tasnet.py`` at randomised weights (golden
fixture, through :mod:`mss.pretrained.import_demucs`: plain released-style state dicts, ``{klass, args, kwargs,
state}`` packages and the CLI), the xavier initialisation quirk, shapes for odd lengths, clear errors, and
overfitting a toy batch."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from mss import load_model
from mss.checkpoint import build_model
from mss.losses import WaveformL1
from mss.models.conv_tasnet import ConvTasNet
from mss.pretrained.import_demucs import DemucsImportError, import_model, main, tasnet_kwargs
from mss.run import compose
from tests._overfit import SOURCES, assert_overfits, toy_batch

pytestmark = pytest.mark.usefixtures("single_thread")

GOLDEN = Path(__file__).parent / "data" / "conv_tasnet_golden.pt"
REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4
TINY = dict(N=16, L=8, B=16, H=16, X=2, R=1)


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, map_location="cpu", weights_only=True)


def causal_keys(state: dict) -> dict:
    """The reference's causal layout: the chomp at ``net.3.net.1`` shifts the later depthwise-block indices by one."""
    return {re.sub(r"net\.3\.net\.(\d)\.", lambda m: f"net.3.net.{int(m[1]) + (int(m[1]) > 0)}.", k): v
            for k, v in state.items()}


@pytest.mark.parametrize(("overrides", "count"), [([], 10_977_872), (["model.X=8"], 8_852_032)])
def test_parameter_counts(golden, overrides, count):
    cfg = compose("train", ["model=conv_tasnet", "paths.output_dir=unused", *overrides])
    with torch.device("meta"):
        net = build_model(cfg.model)
    assert isinstance(net, ConvTasNet) and net.sources == ["drums", "bass", "other", "vocals"]
    assert net.segment_length == 352_800 and net.sample_rate == 44100 and not net.normalize
    assert sum(p.numel() for p in net.parameters()) == count == golden["reference_counts"][net.X]
    if net.X == 10:  # the released layout, names and shapes (366 entries)
        assert [(k, list(v.shape)) for k, v in net.state_dict().items()] == [tuple(e) for e in golden["full_keys"]]


def test_paper_recipe_composes():
    cfg = compose("train", ["experiment=conv_tasnet_paper", "paths.output_dir=unused"])
    assert cfg.model.X == 10 and cfg.model.segment_length == 320_000 and cfg.trainer.max_epochs == 180
    assert round(cfg.data.segment * cfg.data.sample_rate) == 80_000 and cfg.repitch is None
    assert cfg.module.loss._target_ == "mss.losses.WaveformL1" and cfg.module.valid_overlap == 0.25
    assert cfg.augment.transforms.shift.shift == 1.0 and cfg.augment.transforms.remix.group_size == 4


def test_golden_parity_through_the_importer_from_a_plain_state_dict(golden, tmp_path):
    """The released tasnet files are plain state dicts: the importer reads the configuration off the shapes."""
    torch.save(golden["state_dict"], tmp_path / "tasnet-small.th")
    net, config = import_model(tmp_path / "tasnet-small.th")
    expected = {k: v for k, v in golden["config"].items()}
    assert config == {"_target_": "mss.models.conv_tasnet.ConvTasNet", **expected, "norm_type": "gLN",
                      "causal": False}
    with torch.no_grad():
        out = net(golden["mix"])
    err = (out - golden["out"]).abs().max().item()
    print(f"conv_tasnet golden parity: max-abs {err:.2e} (reference max-abs {golden['out'].abs().max():.3g})")
    assert out.shape == golden["out"].shape == (2, 4, 2, 2205) and err <= TOL
    assert out[..., -5:].abs().max() == 0  # the tail after the last full frame is zero-padded, as the reference


def test_golden_parity_of_the_normalisation_and_the_causal_variant(golden):
    cfg = {"_target_": "mss.models.conv_tasnet.ConvTasNet", **golden["config"]}
    norm = build_model({**cfg, "normalize": True}).eval()
    norm.load_state_dict(golden["state_dict"])
    causal = build_model({**cfg, "causal": True}).eval()
    causal.load_state_dict(causal_keys(golden["state_dict"]))
    with torch.no_grad():
        normalised, shifted = norm(golden["mix"]), causal(golden["mix"])
    assert (normalised - golden["out_normalized"]).abs().max() <= TOL  # demucs v2 test.py's per-track standardisation
    assert (normalised - golden["out"]).abs().max() > 0.1  # it matters (the mixture has a DC offset)
    assert (shifted - golden["out_causal"]).abs().max() <= TOL
    assert (shifted - golden["out"]).abs().max() > 0.1


def test_xavier_init_quirk_draws_the_reference_weights(golden):
    """Seeded like the reference, the fresh weights are the reference's exactly, gLN/cLN gamma and beta included."""
    torch.manual_seed(0)
    net = ConvTasNet(**golden["config"])
    ours = net.state_dict()
    assert ours.keys() == golden["init_state"].keys()
    for key, value in golden["init_state"].items():
        assert torch.equal(ours[key], value), key
    gamma, beta = net.separator.network[0].gamma, net.separator.network[2][0][0].net[2].beta
    assert gamma.shape == (1, 32, 1) and (gamma - 1).abs().max() > 0.1 and beta.abs().max() > 0.1
    assert torch.equal(net.separator.network[2][0][0].net[1].weight, torch.tensor([0.25]))  # PReLU keeps its init


def package_file(tmp_path: Path, monkeypatch, state: dict, kwargs: dict, name: str = "tasnet.th") -> Path:
    """Write the reference's training package ``{klass, args, kwargs, state}`` (capture_init) with a class of the
    reference import path ``demucs.tasnet.ConvTasNet`` (demucs 4 has no tasnet module)."""
    module = types.ModuleType("demucs.tasnet")
    klass = type("ConvTasNet", (), {"__module__": "demucs.tasnet", "__qualname__": "ConvTasNet"})
    module.ConvTasNet = klass
    monkeypatch.setitem(sys.modules, "demucs.tasnet", module)
    path = tmp_path / name
    torch.save({"klass": klass, "args": (), "kwargs": kwargs, "state": state}, path)
    return path


def test_importer_cli_on_a_package_file(golden, tmp_path, monkeypatch):
    kwargs = {**golden["config"], "samplerate": 44100, "segment_length": 4 * 80000}
    path = package_file(tmp_path, monkeypatch, {k: v.half() for k, v in golden["state_dict"].items()}, kwargs)
    out = tmp_path / "tasnet.ckpt"
    proc = subprocess.run([sys.executable, "-m", "mss.pretrained.import_demucs", str(path), f"out={out}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ours = load_model(out)
    assert isinstance(ours, ConvTasNet) and ours.segment_length == 320_000 and ours.X == 3
    reference = ConvTasNet(**golden["config"]).eval()  # the reference's output with the fp16-rounded weights
    reference.load_state_dict({k: v.half().float() for k, v in golden["state_dict"].items()})
    with torch.no_grad():
        got = ours(golden["mix"])
        assert (got - reference(golden["mix"])).abs().max() <= TOL
        assert (got - golden["out"]).abs().max() <= 0.05 * golden["out"].abs().max()  # fp16 rounding only


def test_plain_state_dicts_name_their_configuration(tmp_path):
    """Non-default layouts round-trip through the shape reading: causal (index shift), BN, 2 sources, mono."""
    for kwargs in (dict(causal=True), dict(norm_type="BN"), dict(audio_channels=1, P=5)):
        net = ConvTasNet(SOURCES, **TINY, **kwargs)
        read = tasnet_kwargs(net.state_dict())
        assert ConvTasNet(**read).state_dict().keys() == net.state_dict().keys()
        assert {k: read[k] for k in kwargs} == kwargs and read["X"] == 2 and read["R"] == 1 and read["L"] == 8
    two = ConvTasNet(["vocals", "accompaniment"], **TINY)
    torch.save(two.state_dict(), tmp_path / "two.th")
    with pytest.raises(DemucsImportError, match="separates 2 sources; name them with sources="):
        import_model(tmp_path / "two.th")
    with pytest.raises(DemucsImportError, match="names 3 stems but the state dict separates 2"):
        import_model(tmp_path / "two.th", sources=["a", "b", "c"])
    written = main([str(tmp_path / "two.th"), f"out={tmp_path / 'two.ckpt'}", "sources=vocals,accompaniment"])
    assert load_model(written).sources == ["vocals", "accompaniment"]


def test_importer_errors_are_clear(tmp_path):
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.th")
    with pytest.raises(DemucsImportError, match="plain state dict .* not a Demucs v2 Conv-TasNet one"):
        import_model(tmp_path / "other.th")
    state = ConvTasNet(SOURCES, **{**TINY, "X": 3, "R": 2}).state_dict()
    del state["separator.network.2.1.1.net.0.weight"]
    with pytest.raises(DemucsImportError, match="do not form R x X repeats"):
        tasnet_kwargs(state)
    torch.save({"state": {}}, tmp_path / "plain.th")  # not a state dict, not a package
    with pytest.raises(DemucsImportError, match="not a reference Demucs package"):
        import_model(tmp_path / "plain.th")


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("length", [3001, 44, 5, 1])
def test_shapes_any_length_and_channel_count(channels, length):
    torch.manual_seed(0)
    net = ConvTasNet(["a", "b", "c"], audio_channels=channels, **TINY)
    for training in (True, False):
        net.train(training)
        with torch.no_grad():
            out = net(torch.randn(2, channels, length))
        assert out.shape == (2, 3, channels, length) and torch.isfinite(out).all()
    hop, frames = 4, (max(length, 8) - 8) // 4 + 1
    covered = (frames - 1) * hop + 8
    if covered < length:  # the reference's zero tail
        assert out[..., covered:].abs().max() == 0


def test_normalisation_makes_the_net_affine_equivariant_and_handles_silence():
    """The network is positively homogeneous (no biases, scale-invariant norms); the standardisation adds the DC
    offset: with it ``f(3x + 0.5) = 3 f(x) + 0.5``, without it only ``f(3x) = 3 f(x)``."""
    torch.manual_seed(0)
    plain = ConvTasNet(SOURCES, **TINY).eval()
    norm = ConvTasNet(SOURCES, **TINY, normalize=True).eval()
    norm.load_state_dict(plain.state_dict())
    x = torch.randn(1, 2, 400)
    with torch.no_grad():
        torch.testing.assert_close(norm(3 * x + 0.5), 3 * norm(x) + 0.5, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(plain(3 * x), 3 * plain(x), atol=1e-4, rtol=1e-4)
        assert (plain(x + 0.5) - plain(x) - 0.5).abs().max() > 0.1
        assert torch.isfinite(norm(torch.zeros(1, 2, 400))).all()


def test_bad_input_and_config_are_clear_errors():
    net = ConvTasNet(SOURCES, **TINY)
    with pytest.raises(ValueError, match="C=2"):
        net(torch.randn(1, 1, 400))
    with pytest.raises(ValueError, match=r"\(B, C=2, T\)"):
        net(torch.randn(2, 400))
    bad = [
        (dict(P=4), "P=4: the depthwise kernel must be odd when causal=False"),
        (dict(norm_type="LN"), "norm_type='LN'; expected one of"),
        (dict(mask_nonlinear="sigmoid"), "mask_nonlinear='sigmoid'; expected one of"),
        (dict(L=1), "L=1: the filter length must be >= 2"),
        (dict(X=0), "X=0: N, B, H, P, X and R must be positive"),
    ]
    for override, message in bad:
        with pytest.raises(ValueError, match=message):
            ConvTasNet(SOURCES, **{**TINY, **override})
    ConvTasNet(SOURCES, **{**TINY, "P": 4, "causal": True})  # an even kernel is fine when causal


def test_overfitting_a_toy_batch_lowers_loss_and_raises_sdr(synth_root):
    torch.manual_seed(0)
    stems = toy_batch(synth_root, 8192, active=True)
    net = ConvTasNet(SOURCES, N=64, L=16, B=32, H=64, X=4, R=1)
    assert_overfits(net, stems, WaveformL1(), lr=5e-3, steps=60, name="conv_tasnet")
