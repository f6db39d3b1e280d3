"""Inference speed-ups behind one small interface: ``torch.compile`` of the network and autocast precision.

:func:`fast_forward` turns a network into the callable that :func:`mss.inference.overlap_add.apply_model` runs on
each batch of chunks ``(N, C, segment) -> (N, S, C, segment)``:

* ``compile=True``: ``torch.compile(net)`` (inductor; gcc on CPU), compiled once per network and process (a cache
  keyed by ``id(net)`` that checks the network is still alive) and reused for every file/track;
* ``precision``: ``fp32`` (default, plain), ``bf16`` or ``fp16``: the forward runs under :func:`torch.autocast` of
  that dtype and the estimates are returned as float32. ``fp16`` needs an accelerator: on CPU it is refused
  (:class:`ValueError`) rather than silently emulated. STFT/iSTFT stay in float32: the spectrogram models disable
  autocast around them, and :func:`torch.stft` is not autocast-listed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn

from mss.platform.allocator import tune_allocator

__all__ = ["PRECISIONS", "check_precision", "compiled", "fast_forward"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

_COMPILED: dict[int, tuple[weakref.ref, nn.Module]] = {}


def check_precision(precision: str | None, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (``None``: fp32, no autocast) on ``device``; a clear error otherwise."""
    name = "fp32" if precision is None else str(precision).lower()
    if name not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if name == "fp16" and device.type == "cpu":
        raise ValueError("precision=fp16 is not supported on CPU (no fast fp16 kernels); use precision=bf16 on CPU, "
                         "or fp16 with device=cuda")
    return PRECISIONS[name]


def compiled(net: nn.Module) -> nn.Module:
    """``torch.compile(net)``, built once per network and process."""
    entry = _COMPILED.get(id(net))
    if entry is not None and entry[0]() is net:
        return entry[1]
    module = torch.compile(net)
    _COMPILED[id(net)] = (weakref.ref(net), module)
    return module


def fast_forward(net: nn.Module, device: torch.device | str, *, compile: bool = False,
                 precision: str | None = "fp32") -> Callable[[torch.Tensor], torch.Tensor]:
    """``chunks (N, C, T) -> estimates (N, S, C, T)`` of ``net``, compiled and/or under autocast as asked.

    Also keeps freed heap memory in the process (:func:`mss.platform.allocator.tune_allocator`, glibc only): every
    batch of chunks allocates and frees hundreds of MB (spectrograms, feature maps), which glibc would otherwise map
    afresh and page-fault in again (Spleeter U-Net, 60 s track: 1.4 of 4.5 CPU-s in the kernel)."""
    dtype = check_precision(precision, device)
    tune_allocator()
    module = compiled(net) if compile else net
    if dtype is None:
        return module
    device_type = torch.device(device).type

    def forward(chunks: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type, dtype=dtype):
            est = module(chunks)
        return est.float()

    return forward
