"""Open-Unmix: exact parameter counts (UMX / UMX-L), shapes for any target and channel count, import of
``openunmix`` 1.3.0 target state dicts with the reference Separator's output (Wiener EM, 300-frame windows) to 1e-4
max-abs, and overfitting a toy batch."""

from __future__ import annotations

import json

import pytest
import torch

from mss import load_model
from mss.checkpoint import build_model
from mss.losses import SpectrogramMSE
from mss.models.openunmix import OpenUnmix, bandwidth_to_max_bin
from mss.pretrained.import_umx import main
from mss.run import compose
from tests._overfit import SOURCES, assert_overfits, toy_batch
from tests._reference import import_reference, randomise_

pytestmark = pytest.mark.usefixtures("single_thread")

TINY = dict(n_fft=512, hop_length=128, hidden_size=16)


@pytest.mark.parametrize(("name", "count"), [("umx", 8_893_348), ("umxl", 28_257_188)])
def test_parameter_counts_per_target(name, count):
    cfg = compose("train", [f"model={name}", "data.sources=[vocals]", "paths.output_dir=unused"])
    with torch.device("meta"):
        net = build_model(cfg.model)
    assert net.max_bin == 1487 == bandwidth_to_max_bin(44100, 4096, 16000)
    assert sum(p.numel() for p in net.parameters()) == count


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("targets", [1, 2, 4])
def test_shapes_for_any_targets_and_channels(channels, targets):
    torch.manual_seed(0)
    net = OpenUnmix([f"s{i}" for i in range(targets)], audio_channels=channels, **TINY)
    mix = torch.randn(2, channels, 5001)
    for training in (True, False):  # mixture phase / Wiener EM (single target: EM against the residual)
        net.train(training)
        with torch.no_grad():
            out = net(mix)
        assert out.shape == (2, targets, channels, 5001) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match=f"C={channels}"):
        net(torch.randn(1, channels + 1, 5000))


def reference_targets(umx, names, hidden=32, max_bin=186):
    torch.manual_seed(0)
    nets = {}
    for name in names:
        net = umx.OpenUnmix(nb_bins=257, nb_channels=2, hidden_size=hidden, max_bin=max_bin)
        nets[name] = randomise_(net, seed=len(nets)).eval()  # batch-norm statistics too
    return nets


def test_import_matches_the_reference_separator(tmp_path):
    umx = import_reference("openunmix.model")
    refs = reference_targets(umx, ["vocals", "drums"])
    root = tmp_path / "umx"
    root.mkdir()
    for name, net in refs.items():
        torch.save(net.state_dict(), root / f"{name}-0123abcd.pth")  # released file names carry a hash
    (root / "separator.json").write_text(json.dumps({"nfft": 512, "nhop": 128, "sample_rate": 44100}))
    main([str(root), f"out={tmp_path / 'umx.ckpt'}"])
    net = load_model(tmp_path / "umx.ckpt")
    assert sorted(net.sources) == ["drums", "vocals"] and net.max_bin == 186 and net.wiener_iterations == 1

    mix = 0.5 * torch.randn(1, 2, 40_000)  # 313 frames: two Wiener windows of 300 frames
    separator = umx.Separator({name: refs[name] for name in net.sources}, niter=1, n_fft=512, n_hop=128,
                              nb_channels=2, wiener_win_len=300).eval()
    with torch.no_grad():
        assert (net(mix) - separator(mix)).abs().max() <= 1e-4
        net.wiener_iterations = separator.niter = 0  # magnitude + mixture phase
        assert (net(mix) - separator(mix)).abs().max() <= 1e-4
        spec = torch.stft(mix[0], 512, 128, window=torch.hann_window(512), return_complex=True).abs()[None]
        assert torch.allclose(net.targets["vocals"](spec), refs["vocals"](spec), atol=1e-5)


def test_import_errors(tmp_path):
    torch.save({"band_split.to_features.0.0.gamma": torch.ones(2)}, tmp_path / "vocals.pth")
    with pytest.raises(ValueError, match="not an Open-Unmix target state dict"):
        main([f"vocals={tmp_path / 'vocals.pth'}", f"out={tmp_path / 'o.ckpt'}"])
    umx = import_reference("openunmix.model")
    torch.save(reference_targets(umx, ["vocals"])["vocals"].state_dict(), tmp_path / "v.pth")
    with pytest.raises(ValueError, match="not a multiple of n_fft"):
        main([f"vocals={tmp_path / 'v.pth'}", f"out={tmp_path / 'o.ckpt'}"])  # default n_fft 4096
    torch.save(reference_targets(umx, ["drums"], hidden=16)["drums"].state_dict(), tmp_path / "d.pth")
    with pytest.raises(ValueError, match="disagree"):
        main([f"vocals={tmp_path / 'v.pth'}", f"drums={tmp_path / 'd.pth'}", "n_fft=512", f"out={tmp_path / 'o'}"])
    with pytest.raises(SystemExit, match="usage"):
        main([f"vocals={tmp_path / 'v.pth'}"])


def test_overfitting_a_toy_batch_lowers_loss_and_raises_sdr(synth_root):
    stems = toy_batch(synth_root, 16384)
    net = OpenUnmix(SOURCES, n_fft=512, hop_length=128, hidden_size=32)
    assert_overfits(net, stems, SpectrogramMSE(512, 128), lr=1e-2, steps=40, name="open-unmix")
