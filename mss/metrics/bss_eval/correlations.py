"""Exact linear auto- and cross-correlations of many signals at a few lags, by block FFTs (the correlation pass of
BSS Eval v4: every correlation of the Gram matrix and of the projections' right-hand sides in one pass)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len

from mss.metrics.bss_eval.scratch import Scratch, chunk_size, rfft_into

__all__ = ["cross_correlations"]

_CORR_FFT = 16384  # block FFT size of the correlation pass


def _segment(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """``x[..., start:stop]`` with zeros outside ``[0, T)``."""
    a, b = max(start, 0), min(stop, x.shape[-1])
    b = max(a, b)
    seg = x[..., a:b]
    return F.pad(seg, (a - start, stop - b)) if (a - start or stop - b) else seg


def cross_correlations(signals: list[torch.Tensor], n_x: int, lags: int, chunk: int | None = None,
                       scratch: Scratch | None = None) -> torch.Tensor:
    """Exact linear cross-correlations ``r[i, j, k + lags − 1] = Σ_n z_i[n + k] z_j[n]`` for ``|k| < lags`` between
    the first ``n_x`` rows ``z_i`` and all rows ``z_j`` of ``signals`` (flattened in order).

    Every row is cut into blocks of ``B`` samples and each block transformed once, zero-padded to ``B + lags − 1``
    points or more (so the circular correlation of two blocks does not wrap around at the kept lags): the
    cross-spectra ``Σ_b Z_i·conj(Z_j)`` accumulated over the blocks give every product ``z_i[n + k]·z_j[n]`` with
    both samples in one block. The products that straddle a block boundary involve only the ``lags − 1`` samples on
    either side of it: they come from the cross-spectra of the samples after each boundary with those before it (and
    the reverse), with an FFT of ``≥ 3·(lags − 1)`` points. Each accumulation is one real batched matrix product per
    chunk of blocks (real and imaginary part stacked, re/im interleaved along the contraction; torch's complex batched
    products fall back to one small product per frequency on CPU). The blocks of a chunk are transformed from views of
    the signals into reused buffers (from ``scratch``, :func:`~mss.metrics.bss_eval.scratch.rfft_into`), so memory
    is bounded whatever the track length.

    Args:
        signals: ``(..., T)`` tensors (any real dtype and strides; computed in float64).

    Returns:
        ``(n_x, rows, 2·lags − 1)`` float64.
    """
    length, ext = signals[0].shape[-1], lags - 1
    n_z = sum(t[..., 0].numel() for t in signals)
    block = min(length, max(_CORR_FFT - ext, ext))
    nfft = next_fast_len(block + ext, real=True)
    nblocks = -(-length // block)
    edge = next_fast_len(3 * ext, real=True) if ext and nblocks > 1 else 0  # FFT size of the boundary terms
    freqs, edge_freqs = nfft // 2 + 1, edge // 2 + 1
    dev = signals[0].device
    step = chunk_size((n_z + 2 * n_x) * nfft * 8, nblocks, chunk)
    scratch = scratch or Scratch(0, dev)
    # buffers reused by every chunk: the blocks' spectra as (F, rows, b) for the products, and the same for the
    # samples around the boundaries
    acc = scratch.take(freqs, 2 * n_x, n_z).zero_()  # real parts, then imaginary parts
    tz = scratch.take(freqs, n_z, step, dtype=torch.complex128)
    tx = scratch.take(freqs, 2, n_x, step, dtype=torch.complex128)  # Z_x and −i·Z_x
    if edge:
        acc_e = scratch.take(edge_freqs, 2 * n_x, n_z).zero_()
        edges = scratch.take(n_z, 2, step, edge).zero_()  # samples before a boundary at [0, ext), after at [ext, 2ext)
        tz_e = scratch.take(edge_freqs, n_z, 2, step, dtype=torch.complex128)
        tx_e = scratch.take(edge_freqs, 2, n_x, 2, step, dtype=torch.complex128)  # sides swapped: after, before

    def fill(buf, start, stop, size):
        row = 0
        for t in signals:
            rows = t[..., 0].numel()
            buf[row:row + rows].unflatten(0, t.shape[:-1]).copy_(_segment(t, start, stop).unfold(-1, size, block))
            row += rows

    def accumulate(out, z, x):  # out (F, 2X, Z) += Re, Im of Σ X·conj(Z); z (F, Z, ...), x (F, 2, X, ...)
        # Re Σ X·conj(Z) = Σ Xr·Zr + Xi·Zi;  Im Σ X·conj(Z) = Σ Xi·Zr − Xr·Zi = Re-part product of (−i·X) with Z
        torch.mul(x[:, 0], -1j, out=x[:, 1])
        out.baddbmm_(torch.view_as_real(x).flatten(3).flatten(1, 2), torch.view_as_real(z).flatten(2).mT)

    for b0 in range(0, nblocks, step):  # the last chunk may run past the end: its zero blocks add nothing
        start = b0 * block
        row = 0
        for t in signals:  # each block transformed from a view of the signal (the FFT zero-pads it)
            rows = t[..., 0].numel()
            rfft_into(_segment(t, start, start + step * block).unfold(-1, block, block),
                      tz[:, row:row + rows].permute(1, 2, 0).unflatten(0, t.shape[:-1]), n=nfft)
            row += rows
        tx[:, 0] = tz[:, :n_x]
        accumulate(acc, tz, tx)
        if edge:  # the boundaries at the starts of the chunk's blocks (none before the first: zeros)
            fill(edges[:, 0, :, :ext], start - ext, start + (step - 1) * block, ext)
            fill(edges[:, 1, :, ext:2 * ext], start, start + (step - 1) * block + ext, ext)
            rfft_into(edges, tz_e.permute(1, 2, 3, 0))
            tx_e[:, 0, :, 0], tx_e[:, 0, :, 1] = tz_e[:, :n_x, 1], tz_e[:, :n_x, 0]
            accumulate(acc_e, tz_e, tx_e)
    # one X row at a time: small temporaries that the heap reuses; lag k is at circular index k mod nfft
    out = acc.new_empty(n_x, n_z, 2 * ext + 1)
    for i in range(n_x):
        c = torch.fft.irfft(torch.complex(acc[:, i], acc[:, n_x + i]).T, n=nfft)
        out[i, :, ext:], out[i, :, :ext] = c[:, :ext + 1], c[:, nfft - ext:]
        if edge:  # straddling products: lags 1..2ext−1 (after·before) and −(2ext−1)..−1 (before·after)
            c = torch.fft.irfft(torch.complex(acc_e[:, i], acc_e[:, n_x + i]).T, n=edge)
            out[i, :, ext + 1:] += c[:, 1:ext + 1]
            out[i, :, :ext] += c[:, edge - ext:]
    return out
