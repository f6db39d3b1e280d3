"""museval's framing and the frame-wise pass: per-frame energies, the digital-silence rule, SDR.

Shape legend: ``S`` sources, ``C`` channels, ``T`` samples, ``N`` frames, ``W`` frame length.
"""

from __future__ import annotations

import math

import torch

from mss.metrics.bss_eval.scratch import STREAM_BYTES, chunk_size

__all__ = ["channel_sum", "frame_energies", "frame_sdr", "frames", "n_frames", "safe_db", "silent_sources"]


def n_frames(length: int, win: int, hop: int) -> tuple[int, int]:
    """museval's framing: ``(number of frames, frame length)`` for a signal of ``length`` samples.

    ``floor((T − win + hop) / hop)`` frames of ``win`` samples when ``win < T`` (trailing partial frame dropped), else
    one frame covering the whole signal.
    """
    if win <= 0 or hop <= 0:
        raise ValueError(f"win={win} and hop={hop} must be positive numbers of samples")
    if win < length:
        return (length - win + hop) // hop, win
    return 1, length


def frames(x: torch.Tensor, t0: int, t1: int, win: int, hop: int) -> torch.Tensor:
    """Frames ``t0..t1-1`` of ``x (..., T)`` as a view ``(..., t1 - t0, win)``."""
    return x[..., t0 * hop:(t1 - 1) * hop + win].unfold(-1, win, hop)


def channel_sum(x: torch.Tensor) -> torch.Tensor:
    """``(..., C, T) -> (..., T)``: ``x_0 + x_1 + …`` in order, in the input dtype (numpy's sum over a few channels),
    by explicit adds: torch reduces a small strided dim slowly."""
    out = x[..., 0, :]
    for c in range(1, x.shape[-2]):
        out = out + x[..., c, :]
    return out


def safe_db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``10·log10(num / den)`` with ``+inf`` where ``den == 0`` (museval's ``_safe_db``)."""
    return torch.where(den == 0, torch.full_like(num, math.inf), 10.0 * torch.log10(num / den))


def frame_sdr(references: torch.Tensor, estimates: torch.Tensor, win: int = 44100, hop: int = 44100, *,
              chunk_frames: int | None = None) -> torch.Tensor:
    """museval v4 SDR per frame (a plain per-frame SNR), exactly as ``museval.evaluate`` computes it.

    Cheap (a few passes over the signals), batched and device-agnostic: usable for validation during training.

    Args:
        references: true stems ``(..., S, C, T)``.
        estimates: estimates, same shape.
        win, hop: frame length and hop in samples (SiSEC18: one second each).
        chunk_frames: frames processed at once (default: a ~100 MB working-set budget).

    Returns:
        ``(..., S, N)`` float64 SDR in dB: NaN for all sources of a frame in which any reference or estimate source is
        digitally silent, ``+inf`` for an error-free frame.
    """
    if references.shape != estimates.shape or references.dim() < 3:
        raise ValueError(f"expected equal (..., S, C, T) shapes, got references {tuple(references.shape)} and "
                         f"estimates {tuple(estimates.shape)}")
    num, den, quiet_ref, quiet_est = frame_energies(references, estimates, int(win), int(hop), chunk_frames)
    return safe_db(num, den).masked_fill((quiet_ref | quiet_est).any(-2, keepdim=True), math.nan)


def frame_energies(references, estimates, win, hop, chunk_frames):
    """Per frame: reference energy and error energy ``(..., S, N)`` (float64), and per source whether its channel
    sum is zero over the whole frame (museval's silence rule) for the references and the estimates ``(..., S, N)``.

    One streaming pass over the inputs in frame chunks, on their own memory layout (museval's ``(S, T, C)`` arrays
    are read contiguously): a float64 view of the references (or one cast) per chunk, the error in a reused buffer,
    energies by 2-norm reductions."""
    nwin, wlen = n_frames(references.shape[-1], win, hop)
    lead, n_ch = references.shape[:-2], references.shape[-2]
    step = chunk_size(wlen * math.prod(lead) * n_ch * 8, nwin, chunk_frames, budget=STREAM_BYTES)
    num = references.new_empty(*lead, nwin, dtype=torch.float64)
    den, quiet_ref = torch.empty_like(num), num.new_empty(num.shape, dtype=torch.bool)
    quiet_est = torch.empty_like(quiet_ref)
    buffer = torch.empty_like(references[..., :(step - 1) * hop + wlen], dtype=torch.float64)
    for t in range(0, nwin, step):
        t1 = min(t + step, nwin)
        a, b = t * hop, (t1 - 1) * hop + wlen
        ref = references[..., a:b].to(torch.float64)  # a view when already float64
        err = buffer[..., :b - a].copy_(estimates[..., a:b]).sub_(ref)  # 2-3x faster than a promoting torch.sub
        num[..., t:t1] = _frames_norm(ref, wlen, hop).square_()
        den[..., t:t1] = _frames_norm(err, wlen, hop).square_()
        for quiet, x in ((quiet_ref, references), (quiet_est, estimates)):
            quiet[..., t:t1] = _frames_quiet(x[..., a:b], wlen, hop)
    return num, den, quiet_ref, quiet_est


def silent_sources(stems: torch.Tensor, quiet: torch.Tensor, wlen: int, hop: int) -> torch.Tensor:
    """museval's whole-signal silence rule, ``(S,)`` True where every sample's channel sum is 0, for ``stems
    (S, C, T)`` whose frames' silence :func:`frame_energies` gave (``quiet (S, N)``): when the frames tile the start
    of the signal (``hop <= wlen``) only the samples after the last frame are read again."""
    if hop > wlen:
        return (channel_sum(stems) == 0).all(-1)
    covered = (quiet.shape[-1] - 1) * hop + wlen
    return quiet.all(-1) & (channel_sum(stems[..., covered:]) == 0).all(-1)


def _frames_norm(x: torch.Tensor, wlen: int, hop: int) -> torch.Tensor:
    """2-norm over channels and samples of each frame of ``x (..., C, T)`` -> ``(..., N)``."""
    return torch.linalg.vector_norm(x.unfold(-1, wlen, hop), dim=(-3, -1))


def _frames_quiet(x: torch.Tensor, wlen: int, hop: int, head: int = 64) -> torch.Tensor:
    """``(..., C, T) -> (..., N)``: the channel sum (in order, in the input dtype, like numpy) is 0 over the frame.
    Frames whose first ``head`` samples are not all zero are decided there; the rest are checked in full."""
    x_frames = x.unfold(-1, wlen, hop)  # (..., C, N, W)

    def zero(f):  # (..., C, N, w) -> (..., N)
        return (channel_sum(f.transpose(-3, -2)) == 0).all(-1)

    quiet = zero(x_frames[..., :head])
    return quiet & zero(x_frames) if bool(quiet.any()) else quiet
