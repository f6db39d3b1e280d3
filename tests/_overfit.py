"""The overfitting contract shared by every model family: a few optimiser steps on one toy batch of synthetic stems
must lower the loss and raise nSDR."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mss.metrics import nsdr

SOURCES = ["drums", "bass", "other", "vocals"]


def toy_batch(synth_root: Path, segment: int, *, sources: list[str] = SOURCES, active: bool = False) -> torch.Tensor:
    """Two ``(2, S, 2, segment)`` training excerpts from the session dataset (seeded). ``active``: only excerpts in
    which every source sounds (a silent reference makes a short excerpt's nSDR meaningless)."""
    from mss.data.datasets import SegmentDataset
    from mss.data.tracks import find_tracks

    torch.manual_seed(0)
    tracks = find_tracks(synth_root / "train", sources, sample_rate=44100, channels=2)
    n = 32 if active else 2
    ds = SegmentDataset(tracks, sources, segment=segment, samples_per_epoch=n, channels=2, sample_rate=44100)
    examples = [ds[i] for i in range(n)]
    if active:
        examples = [x for x in examples if (x.abs().amax(dim=(-1, -2)) > 0.01).all()]
    return torch.stack(examples[:2])


def assert_overfits(net: nn.Module, stems: torch.Tensor, loss_fn, *, lr: float, steps: int,
                    name: str = "") -> tuple[list[float], float, float]:
    """Train ``net`` with Adam on ``stems (B, S, C, T)`` (mixture = sum of stems) and check the contract: the mean of
    the last 5 losses is below 0.7x the first 5, nSDR rises by more than 1 dB. ``loss_fn(est, ref)`` is a
    per-source loss from :mod:`mss.losses` (averaged over sources)."""
    mix = stems.sum(1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def score() -> float:
        net.eval()
        with torch.no_grad():
            value = nsdr(stems, net(mix)).mean().item()
        net.train()
        return value

    before, losses = score(), []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(net(mix), stems).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = score()
    print(f"{name} overfit: loss {losses[0]:.4f} -> {losses[-1]:.4f}, nSDR {before:.2f} -> {after:.2f} dB")
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    assert after > before + 1.0, (before, after)
    return losses, before, after
