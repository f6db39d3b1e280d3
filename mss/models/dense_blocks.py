"""Dense blocks shared by the Sony DenseNet-style separators (MMDenseNet / MMDenseLSTM, D3Net: :class:`D3Block`).

Both families use the same "grow then split" form of a dense block, read from Takahashi & Mitsufuji's papers and
used the same way by the Sony D3Net code and tky823's PyTorch MMDenseNet: with ``L`` layers of growth ``g``

1. layer 0 maps the block input to ``g * L`` channels (BN -> ReLU -> conv);
2. for ``i = 1 .. L-1``: the first ``g`` channels of the running sum are split off, layer ``i`` maps them to
   ``g * (L - i)`` channels, which are added to the remaining channels of the running sum;
3. the output is the last ``g`` channels.

Layer ``i`` of a *dilated* block uses dilation ``2 ** i``. Convolutions are "same"-padded with zeros outside the
convolution, the extra row / column of an even kernel at the end (bottom / right), as in the references.

Shape legend: ``B`` batch, ``K`` feature channels, ``F`` frequency bins, ``N`` frames; feature maps are
``(B, K, F, N)`` (frequency on the first spatial axis).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F_
from torch import Tensor, nn

__all__ = ["ConvUnit", "D3Block", "DenseBlock", "pad_same", "pair"]


def pair(value: int | Sequence[int]) -> tuple[int, int]:
    """``(a, a)`` for an int, else the two values of a length-2 sequence."""
    if isinstance(value, int):
        return value, value
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair (bins, frames), got {value}")
    return value


def pad_same(x: Tensor, kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> Tensor:
    """Zero-pad ``(B, K, F, N)`` so an unpadded conv of ``kernel``/``dilation`` keeps ``F`` and ``N``; the larger half
    of an odd total padding goes after (bottom / right)."""
    pf, pn = (kernel[0] - 1) * dilation[0], (kernel[1] - 1) * dilation[1]
    if pf == 0 and pn == 0:
        return x
    return F_.pad(x, (pn // 2, pn - pn // 2, pf // 2, pf - pf // 2))


class ConvUnit(nn.Module):
    """BatchNorm -> ReLU -> same-padded conv (with bias): ``(B, in, F, N) -> (B, out, F, N)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int] = 3,
                 dilation: int = 1, eps: float = 1e-5):
        super().__init__()
        self.kernel, self.dilation = pair(kernel_size), pair(dilation)
        self.norm = nn.BatchNorm2d(in_channels, eps=eps)
        self.conv = nn.Conv2d(in_channels, out_channels, self.kernel, dilation=self.dilation)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(pad_same(F_.relu(self.norm(x)), self.kernel, self.dilation))


class DenseBlock(nn.Module):
    """Dense block of ``layers`` layers of growth ``growth`` (module docstring): ``(B, in, F, N) -> (B, growth, F, N)``.

    Args:
        in_channels: input channels.
        growth: channels added per layer (= output channels).
        layers: number of layers ``L >= 1``.
        kernel_size: conv kernel ``(bins, frames)`` or an int.
        dilated: layer ``i`` dilated by ``2 ** i`` (else all 1).
        eps: BatchNorm epsilon.
    """

    def __init__(self, in_channels: int, growth: int, layers: int, kernel_size: int | Sequence[int] = 3,
                 dilated: bool = False, eps: float = 1e-5):
        super().__init__()
        if growth < 1 or layers < 1:
            raise ValueError(f"DenseBlock: growth and layers must be >= 1, got growth={growth}, layers={layers}")
        self.growth, self.out_channels = growth, growth
        self.layers = nn.ModuleList(
            ConvUnit(in_channels if i == 0 else growth, growth * (layers - i), kernel_size,
                     dilation=2 ** i if dilated else 1, eps=eps)
            for i in range(layers))

    def forward(self, x: Tensor) -> Tensor:
        acc = self.layers[0](x)
        for layer in self.layers[1:]:
            head, rest = acc[:, :self.growth], acc[:, self.growth:]
            acc = rest + layer(head)
        return acc


class D3Block(nn.Module):
    """D3Net's multi-dilated dense block of dense blocks (Takahashi & Mitsufuji, CVPR 2021):
    ``(B, in, H, W) -> (B, growth, H, W)``.

    The "grow then split" scheme of :class:`DenseBlock` one level up: unit 0 is a dilated :class:`DenseBlock` of
    growth ``growth * blocks``; for ``i = 1 .. blocks-1`` the first ``growth`` channels of the running sum go through a
    dilated :class:`DenseBlock` of growth ``growth * (blocks - i)``, added to the remaining channels; the output is the
    last ``growth`` channels. Every unit has ``layers`` layers with dilations 1, 2, 4, ...

    Args:
        in_channels: input channels.
        growth: output channels ``k``.
        layers: layers per unit ``L``.
        blocks: units ``M``.
        kernel_size: conv kernel.
        eps: BatchNorm epsilon.
    """

    def __init__(self, in_channels: int, growth: int, layers: int, blocks: int, kernel_size: int | Sequence[int] = 3,
                 eps: float = 1e-5):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"D3Block: blocks must be >= 1, got {blocks}")
        self.growth, self.out_channels = growth, growth
        self.units = nn.ModuleList(
            DenseBlock(in_channels if i == 0 else growth, growth * (blocks - i), layers, kernel_size, True, eps)
            for i in range(blocks))

    def forward(self, x: Tensor) -> Tensor:
        acc = self.units[0](x)
        for unit in self.units[1:]:
            acc = acc[:, self.growth:] + unit(acc[:, :self.growth])
        return acc
