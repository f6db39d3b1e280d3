"""Separation of a mixture that arrives in blocks, with memory bounded by the segment, not the track.

Shape legend: ``B`` batch (tracks), ``S`` sources, ``C`` channels, ``n`` samples of one block.

:func:`separation_stream` builds, for the settings of :func:`mss.inference.overlap_add.apply_model` (segment,
overlap, batch size, shifts, window, TTA, bags, compile, precision), a stream with ``push(mix (B, C, n)) -> (B, S,
C, m)`` and ``finish() -> (B, S, C, rest)``: the outputs, concatenated, are ``apply_model``'s result on the whole
mixture. Each overlap-add pass cuts the same chunk grid (chunks of ``segment`` samples every ``stride``, the shifted
passes behind their leading zeros), runs the chunks in the same batches as soon as ``batch_size`` of them are
complete, and gives out every sample no later chunk reaches. A pass therefore holds about ``segment + batch_size ·
stride`` samples of input and of estimates, whatever the track's length; the shift, TTA and bag combinations are
pointwise in time and hold only what one pass is ahead of another. With one track per batch (``B = 1``, what
``mss.separate`` streams) the result is identical bit for bit; with several tracks the chunks of one start are
batched together, which can change the last bits.

A bag that combines its members in the spectrogram domain (``domain=spec``) is not pointwise in time: its stream
collects the whole mixture and separates it at :meth:`finish` (memory then grows with the track; logged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from mss.inference.bag import BagOfModels
from mss.inference.overlap_add import apply_model, check_chunking, chunk_count, chunk_window, draw_shifts, model_device
from mss.inference.speed import fast_forward
from mss.inference.tta import TTA_TRANSFORMS, check_tta

log = logging.getLogger(__name__)

__all__ = ["separation_stream"]


class OverlapAddStream:
    """One overlap-add pass over a streamed mixture (the chunk grid of ``apply_model``, ``lead`` zeros first, which
    are dropped from the output again: one pass of the shift trick). ``buffered`` is the number of samples held."""

    def __init__(self, forward: Callable[[Tensor], Tensor], sources: int, segment: int, stride: int,
                 batch_size: int, window: Tensor, device: torch.device, lead: int = 0, full_batches: bool = False):
        self.sources = sources
        self.forward, self.segment, self.stride, self.batch_size = forward, segment, stride, batch_size
        self.window, self.device, self.full_batches = window, device, full_batches
        self._lead = lead  # zeros still to prepend (first push)
        self._drop = lead  # output samples still to drop
        self._buf: Tensor | None = None  # input from sample self._buf_start on (padded coordinates)
        self._buf_start = 0
        self._total = 0  # input samples received, leading zeros included
        self._next = 0  # start of the next chunk not yet queued
        self._ready: list[int] = []  # queued chunk starts, not yet run
        self._acc: Tensor | None = None  # weighted estimate sums from sample self._acc_start on
        self._weights: Tensor | None = None
        self._acc_start = 0
        self.buffered = 0

    def push(self, mix: Tensor) -> Tensor:
        if self._lead:
            mix, self._lead = nn.functional.pad(mix, (self._lead, 0)), 0
        self._buf = mix if self._buf is None else torch.cat([self._buf, mix], dim=-1)
        self._total += mix.shape[-1]
        while self._next + self.segment <= self._total:
            self._ready.append(self._next)
            self._next += self.stride
        while len(self._ready) >= self.batch_size:
            self._run(self._ready[: self.batch_size])
            self._ready = self._ready[self.batch_size :]
        return self._emit(self._ready[0] if self._ready else self._next)

    def finish(self) -> Tensor:
        if self._buf is None:
            raise ValueError("separation stream: no samples were pushed")
        n = chunk_count(self._total, self.segment, self.stride)
        self._ready += list(range(self._next, n * self.stride, self.stride))
        self._next = n * self.stride
        for i in range(0, len(self._ready), self.batch_size):
            self._run(self._ready[i : i + self.batch_size])
        self._ready = []
        return self._emit(self._total)

    def _run(self, starts: list[int]) -> None:
        buf, segment, total = self._buf, self.segment, self._total
        batch = buf.shape[0]
        chunks = torch.cat([nn.functional.pad(buf[..., s - self._buf_start : s - self._buf_start + segment],
                                              (0, max(0, s + segment - total))) for s in starts])  # (N·B, C, seg)
        count = len(chunks)
        if self.full_batches and count < self.batch_size * batch:
            chunks = nn.functional.pad(chunks, (0, 0, 0, 0, 0, self.batch_size * batch - count))
        with torch.inference_mode():
            est = self.forward(chunks.to(self.device))[:count]
        est = est.to(buf.device)
        end = starts[-1] + min(segment, total - starts[-1])
        if self._acc is None:
            dtype = est.dtype if est.is_floating_point() else torch.float32
            self._acc = torch.zeros(batch, *est.shape[1:3], 0, dtype=dtype, device=buf.device)
            self._weights = torch.zeros(0, device=buf.device)
        grow = end - self._acc_start - self._acc.shape[-1]
        if grow > 0:
            self._acc = nn.functional.pad(self._acc, (0, grow))
            self._weights = nn.functional.pad(self._weights, (0, grow))
        window = self.window.to(buf.device)
        for k, s in enumerate(starts):
            valid = min(segment, total - s)
            at = s - self._acc_start
            self._weights[at : at + valid] += window[:valid]
            self._acc[..., at : at + valid] += est[k * batch : (k + 1) * batch, ..., :valid] * window[:valid]
        self.buffered = max(self.buffered, self._buf.shape[-1] + self._acc.shape[-1])

    def _emit(self, final: int) -> Tensor:
        """Divide and give out the samples before ``final`` (no chunk still to run reaches them)."""
        keep = min(self._ready[0] if self._ready else self._next, self._total) - self._buf_start
        self._buf, self._buf_start = self._buf[..., keep:], self._buf_start + keep
        if self._acc is None or final <= self._acc_start:
            return self._buf.new_zeros(self._buf.shape[0], self.sources, self._buf.shape[1], 0)
        n = final - self._acc_start
        out = self._acc[..., :n] / self._weights[:n]
        self._acc, self._weights, self._acc_start = self._acc[..., n:], self._weights[n:], final
        if self._drop:
            cut = min(self._drop, out.shape[-1])
            out, self._drop = out[..., cut:], self._drop - cut
        return out


class _Combine:
    """Children streams on the same mixture (each through its own pointwise ``transform`` / ``inverse``), their
    outputs combined by ``combine([outs]) -> out`` as soon as all children have given the same samples."""

    def __init__(self, children: Sequence, combine: Callable[[list[Tensor]], Tensor],
                 transforms: Sequence[tuple[Callable, Callable] | None] | None = None):
        self.children = list(children)
        self.combine = combine
        self.transforms = list(transforms) if transforms is not None else [None] * len(self.children)
        self._pending: list[Tensor | None] = [None] * len(self.children)

    @property
    def buffered(self) -> int:
        held = sum(p.shape[-1] for p in self._pending if p is not None)
        return held + sum(child.buffered for child in self.children)

    def push(self, mix: Tensor) -> Tensor:
        return self._gather([child.push(mix if t is None else t[0](mix))
                             for child, t in zip(self.children, self.transforms)])

    def finish(self) -> Tensor:
        return self._gather([child.finish() for child in self.children])

    def _gather(self, outs: list[Tensor]) -> Tensor:
        for i, (out, t) in enumerate(zip(outs, self.transforms)):
            out = out if t is None else t[1](out)
            self._pending[i] = out if self._pending[i] is None else torch.cat([self._pending[i], out], dim=-1)
        n = min(p.shape[-1] for p in self._pending)
        ready = [p[..., :n] for p in self._pending]
        self._pending = [p[..., n:] for p in self._pending]
        return self.combine(ready)


def _mean(outs: list[Tensor]) -> Tensor:
    """The average in ``apply_model``'s order of operations (first, then each other added, then divided)."""
    total = outs[0].clone()
    for out in outs[1:]:
        total.add_(out)
    return total.div_(len(outs))


class _WholeTrack:
    """Collects the mixture and separates it with ``apply_model`` at :meth:`finish` (models that are not
    pointwise in time across chunks: a bag combined in the spectrogram domain)."""

    def __init__(self, model: nn.Module, options: dict):
        self.model, self.options, self._blocks = model, options, []
        self.buffered = 0

    def push(self, mix: Tensor) -> Tensor:
        self._blocks.append(mix)
        self.buffered += mix.shape[-1]
        return mix.new_zeros(mix.shape[0], len(self.model.sources), mix.shape[1], 0)

    def finish(self) -> Tensor:
        if not self._blocks:
            raise ValueError("separation stream: no samples were pushed")
        return apply_model(self.model, torch.cat(self._blocks, dim=-1), **self.options)


def separation_stream(model: nn.Module, channels: int, *, segment: int | None = None, overlap: float = 0.25,
                      batch_size: int = 4, shifts: int = 0, max_shift: int | None = None, weight: str = "triangle",
                      transition_power: float = 1.0, device: torch.device | str | None = None,
                      tta: Sequence[str] | None = (), compile: bool = False, precision: str | None = "fp32"):
    """A stream separating ``(B, channels, n)`` blocks as :func:`mss.inference.overlap_add.apply_model` separates
    the whole mixture with the same arguments (module doc). The shift offsets are drawn from torch's global RNG in
    ``apply_model``'s order, so a seeded stream equals a seeded ``apply_model`` call."""
    options = dict(segment=segment, overlap=overlap, batch_size=batch_size, shifts=shifts, max_shift=max_shift,
                   weight=weight, transition_power=transition_power, device=device, compile=compile,
                   precision=precision)
    if _needs_whole_track(model):
        log.info("%s combines its members in the spectrogram domain: the whole track is separated at once "
                 "(memory grows with the track)", type(model).__name__)
        return _WholeTrack(model, dict(options, tta=tta))
    return _build(model, channels, check_tta(tta), options)


def _needs_whole_track(model: nn.Module) -> bool:
    return isinstance(model, BagOfModels) and (model.domain != "wave" or any(map(_needs_whole_track, model.models)))


def _build(model: nn.Module, channels: int, transforms: list[str], options: dict):
    if transforms:
        names = [t for t in transforms if not (t == "flip_channels" and channels == 1)]
        if len(names) < len(transforms):
            log.info("tta: flip_channels skipped for a mono mixture")
        children = [_build(model, channels, [], options)] + [_build(model, channels, [], options) for _ in names]
        return _Combine(children, _mean, [None] + [TTA_TRANSFORMS[t] for t in names])
    if isinstance(model, BagOfModels):
        return _Combine([_build(member, channels, [], options) for member in model.models], model.combine)
    segment = options["segment"]
    if segment is None:
        segment = getattr(model, "segment_length", None)
        if segment is None:
            raise ValueError("segment is required: the model has no `segment_length` attribute")
    segment, stride = check_chunking(int(segment), options["overlap"], options["batch_size"])
    device = options["device"]
    device = torch.device(device) if device is not None else model_device(model, torch.device("cpu"))
    forward = fast_forward(model, device, compile=options["compile"], precision=options["precision"])
    window = chunk_window(segment, options["weight"], options["transition_power"])
    sources = len(model.sources)
    make = lambda lead=0: OverlapAddStream(forward, sources, segment, stride, options["batch_size"],  # noqa: E731
                                           window, device, lead, options["compile"])
    shifts = options["shifts"]
    if shifts <= 0:
        return make()
    max_shift, offsets = draw_shifts(model, shifts, options["max_shift"])
    return _Combine([make(max_shift - o) for o in offsets], _mean)
