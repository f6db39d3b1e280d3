"""Bags of models: several separators combined with a per-source weight matrix, used exactly like one model.

Shape legend: ``B`` batch, ``S`` sources, ``C`` channels, ``T`` samples, ``M`` member models.

A bag is an ordinary network for the rest of mss: its config is ``{_target_: mss.inference.bag.BagOfModels,
models: [<member config>, ...], weights: [[...], ...]}`` (Hydra builds the members recursively), its weights live
under ``models.<i>.`` in the state dict, so ``mss.load_model``, ``mss.evaluate`` and ``mss.separate`` need nothing
special. On full tracks :func:`mss.inference.overlap_add.apply_model` runs every member through overlap-add with the
member's own ``segment_length`` before combining (members may be trained on different segment lengths).

Uses: an ensemble of checkpoints (uniform weights), or the four per-source fine-tuned models of HT Demucs ``ft``
(identity weights: each member contributes only its own source).

Combination (``combine``), per source over the members with a positive weight for it:

* ``avg``: the weighted mean (the default; Demucs' bags);
* ``median``: the weighted median (sorted values, the first whose cumulative weight reaches half the total; the mean
  of two values when it lands exactly on half, so uniform weights give ``numpy.median``);
* ``min_mag`` / ``max_mag``: per sample, the member value of smallest / largest magnitude (weights only select).

``domain=wave`` combines the waveforms sample by sample; ``domain=spec`` combines STFT bins
(:func:`mss.audio.spectral.stft`, ``n_fft``/``hop_length``) and inverts: ``avg`` the weighted complex mean, ``median``
the weighted median magnitude with the phase of the weighted mean, ``min_mag``/``max_mag`` the complex bin of the
member of smallest / largest magnitude (the ``min_fft``/``max_fft`` ensembles of MSST).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mss.audio.spectral import istft, stft
from mss.models.base import Separator

__all__ = ["BagOfModels", "COMBINE_METHODS", "bag_weights", "combine_estimates"]

COMBINE_METHODS = ("avg", "median", "min_mag", "max_mag")
DOMAINS = ("wave", "spec")


def _weighted_median(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Weighted median over dim 0 of real ``values (M, ...)`` with weights ``w`` broadcastable to it."""
    w = w.expand_as(values)
    ordered, order = values.sort(dim=0)
    cum = w.gather(0, order).cumsum(0)
    half = cum[-1:] / 2
    lo = (cum < half).sum(0, keepdim=True).clamp_max(len(values) - 1)  # first index with cum >= half
    hi = (cum <= half).sum(0, keepdim=True).clamp_max(len(values) - 1)  # first index with cum > half
    return (ordered.gather(0, lo) + ordered.gather(0, hi)).squeeze(0) / 2


def _pick_by_magnitude(values: torch.Tensor, w: torch.Tensor, largest: bool) -> torch.Tensor:
    """Per element, the member of ``values (M, ...)`` (real or complex) with the smallest / largest magnitude among
    those of positive weight."""
    mag = values.abs()
    excluded = (w <= 0).expand_as(mag)
    mag = mag.masked_fill(excluded, -math.inf if largest else math.inf)
    index = (mag.argmax(0) if largest else mag.argmin(0)).unsqueeze(0)
    return values.gather(0, index).squeeze(0)


def combine_estimates(estimates: Sequence[torch.Tensor], weights: torch.Tensor, method: str = "avg") -> torch.Tensor:
    """Combine member estimates ``[(B, S, ...)] * M`` (real or complex) with ``(M, S)`` weights by ``method``
    (:data:`COMBINE_METHODS`, see the module doc) → ``(B, S, ...)``."""
    if method not in COMBINE_METHODS:
        raise ValueError(f"combine={method!r}: expected one of {', '.join(COMBINE_METHODS)}")
    stacked = torch.stack(list(estimates))  # (M, B, S, ...)
    real = stacked.real if stacked.is_complex() else stacked
    w = weights.to(stacked.device, real.dtype).view(*weights.shape[:1], 1, weights.shape[1],
                                                    *([1] * (stacked.dim() - 3)))
    if method == "avg":
        return (stacked * w).sum(0) / w.sum(0)
    if method == "median":
        if stacked.is_complex():  # weighted median magnitude with the phase of the weighted mean
            mean = (stacked * w).sum(0) / w.sum(0)
            return torch.polar(_weighted_median(stacked.abs(), w), mean.angle())
        return _weighted_median(stacked, w)
    return _pick_by_magnitude(stacked, w, largest=method == "max_mag")


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
        combine: ``avg``, ``median``, ``min_mag`` or ``max_mag`` (module doc).
        domain: ``wave`` (samples) or ``spec`` (STFT bins of ``n_fft``/``hop_length``, then the inverse STFT).
    """

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[Sequence[float]] | None = None,
                 combine: str = "avg", domain: str = "wave", n_fft: int = 4096, hop_length: int = 1024):
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
        if combine not in COMBINE_METHODS:
            raise ValueError(f"BagOfModels: combine={combine!r}, expected one of {', '.join(COMBINE_METHODS)}")
        if domain not in DOMAINS:
            raise ValueError(f"BagOfModels: domain={domain!r}, expected one of {', '.join(DOMAINS)}")
        if domain == "spec" and not 0 < hop_length <= n_fft // 2:
            raise ValueError(f"BagOfModels: domain=spec needs 0 < hop_length <= n_fft // 2, got n_fft={n_fft}, "
                             f"hop_length={hop_length}")
        self.method, self.domain, self.n_fft, self.hop_length = combine, domain, int(n_fft), int(hop_length)

    def combine(self, estimates: Sequence[torch.Tensor]) -> torch.Tensor:
        """The members' ``(B, S, C, T)`` estimates (in member order) combined by ``combine`` in ``domain`` →
        ``(B, S, C, T)``."""
        if self.domain == "wave":
            return combine_estimates(estimates, self.weights, self.method)
        length = estimates[0].shape[-1]
        specs = [stft(est, self.n_fft, self.hop_length) for est in estimates]
        out = combine_estimates(specs, self.weights, self.method)
        return istft(out, self.n_fft, self.hop_length, length=length).to(estimates[0].dtype)

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
