"""Stride-2 transposed convolution computed as a sub-pixel convolution (inference speed-up, same weights).

A ``ConvTranspose2d`` with stride 2 and a ``kh x kw`` kernel writes output row ``t = 2a + p`` (parity ``p``) from
input rows ``a - j`` with kernel rows ``p + 2j``: each of the four output parities ``(p, q)`` is an ordinary
(correlation) convolution of the input with a ``ceil(k / 2)``-tap sub-kernel. Stacking the four sub-kernels as
``4 O`` output channels gives one ``Conv2d``; :func:`torch.nn.functional.pixel_shuffle` interleaves the parities
back into the ``2x`` grid. Same arithmetic (up to float summation order), no new parameters: the sub-kernels are a
re-arrangement of the transposed-conv weight (:func:`subpixel_weight`). oneDNN runs this forward convolution
faster than its transposed convolution when the layer has few output channels.

Shape legend: ``B`` batch, ``I`` input channels, ``O`` output channels, ``H x W`` input image, ``kh x kw`` kernel,
``Jh x Jw = ceil(kh / 2) x ceil(kw / 2)`` sub-kernel.
"""

from __future__ import annotations

import torch.nn.functional as F_
from torch import Tensor

__all__ = ["conv_transpose2d_stride2", "subpixel_bias", "subpixel_weight"]


def subpixel_weight(weight: Tensor) -> Tensor:
    """Sub-kernels of a stride-2 transposed-conv weight.

    Args:
        weight: ``ConvTranspose2d`` weight ``(I, O, kh, kw)`` (``groups=1``).

    Returns:
        ``Conv2d`` weight ``(4 O, I, Jh, Jw)``; output channel ``4 o + 2 p + q`` computes parity ``(p, q)`` of output
        channel ``o`` (the layout :func:`torch.nn.functional.pixel_shuffle` expects). Tap ``j`` (kernel row
        ``p + 2 j``, input row ``a - j``) sits at sub-kernel row ``Jh - 1 - j``; missing taps are zero.
    """
    i, o, kh, kw = weight.shape
    jh, jw = -(-kh // 2), -(-kw // 2)
    out = weight.new_zeros(o, 2, 2, i, jh, jw)
    for p in range(2):
        for q in range(2):
            taps = weight[:, :, p::2, q::2].flip(-2, -1).transpose(0, 1)  # (O, I, nh, nw), row r = tap nh-1-r
            out[:, p, q, :, jh - taps.shape[-2]:, jw - taps.shape[-1]:] = taps
    return out.reshape(4 * o, i, jh, jw)


def subpixel_bias(bias: Tensor) -> Tensor:
    """``(O,)`` transposed-conv bias -> ``(4 O,)`` bias of the sub-pixel convolution."""
    return bias.repeat_interleave(4)


def _axis(n: int, taps: int, start: int, size: int) -> tuple[int, int, int]:
    """(pad before, pad after, crop start) along one axis: the sub-pixel conv computes only the input positions
    ``a`` with ``2a`` or ``2a + 1`` in ``[start, start + size)`` (negative pads crop)."""
    first, last = start // 2, (start + size - 1) // 2
    return taps - 1 - first, last - n + 1, start - 2 * first


def conv_transpose2d_stride2(x: Tensor, weight: Tensor, bias: Tensor | None, kernel: tuple[int, int],
                             start: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """A window of ``conv_transpose2d(x, w, b, stride=2)`` (no padding) via one ``conv2d`` + ``pixel_shuffle``.

    Args:
        x: input ``(B, I, H, W)``.
        weight: :func:`subpixel_weight` of the transposed-conv weight, ``(4 O, I, Jh, Jw)``.
        bias: :func:`subpixel_bias` of its bias ``(4 O,)`` or ``None``.
        kernel: the transposed conv's ``(kh, kw)``.
        start, size: the window of the full output ``(B, O, 2H + kh - 2, 2W + kw - 2)`` to return (rows
            ``start[0] : start[0] + size[0]``, columns likewise), inside the full output.

    Returns:
        ``(B, O, size[0], size[1])``.
    """
    jh, jw = weight.shape[-2:]
    if (jh, jw) != (-(-kernel[0] // 2), -(-kernel[1] // 2)):
        raise ValueError(f"sub-kernel {(jh, jw)} does not match the transposed-conv kernel {kernel}")
    pb_h, pa_h, c_h = _axis(x.shape[-2], jh, start[0], size[0])
    pb_w, pa_w, c_w = _axis(x.shape[-1], jw, start[1], size[1])
    y = F_.pixel_shuffle(F_.conv2d(F_.pad(x, (pb_w, pa_w, pb_h, pa_h)), weight, bias), 2)
    return y[..., c_h:c_h + size[0], c_w:c_w + size[1]]
