"""Bags of models: several separators combined with a per-source weight matrix, used exactly like one model.

Shape legend: ``B`` batch, ``S`` sources, ``C`` channels, ``T`` samples, ``M`` member models.

A bag is an ordinary network for the rest of mss: its config is ``{_target_: mss.inference.bag.BagOfModels,
models: [<member config>, ...], weights: [[...], ...]}`` (Hydra builds the members recursively), its weights live
under ``models.<i>.`` in the state dict, so ``mss.load_model``, ``mss.evaluate`` and ``mss.separate`` need nothing
special. On full tracks :func:`mss.inference.overlap_add.apply_model` runs every member through overlap-add with the
member's own ``segment_length`` before combining (members may be trained on different segment lengths).

Uses: an ensemble of checkpoints (uniform weights), or the four per-source fine-tuned models of HT Demucs ``ft``
(identity weights: each member contributes only its own source).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mss.models.base import Separator

__all__ = ["BagOfModels", "bag_weights"]


def _attribute(model: nn.Module, key: str):
    value = getattr(model, key, None)
    return list(value) if key == "sources" and value is not None else value


class BagOfModels(Separator):
    """Per-source weighted average of member separators.

    Args:
        models: member networks with the ``(B, C, T) -> (B, S, C, T)`` contract and identical ``sources``,
            ``sample_rate`` and ``audio_channels``.
        weights: ``(M, S)`` non-negative weights, member ``m``'s share of source ``s`` (``None``: uniform). Each
            source needs a positive total weight.
    """

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[Sequence[float]] | None = None):
        if len(models) == 0:
            raise ValueError("BagOfModels needs at least one model")
        first = models[0]
        for key in ("sources", "sample_rate", "audio_channels"):
            values = [_attribute(m, key) for m in models]
            if values[0] is None:
                raise ValueError(f"BagOfModels: member 0 ({type(first).__name__}) has no attribute {key!r}")
            for i, value in enumerate(values[1:], 1):
                if value != values[0]:
                    raise ValueError(f"BagOfModels: member {i} has {key}={value!r}, member 0 has {values[0]!r}; "
                                     "members must agree")
        lengths = [getattr(m, "segment_length", None) for m in models]
        known = [int(n) for n in lengths if n is not None]
        super().__init__(first.sources, first.audio_channels, first.sample_rate, min(known) if known else None)
        self.models = nn.ModuleList(models)
        n_models, n_sources = len(models), len(self.sources)
        w = torch.ones(n_models, n_sources) if weights is None else torch.tensor(weights, dtype=torch.float32)
        if w.shape != (n_models, n_sources):
            raise ValueError(f"BagOfModels: weights must be (models, sources) = ({n_models}, {n_sources}), "
                             f"got {tuple(w.shape)}")
        if (w < 0).any() or (w.sum(0) <= 0).any():
            raise ValueError("BagOfModels: weights must be >= 0 with a positive total for every source, got "
                             f"{w.tolist()}")
        self.register_buffer("weights", w, persistent=False)

    def combine(self, estimates: Sequence[torch.Tensor]) -> torch.Tensor:
        """Weighted average of the members' ``(B, S, C, T)`` estimates (in member order) → ``(B, S, C, T)``."""
        w = self.weights.to(estimates[0].device, estimates[0].dtype)
        out = sum(est * w[m].view(1, -1, 1, 1) for m, est in enumerate(estimates))
        return out / w.sum(0).view(1, -1, 1, 1)

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` mixture → ``(B, S, C, T)``; inputs must fit every member (full tracks: ``apply_model``)."""
        self.check_mixture(mix)
        return self.combine([model(mix) for model in self.models])


def bag_weights(spec: Any, n_models: int, sources: Sequence[str]) -> list[list[float]]:
    """The ``(members, sources)`` weight matrix of a bag from ``uniform`` (every member counts equally for every
    source), ``identity`` (member ``i`` alone gives source ``i``: per-source fine-tuned models) or a matrix."""
    if spec == "uniform":
        return [[1.0] * len(sources) for _ in range(n_models)]
    if spec == "identity":
        if n_models != len(sources):
            raise ValueError(f"weights=identity needs one checkpoint per source ({len(sources)}: {sources}), got "
                             f"{n_models}")
        return [[float(i == j) for j in range(len(sources))] for i in range(n_models)]
    if isinstance(spec, str):
        raise ValueError(f"weights={spec!r}: expected uniform, identity or a (models, sources) matrix")
    return [[float(v) for v in row] for row in spec]
