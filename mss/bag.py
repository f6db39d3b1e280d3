"""Combine checkpoints into one bag-of-models checkpoint:
``python -m mss.bag ckpt=[a.ckpt,b.ckpt,...] weights=uniform|identity|[[w_11,...],...] out=bag.ckpt``
``[combine=avg|median|min_mag|max_mag] [domain=wave|spec n_fft=4096 hop_length=1024]``.

- ``uniform``: every member contributes equally to every source (an ensemble).
- ``identity``: member ``i`` alone gives source ``i`` (the four per-source fine-tuned models of
  ``experiment=finetune``, passed in the order of ``data.sources``; HT Demucs ``ft``).
- a ``(members, sources)`` matrix: per-source weights (each source needs a positive total).
- ``combine``/``domain``: how members are combined (:mod:`mss.inference.bag`): the weighted mean (default), the
  weighted median or the per-sample smallest / largest magnitude, on waveforms or STFT bins.

The output is an ordinary mss checkpoint (:class:`mss.inference.bag.BagOfModels` config + weights, and the first
member's data config), so ``python -m mss.evaluate ckpt=bag.ckpt`` and ``python -m mss.separate ckpt=bag.ckpt``
use it like a single model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from mss.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from mss.inference.bag import BagOfModels, bag_weights
from mss.utils import run_structured_cli

__all__ = ["BagConfig", "build_bag", "main"]


def build_bag(ckpts: Sequence[str | Path], weights: Any = "uniform", out: str | Path | None = None, *,
              combine: str = "avg", domain: str = "wave", n_fft: int = 4096, hop_length: int = 1024) -> BagOfModels:
    """Bag of the networks of ``ckpts`` with ``weights`` and ``combine``/``domain`` (see module doc); written to
    ``out`` when given."""
    if not ckpts:
        raise ValueError("ckpt=[...]: give at least one checkpoint")
    stored = [read_checkpoint(c)["mss"] for c in ckpts]
    members = [load_model(c) for c in ckpts]
    sources = list(members[0].sources)
    combination = dict(combine=combine, domain=domain, n_fft=int(n_fft), hop_length=int(hop_length))
    bag = BagOfModels(members, bag_weights(weights, len(members), sources), **combination)
    if out is not None:
        config = {"_target_": "mss.inference.bag.BagOfModels", "models": [s["model"] for s in stored],
                  "weights": bag.weights.tolist(), **combination}
        save_checkpoint(out, bag, config, data=stored[0].get("data"),
                        extra={"bag_of": [str(Path(c).resolve()) for c in ckpts]})
    return bag


@dataclass
class BagConfig:
    """Command-line schema of ``python -m mss.bag``."""

    ckpt: list[str] = MISSING
    weights: Any = "uniform"
    out: str = MISSING
    combine: str = "avg"
    domain: str = "wave"
    n_fft: int = 4096
    hop_length: int = 1024


def main(argv: Sequence[str] | None = None) -> int:
    def action(opts: dict) -> str:
        bag = build_bag(opts["ckpt"], opts["weights"], opts["out"], combine=opts["combine"], domain=opts["domain"],
                        n_fft=opts["n_fft"], hop_length=opts["hop_length"])
        return (f"wrote {opts['out']}: bag of {len(bag.models)} models, sources {bag.sources}, weights "
                f"{bag.weights.tolist()}, combine {bag.method} ({bag.domain} domain)")

    return run_structured_cli(BagConfig, argv, __doc__, "ckpt=[a.ckpt,b.ckpt,...] and out=bag.ckpt are required",
                              action, (ValueError, CheckpointError))


if __name__ == "__main__":
    raise SystemExit(main())
