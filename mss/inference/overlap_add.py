"""Chunked overlap-add inference with bounded memory, and the random-shift trick.

Shape legend: ``B`` batch (tracks), ``S`` sources, ``C`` channels, ``T`` samples, ``N`` chunks in one model call.

A track is cut into chunks of exactly ``segment`` samples starting every ``stride = segment·(1 − overlap)`` samples,
from sample 0 until the whole track is covered; the last chunk is zero-padded past the end of the track (no reflect
padding: at the track borders the model sees zeros, exactly as when it is applied to the whole track with zero
context). Chunks are run through the model in batches of at most ``batch_size`` on ``device``; each result is moved back
to the mix's device at once, weighted by a strictly positive window and added into an output buffer that lives on the
mix's device, so accelerator memory stays bounded by one batch of chunks whatever the track length. The sum is finally
divided by the summed weights.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn

from mss.inference.bag import BagOfModels
from mss.inference.speed import fast_forward
from mss.inference.tta import TTA_TRANSFORMS, check_tta

log = logging.getLogger(__name__)

__all__ = ["apply_model", "check_chunking", "chunk_count", "chunk_window", "draw_shifts", "model_device"]

DEFAULT_MAX_SHIFT = 22050  # half a second at 44.1 kHz


def chunk_window(segment: int, kind: str = "triangle", power: float = 1.0) -> torch.Tensor:
    """Overlap-add weight of one chunk, strictly positive everywhere.

    Args:
        segment: chunk length in samples.
        kind: ``"triangle"`` (Demucs-like ramp ``1, 2, …, peak, …, 2, 1``), ``"hann"`` (a Hann window of
            ``segment + 2`` points without its zero end points) or ``"ones"``.
        power: exponent applied to the window (``transition_power``); larger values sharpen the cross-fades.

    Returns:
        ``(segment,)`` float32 weights with maximum 1 and minimum > 0.
    """
    if kind == "triangle":
        half = segment // 2
        w = torch.cat([torch.arange(1, half + 1), torch.arange(segment - half, 0, -1)]).float()
    elif kind == "hann":
        w = torch.hann_window(segment + 2, periodic=False, dtype=torch.float64)[1:-1].float()
    elif kind == "ones":
        w = torch.ones(segment)
    else:
        raise ValueError(f"unknown window {kind!r}; expected 'triangle', 'hann' or 'ones'")
    return (w / w.max()) ** power


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return fallback


def check_chunking(segment: int, overlap: float, batch_size: int) -> tuple[int, int]:
    """``(segment, stride)`` of the chunk grid, with a clear error for settings that give none."""
    if segment <= 0:
        raise ValueError(f"segment must be positive, got {segment}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return segment, max(1, int(segment * (1.0 - overlap)))


def draw_shifts(model: nn.Module, shifts: int, max_shift: int | None) -> tuple[int, list[int]]:
    """``(max_shift, offsets)`` of the shift trick: ``shifts`` offsets in ``[0, max_shift)`` from torch's global RNG
    (``max_shift`` defaults to half the model's sample rate, else :data:`DEFAULT_MAX_SHIFT`)."""
    if max_shift is None:
        sample_rate = getattr(model, "sample_rate", None)
        max_shift = int(sample_rate) // 2 if sample_rate else DEFAULT_MAX_SHIFT
    if max_shift < 1:
        raise ValueError(f"max_shift must be >= 1, got {max_shift}")
    return max_shift, [int(o) for o in torch.randint(0, max_shift, (shifts,))]


def chunk_count(length: int, segment: int, stride: int) -> int:
    """Number of chunks starting at ``0, stride, 2·stride, …`` needed to cover ``length`` samples."""
    return 1 if length <= segment else math.ceil((length - segment) / stride) + 1


def _overlap_add(
    model: nn.Module,
    mix: torch.Tensor,
    segment: int,
    stride: int,
    batch_size: int,
    window: torch.Tensor,
    device: torch.device,
    bar: object | None,
    forward=None,
    full_batches: bool = False,
) -> torch.Tensor:
    """Separate ``mix (B, C, T)`` chunk by chunk; returns ``(B, S, C, T)`` on ``mix.device``. ``forward`` replaces
    ``model`` for the calls (:func:`mss.inference.speed.fast_forward`); ``full_batches``: the last batch is padded with
    zero chunks to ``batch_size`` (one input shape: a compiled network is not recompiled)."""
    forward = model if forward is None else forward
    batch, _, length = mix.shape
    n_chunks = chunk_count(length, segment, stride)
    starts = [k * stride for k in range(n_chunks)]
    window = window.to(mix.device)
    weight_sum = torch.zeros(length, device=mix.device)
    for start in starts:
        weight_sum[start : start + segment] += window[: min(segment, length - start)]

    jobs = [(b, start) for b in range(batch) for start in starts]
    out: torch.Tensor | None = None
    for i in range(0, len(jobs), batch_size):
        group = jobs[i : i + batch_size]
        chunks = torch.stack(
            [
                nn.functional.pad(mix[b, :, start : start + segment], (0, max(0, start + segment - length)))
                for b, start in group
            ]
        )  # (N, C, segment)
        if full_batches and len(group) < batch_size:
            chunks = nn.functional.pad(chunks, (0, 0, 0, 0, 0, batch_size - len(group)))
        with torch.inference_mode():
            est = forward(chunks.to(device))[: len(group)]  # (N, S, C, segment)
        est = est.to(mix.device)
        if out is None:
            dtype = est.dtype if est.is_floating_point() else torch.float32
            out = torch.zeros(batch, est.shape[1], est.shape[2], length, dtype=dtype, device=mix.device)
        for (b, start), chunk in zip(group, est):
            valid = min(segment, length - start)
            out[b, :, :, start : start + valid] += chunk[..., :valid] * window[:valid]
        if bar is not None:
            bar.update(len(group))  # type: ignore[attr-defined]
    assert out is not None
    return out.div_(weight_sum)


@torch.no_grad()
def apply_model(
    model: nn.Module,
    mix: torch.Tensor,
    *,
    segment: int | None = None,
    overlap: float = 0.25,
    batch_size: int = 4,
    shifts: int = 0,
    max_shift: int | None = None,
    weight: str = "triangle",
    transition_power: float = 1.0,
    device: torch.device | str | None = None,
    progress: bool = False,
    tta: Sequence[str] | None = (),
    compile: bool = False,
    precision: str | None = "fp32",
) -> torch.Tensor:
    """Separate a (batch of) mixture(s) of any length with chunked overlap-add inference.

    Args:
        model: separator with ``forward((N, C, segment)) -> (N, S, C, segment)``. Its train/eval mode is left
            untouched (call ``model.eval()`` first).
        mix: ``(C, T)`` or ``(B, C, T)`` mixture; the output is accumulated on its device.
        segment: chunk length in samples; defaults to ``model.segment_length`` (for a
            :class:`~mss.inference.bag.BagOfModels`, each member's own).
        overlap: fraction of a chunk shared with the next one, in ``[0, 1)``.
        batch_size: most chunks per model call.
        shifts: if > 0, average over ``shifts`` random time shifts in ``[0, max_shift)`` (the Demucs shift trick);
            the offsets come from torch's global RNG, so results are deterministic given ``torch.manual_seed``.
        max_shift: largest shift in samples; defaults to ``model.sample_rate // 2`` if the model has
            ``sample_rate``, else 22050 (0.5 s at 44.1 kHz).
        weight: chunk window, ``"triangle"``, ``"hann"`` or ``"ones"`` (see :func:`chunk_window`).
        transition_power: exponent applied to the window.
        device: where the model runs; defaults to the model's device (or the mix's for a parameterless model).
        progress: show a tqdm progress bar over chunks.
        tta: test-time augmentations (:mod:`mss.inference.tta`: ``flip_channels``, ``flip_sign``); the plain pass
            and one pass per transform (each with the settings above) are averaged.
        compile: run ``torch.compile(model)`` (compiled once per network and process; :mod:`mss.inference.speed`).
        precision: ``fp32`` (plain), ``bf16`` or ``fp16`` (autocast; fp16 refused on CPU); estimates stay float32.

    Returns:
        ``(S, C, T)`` or ``(B, S, C, T)`` separated stems, same length and device as ``mix``.

    Side effect (glibc only, :func:`mss.inference.speed.fast_forward`): freed heap memory stays in the process for
    reuse by the next batch instead of being returned to the OS and page-faulted in again.
    """
    transforms = check_tta(tta)
    if transforms:
        options = dict(segment=segment, overlap=overlap, batch_size=batch_size, shifts=shifts, max_shift=max_shift,
                       weight=weight, transition_power=transition_power, device=device, progress=progress,
                       compile=compile, precision=precision)
        out, passes = apply_model(model, mix, **options), 1
        for name in transforms:
            if name == "flip_channels" and mix.shape[-2] == 1:
                log.info("tta: flip_channels skipped for a mono mixture")
                continue
            forward, inverse = TTA_TRANSFORMS[name]
            out = out.add_(inverse(apply_model(model, forward(mix), **options)))
            passes += 1
        return out.div_(passes)
    if isinstance(model, BagOfModels):  # each member with its own segment length, then the per-source weights
        options = dict(segment=segment, overlap=overlap, batch_size=batch_size, shifts=shifts, max_shift=max_shift,
                       weight=weight, transition_power=transition_power, device=device, progress=progress,
                       compile=compile, precision=precision)
        mix3 = mix.unsqueeze(0) if mix.dim() == 2 else mix
        out = model.combine([apply_model(member, mix3, **options) for member in model.models])
        return out[0] if mix.dim() == 2 else out
    if segment is None:
        segment = getattr(model, "segment_length", None)
        if segment is None:
            raise ValueError("segment is required: the model has no `segment_length` attribute")
    segment, stride = check_chunking(int(segment), overlap, batch_size)
    if mix.dim() not in (2, 3):
        raise ValueError(f"mix must be (C, T) or (B, C, T), got shape {tuple(mix.shape)}")

    squeeze = mix.dim() == 2
    mix3 = mix.unsqueeze(0) if squeeze else mix
    if not mix3.is_floating_point():
        mix3 = mix3.float()
    batch, _, length = mix3.shape
    device = torch.device(device) if device is not None else model_device(model, mix3.device)
    window = chunk_window(segment, weight, transition_power)
    forward = fast_forward(model, device, compile=compile, precision=precision)

    if shifts > 0:
        max_shift, offsets = draw_shifts(model, shifts, max_shift)
        # shifted input: the mix preceded by (max_shift - offset) zeros, so the chunk grid moves over the content
        lengths = [length + max_shift - o for o in offsets]
    else:
        offsets, lengths = [], [length]

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(
            total=sum(batch * chunk_count(n, segment, stride) for n in lengths), unit="chunk", desc="separating"
        )
    try:
        if shifts == 0:
            out = _overlap_add(model, mix3, segment, stride, batch_size, window, device, bar, forward, compile)
        else:
            assert max_shift is not None
            out = None
            for offset in offsets:
                lead = max_shift - offset
                shifted = nn.functional.pad(mix3, (lead, 0))
                est = _overlap_add(model, shifted, segment, stride, batch_size, window, device, bar, forward, compile)[
                    ..., lead:
                ]
                out = est.contiguous() if out is None else out.add_(est)
            out = out.div_(shifts)
    finally:
        if bar is not None:
            bar.close()
    return out[0] if squeeze else out
