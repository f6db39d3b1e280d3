"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") for ``nn.Linear``,
``nn.Conv1d`` and ``nn.Conv2d`` layers of any separator, and folding them back into the weights.

A wrapped layer computes ``base(x) + (alpha / rank) * B(A(dropout(x)))``: for a linear layer ``A`` is
``Linear(in, rank)`` and ``B`` ``Linear(rank, out)``; for a convolution ``A`` is a convolution ``in -> rank`` with the
base layer's kernel, stride, padding, dilation and padding mode and ``B`` a 1x1 convolution ``rank -> out``, so the
adapter is again a convolution of the base's shape with weight ``(alpha / rank) * B @ A``. ``A`` starts as PyTorch's
default (Kaiming-uniform) initialisation, ``B`` at zero: an adapted network starts as the base network.

The state dict of a wrapped layer ``name`` holds ``name.base.weight`` (and ``.base.bias``), ``name.lora_A.weight``
and ``name.lora_B.weight``; :func:`merge_lora_state` folds such a state dict into the plain network's keys (what
:mod:`mss.checkpoint` does with checkpoints carrying a ``"lora"`` config), :func:`merge_lora` does the same in place
on a network. No dependency on the ``peft`` package (it requires ``transformers`` and ``accelerate``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

__all__ = ["LoRA", "apply_lora", "lora_delta", "merge_lora", "merge_lora_state"]

ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """Weight increment ``scale * B @ A`` of an adapter, shaped like the base weight: ``A`` is ``(rank, in)`` or
    ``(rank, in, *kernel)``, ``B`` is ``(out, rank)`` or ``(out, rank, 1, ...)``."""
    return scale * torch.tensordot(lora_b.flatten(1), lora_a, dims=1)


class LoRA(nn.Module):
    """A linear or convolution layer ``base`` (frozen) plus a rank-``rank`` adapter scaled by ``alpha / rank``.

    Args:
        base: ``nn.Linear``, ``nn.Conv1d`` or ``nn.Conv2d`` (``groups=1``).
        rank: adapter rank ``r``; alpha: scale numerator (``alpha / r`` multiplies the adapter's output).
        dropout: dropout probability on the adapter's input (not on the base path).
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, ADAPTABLE):
            raise TypeError(f"LoRA adapts nn.Linear, nn.Conv1d and nn.Conv2d, not {type(base).__name__}")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base, self.rank, self.alpha, self.scale = base, int(rank), float(alpha), float(alpha) / int(rank)
        if isinstance(base, nn.Linear):
            self.lora_A = nn.Linear(base.in_features, rank, bias=False)
            self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        else:
            if base.groups != 1:
                raise ValueError("LoRA does not adapt grouped convolutions")
            conv = nn.Conv1d if isinstance(base, nn.Conv1d) else nn.Conv2d
            self.lora_A = conv(base.in_channels, rank, base.kernel_size, stride=base.stride, padding=base.padding,
                               dilation=base.dilation, padding_mode=base.padding_mode, bias=False)
            self.lora_B = conv(rank, base.out_channels, 1, bias=False)
        self.lora_A.to(base.weight)
        self.lora_B.to(base.weight)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:
        """The base weight (code reading ``layer.weight`` sees the frozen weight, not the adapted one)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scale

    def merged(self) -> nn.Module:
        """The base layer with the adapter folded into its weight (modified in place and returned)."""
        with torch.no_grad():
            self.base.weight += lora_delta(self.lora_A.weight, self.lora_B.weight, self.scale).to(self.base.weight)
        return self.base

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


def _eligible(net: nn.Module) -> dict[str, nn.Module]:
    """Layers LoRA can wrap: linear / 1-D / 2-D convolutions with ``groups=1``, outside ``nn.MultiheadAttention``
    (which reads its projections' weights directly, so a wrapper would be bypassed) and not already adapted."""
    inside = {f"{name}.{child}" if name else child
              for name, m in net.named_modules() if isinstance(m, (nn.MultiheadAttention, LoRA))
              for child, _ in m.named_modules() if child}
    return {name: m for name, m in net.named_modules()
            if isinstance(m, ADAPTABLE) and name not in inside
            and getattr(m, "groups", 1) == 1}


def apply_lora(net: nn.Module, target: Iterable[str], rank: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Wrap every eligible layer of ``net`` whose module name matches one of the ``target`` regexes (``re.search``)
    in a :class:`LoRA` adapter, in place, and freeze every other parameter of ``net`` (``requires_grad=False``).

    Eligible: ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` with ``groups=1``, not inside ``nn.MultiheadAttention``.
    Returns the wrapped module names; raises ``ValueError`` naming the eligible layers when no layer matches.
    """
    patterns = [re.compile(rx) for rx in ([target] if isinstance(target, str) else list(target))]
    if not patterns:
        raise ValueError("LoRA target: give at least one regex on module names (e.g. ['.'] for every layer)")
    eligible = _eligible(net)
    chosen = [name for name in eligible if any(rx.search(name) for rx in patterns)]
    if not chosen:
        names = list(eligible)
        raise ValueError(f"LoRA target {[rx.pattern for rx in patterns]} matches no nn.Linear/Conv1d/Conv2d layer of "
                         f"{type(net).__name__}; eligible layers ({len(names)}): {names[:12]}"
                         f"{' ...' if len(names) > 12 else ''}")
    net.requires_grad_(False)
    for name in chosen:
        net.set_submodule(name, LoRA(eligible[name], rank, alpha, dropout))
    return chosen


def merge_lora(net: nn.Module) -> nn.Module:
    """Fold every :class:`LoRA` adapter of ``net`` into its base layer's weight and put the base layer back in its
    place (in place; returns ``net``): the network then has its original structure and state-dict keys."""
    for name in [n for n, m in net.named_modules() if isinstance(m, LoRA)]:
        net.set_submodule(name, net.get_submodule(name).merged())
    return net


def merge_lora_state(state: Mapping[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """A state dict of a network with adapters (keys ``<layer>.base.*``, ``<layer>.lora_A.weight``,
    ``<layer>.lora_B.weight``) as the state dict of the plain network: ``<layer>.weight = base.weight +
    (alpha / rank) * B @ A`` (rank from ``A``'s shape), ``<layer>.bias = base.bias``; other keys unchanged."""
    layers = {k[: -len(".lora_A.weight")] for k in state if k.endswith(".lora_A.weight")}
    out = {}
    for key, value in state.items():
        layer = next((name for name in _prefixes(key) if name in layers), None)
        if layer is None:
            out[key] = value
            continue
        rest = key[len(layer) + 1:]
        if rest.startswith("base."):
            out[f"{layer}.{rest[5:]}"] = value
    for layer in layers:
        a, b = state[f"{layer}.lora_A.weight"], state[f"{layer}.lora_B.weight"]
        weight = out[f"{layer}.weight"]
        out[f"{layer}.weight"] = weight + lora_delta(a.to(weight.dtype), b.to(weight.dtype), alpha / a.shape[0])
    return out


def _prefixes(key: str) -> list[str]:
    """``a.b.c.d`` -> ``[a, a.b, a.b.c]``."""
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
