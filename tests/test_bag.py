"""Bags of models: weighted per-source combination, overlap-add per member, ordinary checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mss import load_model
from mss.checkpoint import build_model, read_checkpoint, save_checkpoint
from mss.inference.bag import BagOfModels
from mss.inference.overlap_add import apply_model
from mss.run import compose
from tests.conftest import TINY_MODEL

SOURCES = ["drums", "bass", "other", "vocals"]


def tiny_config(frames: int = 128) -> dict:
    cfg = compose("train", ["paths.output_dir=unused", "model.dropout=0.0", *TINY_MODEL, f"model.frames={frames}"])
    return OmegaConf.to_container(cfg.model, resolve=True)


@pytest.fixture(scope="module")
def members():
    torch.manual_seed(0)
    return [build_model(tiny_config(128)).eval(), build_model(tiny_config(64)).eval()]


def test_weights_select_and_average_sources(members):
    mix = torch.randn(2, 2, 8192)
    with torch.inference_mode():
        a, b = (m(mix) for m in members)
        uniform = BagOfModels(members).eval()(mix)
        picked = BagOfModels(members, weights=[[1, 0, 1, 0], [0, 1, 0, 1]]).eval()(mix)
    torch.testing.assert_close(uniform, (a + b) / 2)
    torch.testing.assert_close(picked[:, 0::2], a[:, 0::2])
    torch.testing.assert_close(picked[:, 1::2], b[:, 1::2])


def test_segment_length_is_the_shortest_members(members):
    bag = BagOfModels(members)
    assert bag.segment_length == min(m.segment_length for m in members)
    assert bag.sources == SOURCES and bag.sample_rate == 44100 and bag.audio_channels == 2


def test_apply_model_runs_each_member_with_its_own_segment(members):
    bag = BagOfModels(members, weights=[[3, 1, 1, 1], [1, 1, 1, 2]]).eval()
    mix = torch.randn(2, 44100)
    expected = bag.combine([apply_model(m, mix[None], overlap=0.25) for m in members])[0]
    torch.testing.assert_close(apply_model(bag, mix, overlap=0.25), expected)


def test_bad_bags_are_clear_errors(members):
    with pytest.raises(ValueError, match="at least one"):
        BagOfModels([])
    with pytest.raises(ValueError, match=r"weights must be \(models, sources\) = \(2, 4\)"):
        BagOfModels(members, weights=[[1, 1, 1, 1]])
    with pytest.raises(ValueError, match="positive total"):
        BagOfModels(members, weights=[[1, 0, 1, 1], [1, 0, 1, 1]])
    other = build_model({**tiny_config(), "sources": ["vocals"]})
    with pytest.raises(ValueError, match="member 1 has sources"):
        BagOfModels([members[0], other])


def test_bag_checkpoint_reloads_to_the_same_output(members, tmp_path):
    config = {"_target_": "mss.inference.bag.BagOfModels", "models": [tiny_config(128), tiny_config(64)],
              "weights": [[1, 0, 0, 1], [0, 1, 1, 0]]}
    bag = BagOfModels(members, weights=config["weights"]).eval()
    path = save_checkpoint(tmp_path / "bag.ckpt", bag, config)
    stored = read_checkpoint(path)["mss"]
    assert stored["data"]["sources"] == SOURCES and stored["data"]["root"] is None
    loaded = load_model(path)
    assert isinstance(loaded, BagOfModels)
    mix = torch.randn(1, 2, 30_000)
    torch.testing.assert_close(apply_model(loaded, mix), apply_model(bag, mix))


def test_save_checkpoint_needs_a_target(members, tmp_path):
    with pytest.raises(ValueError, match="_target_"):
        save_checkpoint(tmp_path / "x.ckpt", members[0], {"sources": SOURCES})
    assert not (tmp_path / "x.ckpt").exists()


class _Scaled(torch.nn.Module):
    """A constructed member: ``est_s = scale_s · mix`` (the same for every channel)."""

    def __init__(self, scales):
        super().__init__()
        self.sources, self.sample_rate, self.audio_channels, self.segment_length = SOURCES, 44100, 2, 4096
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float32))

    def forward(self, mix):
        return self.scales.view(1, -1, 1, 1) * mix.unsqueeze(1)


def test_combine_methods_on_constructed_member_outputs():
    """median / min_mag / max_mag per sample against numpy, weights selecting members and weighting the median."""
    from mss.inference.bag import combine_estimates

    torch.manual_seed(0)
    est = [torch.randn(2, 4, 2, 300) for _ in range(4)]
    stacked = torch.stack(est).numpy()
    uniform = torch.ones(4, 4)
    np_median = np.median(stacked, axis=0)
    torch.testing.assert_close(combine_estimates(est, uniform, "median"), torch.from_numpy(np_median))
    torch.testing.assert_close(combine_estimates(est, uniform, "avg"), torch.from_numpy(stacked.mean(0)))
    pick = np.take_along_axis(stacked, np.abs(stacked).argmin(0)[None], 0)[0]
    torch.testing.assert_close(combine_estimates(est, uniform, "min_mag"), torch.from_numpy(pick))
    pick = np.take_along_axis(stacked, np.abs(stacked).argmax(0)[None], 0)[0]
    torch.testing.assert_close(combine_estimates(est, uniform, "max_mag"), torch.from_numpy(pick))
    # source 0: members 0-2 only (member 3 has weight 0: the median of three); source 1: weights 1, 1, 1, 3, checked
    # against a weighted sort (the first value whose cumulative weight reaches half, averaged with the next when
    # exactly half)
    w = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [0, 3, 1, 1]])
    got = combine_estimates(est, w, "median")
    torch.testing.assert_close(got[:, 0], torch.from_numpy(np.median(stacked[:3, :, 0], axis=0)))
    values = stacked[:, :, 1].reshape(4, -1)
    expected = []
    for column in values.T:
        order = np.argsort(column, kind="stable")
        cum = np.cumsum(w[:, 1].numpy()[order])
        lo, hi = np.searchsorted(cum, cum[-1] / 2, "left"), np.searchsorted(cum, cum[-1] / 2, "right")
        expected.append((column[order][lo] + column[order][min(hi, 3)]) / 2)
    torch.testing.assert_close(got[:, 1].reshape(-1), torch.tensor(expected, dtype=torch.float32))
    mag = combine_estimates(est, w, "max_mag")[:, 0].numpy()  # member 3 excluded from source 0
    part = stacked[:3, :, 0]
    torch.testing.assert_close(torch.from_numpy(mag),
                               torch.from_numpy(np.take_along_axis(part, np.abs(part).argmax(0)[None], 0)[0]))


@pytest.mark.parametrize("domain", ["wave", "spec"])
def test_bag_combines_members_by_method_in_either_domain(domain):
    """Members 0.5·x, 1·x, 3·x: median x, min_mag 0.5·x, max_mag 3·x in samples and in STFT bins alike; avg the
    weighted mean (weights 1, 1, 2: 7/4·x); spec-domain avg equals the waveform mean."""
    members = [_Scaled([s] * 4) for s in (0.5, 1.0, 3.0)]
    mix = torch.randn(1, 2, 8192)
    expected = {"median": 1.0, "min_mag": 0.5, "max_mag": 3.0, "avg": (0.5 + 1.0 + 6.0) / 4}
    for method, scale in expected.items():
        weights = [[1] * 4, [1] * 4, [2] * 4] if method == "avg" else None
        bag = BagOfModels(members, weights=weights, combine=method, domain=domain, n_fft=512, hop_length=128)
        torch.testing.assert_close(bag(mix), scale * mix.unsqueeze(1).expand(1, 4, 2, 8192), atol=1e-5, rtol=1e-5,
                                   msg=f"{method} ({domain})")
        torch.testing.assert_close(apply_model(bag, mix[0]), scale * mix[0].expand(4, 2, 8192), atol=1e-5,
                                   rtol=1e-5)
    with pytest.raises(ValueError, match="combine='mean'"):
        BagOfModels(members, combine="mean")
    with pytest.raises(ValueError, match="domain='stft'"):
        BagOfModels(members, domain="stft")


def test_spec_domain_differs_from_wave_domain_for_selection():
    """min_mag picks per STFT bin in the spec domain, per sample in the wave domain: different estimates."""
    torch.manual_seed(1)
    a, b = torch.randn(1, 4, 2, 4096), torch.randn(1, 4, 2, 4096)
    wave = BagOfModels([_Scaled([1] * 4)] * 2, combine="min_mag").combine([a, b])
    spec = BagOfModels([_Scaled([1] * 4)] * 2, combine="min_mag", domain="spec", n_fft=512, hop_length=128)
    spec = spec.combine([a, b])
    assert (wave - spec).abs().max() > 0.1
    assert torch.equal(wave, torch.where(a.abs() <= b.abs(), a, b))
