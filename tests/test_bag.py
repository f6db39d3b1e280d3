"""Bags of models: weighted per-source combination, overlap-add per member, ordinary checkpoints."""

from __future__ import annotations

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
