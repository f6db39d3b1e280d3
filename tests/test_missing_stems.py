"""Tracks that lack some sources (``data.missing_stems=allow``): presence masks in the items and batches, a loss that
leaves absent targets out (``module.missing_stems=ignore``), augmentations that move presence with the stems, and
validation / evaluation that skip absent sources. The dataset: the synthetic generator's, with ``vocals.wav``
removed from half of the training tracks and from one test track."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from mss.augment.batch import Compose, FlipSign, RemixBatch
from mss.data.datasets import SegmentDataset, TrackDataset
from mss.data.sampling import SeededDataset
from mss.data.tracks import DatasetError, find_tracks
from mss.lightning.module import SeparationModule
from mss.losses import WaveformL1
from mss.run import compose
from tests.conftest import TINY_TRAIN

SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="module")
def partial_root(tmp_path_factory):
    from mss.data.synth import generate

    root = generate(tmp_path_factory.mktemp("data") / "partial", n_train=4, n_valid=1, n_test=2, duration=4.0,
                    seed=11)
    train = sorted(p for p in (root / "train").iterdir() if p.is_dir())
    valid = (root / "valid_tracks.txt").read_text().split()
    lacking = [p for p in train if p.name not in valid][:2] + [p for p in train if p.name in valid]
    for track in lacking + sorted((root / "test").iterdir())[:1]:
        (track / "vocals.wav").unlink()
    return root


def _tracks(root, subset="train", missing="allow"):
    return find_tracks(root / subset, SOURCES, sample_rate=44100, channels=2, missing=missing)


def test_missing_stems_are_an_error_by_default_and_absent_when_allowed(partial_root):
    with pytest.raises(DatasetError, match=r"vocals.*data.missing_stems=allow"):
        _tracks(partial_root, missing="error")
    tracks = _tracks(partial_root)
    lacking = {t.name for t in tracks if not t.present("vocals")}
    assert lacking == {p.name for p in (partial_root / "train").iterdir() if not (p / "vocals.wav").exists()}
    assert len(lacking) == 3 and all(t.present(s) for t in tracks for s in SOURCES[:3])
    track = next(t for t in tracks if t.name in lacking)
    assert torch.count_nonzero(track.read_source("vocals", channels=2, sample_rate=44100)) == 0
    assert track.read_source("vocals", channels=2, frames=100).shape == (2, 100)
    # the mixture file still holds the removed vocals: it is read as it is
    item = TrackDataset([track], SOURCES, channels=2, sample_rate=44100)[0]
    assert item["present"].tolist() == [True, True, True, False]


def test_training_items_and_batches_carry_presence(partial_root):
    tracks = _tracks(partial_root)
    data = SegmentDataset(tracks, SOURCES, segment=2000, samples_per_epoch=8, channels=2, sample_rate=44100)
    assert data.with_presence
    batch = SeededDataset(data, pool=False).__getitems__([(i, 100 + i) for i in range(len(tracks))])
    assert set(batch) == {"stems", "present"} and batch["present"].shape == (len(tracks), 4)
    for row, track in enumerate(tracks):
        assert batch["present"][row].tolist() == [track.present(s) for s in SOURCES]
        if not track.present("vocals"):  # absent: silence (a present stem may be silent in an excerpt too)
            assert torch.count_nonzero(batch["stems"][row, 3]) == 0
    complete = SegmentDataset([t for t in tracks if t.present("vocals")], SOURCES, segment=2000,
                              samples_per_epoch=8, channels=2, sample_rate=44100)
    assert not complete.with_presence and isinstance(complete[0], torch.Tensor)


def test_remix_moves_presence_with_the_stems():
    B, S = 8, 4
    gen = torch.Generator().manual_seed(0)
    values = torch.randperm(B * S, generator=gen).float().add(1).reshape(B, S)
    present = values.long() % 3 != 0
    stems = values[..., None, None].expand(B, S, 2, 16).clone()
    aug = Compose({"remix": RemixBatch(group_size=4), "flip": FlipSign()}, SOURCES).train()
    out, moved = aug(stems, generator=torch.Generator().manual_seed(1), present=present)
    assert not torch.equal(moved, present)  # the stems did move
    assert torch.equal(moved, out[..., 0, 0].abs().long() % 3 != 0)


class _Scale(nn.Module):
    """``est_s = w_s * mix``: a separator whose gradients are easy to read."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(0.1, 0.4, 4))

    def forward(self, mix):
        return self.w[None, :, None, None] * mix[:, None]


def _module(missing="ignore"):
    return SeparationModule(_Scale(), WaveformL1(), torch.optim.Adam, sources=SOURCES, sample_rate=44100,
                            missing_stems=missing)


def test_loss_leaves_absent_targets_out():
    gen = torch.Generator().manual_seed(0)
    stems = torch.randn(4, 4, 2, 64, generator=gen)
    present = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    stems[~present] = 0
    module = _module()
    loss = module._supervised_loss(stems, present)
    est = module.net(stems.sum(1)).detach()
    err = (est - stems).abs().mean(dim=(2, 3))  # B S
    expected = torch.stack([err[:, s][present[:, s]].mean() for s in range(4)]).mean()
    torch.testing.assert_close(loss, expected)
    # the same batch without a mask trains the absent vocals toward silence: another value
    assert not torch.allclose(module._supervised_loss(stems, None), expected)
    torch.testing.assert_close(_module("silence")._supervised_loss(stems, present),
                               module._supervised_loss(stems, None))
    # a source absent from the whole batch: no gradient for it, the others as before
    module.net.w.grad = None
    none = present.clone()
    none[:, 3] = False
    module._supervised_loss(stems, none).backward()
    assert module.net.w.grad[3] == 0 and bool((module.net.w.grad[:3] != 0).all())


@pytest.mark.slow
def test_train_validate_and_evaluate_with_missing_stems(partial_root, tmp_path):
    from mss.evaluate import evaluate
    from mss.train import train

    overrides = [f"data.root={partial_root}", "data.synth=null", "data.missing_stems=allow",
                 f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}", *TINY_TRAIN,
                 "augment=demucs", "augment.transforms.remix.group_size=2", "test=false"]
    metrics, objects = train(compose("train", overrides))
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    # the validation track lacks vocals: no vocals score, the mean over the other three
    assert "val/nsdr/vocals" not in metrics or metrics["val/nsdr/vocals"] != metrics["val/nsdr/vocals"]
    mean = sum(metrics[f"val/nsdr/{s}"] for s in SOURCES[:3]) / 3
    assert metrics["val/nsdr"] == pytest.approx(mean, abs=1e-5)
    # museval's frame rule would blank every frame of every source next to an absent one: scored without it
    assert all(math.isfinite(metrics[f"val/sdr/{s}"]) for s in SOURCES[:3])

    out = tmp_path / "eval"
    cfg = compose("evaluate", [f"ckpt={objects['checkpoint']}", f"paths.output_dir={out}",
                               f"paths.cache_dir={tmp_path / 'cache'}", "evaluation.plots=false"])
    table = evaluate(cfg.ckpt, cfg.data, cfg.evaluation, out)  # data=checkpoint: the training data config
    infos = {p.stem: json.loads(p.read_text()) for p in (out / "track_info" / "test").glob("*.json")}
    lacking = {p.name for p in (partial_root / "test").iterdir() if not (p / "vocals.wav").exists()}
    assert len(infos) == 2 and len(lacking) == 1
    for name, info in infos.items():
        assert (info["nSDR"]["vocals"] is None) == (name in lacking)
    frames = json.loads((out / "museval" / "test" / f"{next(iter(lacking))}.json").read_text())
    vocals = next(t for t in frames["targets"] if t["name"] == "vocals")
    assert all(math.isnan(f["metrics"]["SDR"]) for f in vocals["frames"])  # museval's rule: skipped
    # the vocals row holds the one track that has vocals; the other sources average both tracks
    have = next(n for n in infos if n not in lacking)
    assert table.loc["vocals", "nSDR (mean)"] == pytest.approx(infos[have]["nSDR"]["vocals"], abs=1e-9)
    assert table.loc["bass", "nSDR (mean)"] == pytest.approx(
        sum(i["nSDR"]["bass"] for i in infos.values()) / 2, abs=1e-9)
