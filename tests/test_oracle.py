"""Oracle baselines (mss.inference.oracle) on the synthetic test tracks: contract, mixture consistency and the
expected ordering against the MIX baseline."""

from __future__ import annotations

import pytest
import torch

from mss.checkpoint import build_model
from mss.inference.oracle import Oracle
from mss.metrics import nsdr
from mss.run import compose

ORACLES = ["oracle_irm1", "oracle_irm2", "oracle_ibm1", "oracle_ibm2", "oracle_mwf", "oracle_mix"]


@pytest.fixture(scope="module")
def track(synth_root):
    from mss.data.datasets import TrackDataset
    from mss.data.tracks import find_tracks

    sources = ["drums", "bass", "other", "vocals"]
    tracks = find_tracks(synth_root / "test", sources, sample_rate=44100, channels=2)
    item = TrackDataset(tracks, sources, channels=2, sample_rate=44100)[0]
    crop = 3 * 44100
    return item["mixture"][None, :, :crop], item["stems"][None, ..., :crop]  # (1, C, T), (1, S, C, T)


@pytest.fixture(scope="module")
def scores(track):
    """Mean nSDR over sources of every oracle on the first synthetic test track, via its Hydra config."""
    mix, stems = track
    out = {}
    for name in ORACLES:
        net = build_model(compose("train", [f"model={name}", "paths.output_dir=unused"]).model)
        assert net.sources == ["drums", "bass", "other", "vocals"] and net.needs_references
        est = net(mix, stems)
        assert est.shape == stems.shape and est.dtype == stems.dtype and torch.isfinite(est).all()
        out[name] = float(nsdr(stems, est).mean())
    return out


def test_oracles_beat_the_mixture(scores):
    for name in ORACLES[:-1]:
        assert scores[name] > scores["oracle_mix"] + 5.0, scores
    assert scores["oracle_irm2"] > scores["oracle_irm1"], scores  # the Wiener-like ratio mask is the better one
    assert scores["oracle_ibm2"] > scores["oracle_mix"], scores


def test_ratio_masks_are_mixture_consistent(track):
    """IRM masks sum to one, so the estimates add up to the mixture (up to STFT round-off)."""
    mix, stems = track
    est = Oracle(["drums", "bass", "other", "vocals"], kind="irm", alpha=2.0)(mix, stems)
    torch.testing.assert_close(est.sum(1), mix, atol=1e-4, rtol=0)
    mix_est = Oracle(["drums", "bass", "other", "vocals"], kind="mix", mix_gain=1.0)(mix, stems)
    torch.testing.assert_close(mix_est[:, 2], mix)


def test_oracle_contract_errors(track):
    mix, stems = track
    net = Oracle(["drums", "bass", "other", "vocals"], kind="ibm", alpha=1.0)
    with pytest.raises(TypeError):
        net(mix)  # an oracle needs the true stems
    with pytest.raises(ValueError, match="stems for sources"):
        net(mix, stems[:, :3])
    with pytest.raises(ValueError, match="model.kind"):
        Oracle(["vocals"], kind="gt")
