"""BSS Eval v4 (museval 0.4.1 ``evaluate(..., mode='v4')``), re-implemented exactly and vectorised in torch float64.

The numbers are museval's (images variant, SiSEC18): for every frame of ``win`` samples taken every ``hop`` samples
(the trailing partial frame dropped; one whole-signal frame when ``win >= T``),

* ``SDR = 10·log10(Σ s² / Σ (ŝ − s)²)`` over the frame and all channels (the distortion filters do not enter it);
* ``ISR``, ``SIR``, ``SAR`` from the projection of each estimate on the delayed references with ``filters_len``-tap
  multichannel filters computed **once per track** from the whole signals (least squares on the Gram matrix of the
  delayed reference channels, ``G + 2.2e-16·I``), applied to each frame's references by full linear convolution:
  ``P_j`` (own-source projection), ``P`` (all-source projection), ``e_spat = P_j − s``, ``e_interf = P − P_j``,
  ``e_artif = ŝ − P``; ``ISR = ‖s‖²/‖e_spat‖²``, ``SIR = ‖P_j‖²/‖e_interf‖²``, ``SAR = ‖P‖²/‖e_artif‖²`` in dB;
* a frame in which any reference or estimate source is digitally silent (every sample's channel sum is 0) is NaN for
  all metrics of all sources; a zero denominator gives ``+inf`` (museval's ``TrackStore`` later turns ``±inf`` into
  NaN and rounds to 5 decimals);
* estimates are truncated / zero-padded at the end to the reference length; a source that is silent over the whole
  track (reference or estimate) raises ``ValueError``, as in museval.

How it is faster (same algorithm, same numbers): the auto/cross-correlations come from block FFTs that accumulate
cross-spectra (one short inverse FFT per channel pair instead of museval's full-length ones); the Gram matrix is
factorised **once** for all estimates: on CPU without forming it, by the block Schur recursion for its block Toeplitz
structure (``O(L²X²)`` instead of the ``(L·X)³/3`` of dense Cholesky, which stays the path on CUDA and the fallback);
frames are projected in the frequency domain, a cache-sized chunk at a time, and the energies are taken by Parseval (no
inverse FFTs). SDR alone is one streaming pass. Memory is bounded by chunking blocks and frames into reused buffers.
Everything runs on the device of the inputs (CPU or CUDA).

Conditioning: with references that have no noise floor (float / 24-bit band-limited synthetic audio) the Gram matrix is
singular to working precision and museval's ISR/SIR/SAR are implementation-dependent garbage. We estimate
``cond(G)``; when the Cholesky factorisation fails or the estimate exceeds ``cond_limit`` the result is flagged
(``result.reliable = False``, :class:`IllConditionedWarning`) and the filters are obtained by LU like museval.

Shape legend: ``S`` sources, ``T`` samples, ``C`` channels, ``L`` filter taps, ``F`` frequency bins, ``N`` frames.
Inputs follow museval's ``(S, T, C)`` layout; internally signals are ``(S, C, T)``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len
from threadpoolctl import threadpool_limits

__all__ = ["COND_LIMIT", "BSSEvalV4", "IllConditionedWarning", "bss_eval_v4", "frame_sdr", "n_frames"]

EPS = float(np.finfo(float).eps)  # museval's regulariser on the Gram matrix diagonal
COND_LIMIT = 1e11  # cond(G) above which ISR/SIR/SAR are flagged (16-bit refs: 1e9-2e10; 20-bit: 3e11, ISR < 0 dB)
_CORR_FFT = 16384  # block FFT size of the correlation pass
_CHUNK_BYTES = 32 * 2**20  # working-memory budget of one chunk of correlation blocks
_STREAM_BYTES = 8 * 2**20  # chunk budget of the frame-wise passes (kept small: their temporaries stay in cache)


class IllConditionedWarning(UserWarning):
    """The reference Gram matrix is (numerically) singular: ISR/SIR/SAR are not meaningful for this track."""


class BSSEvalV4(tuple):
    """``(sdr, isr, sir, sar)``, each ``(S, N)`` float64, plus conditioning diagnostics.

    Unpacks like museval's result (``sdr, isr, sir, sar = bss_eval_v4(...)``).

    Attributes:
        cond: estimate of the condition number of the reference Gram matrix ``G + eps·I`` (``inf`` when its Cholesky
            factorisation failed, ``nan`` when the filters were not computed).
        reliable: ``False`` when ``cond`` exceeds the limit: ISR/SIR/SAR are then numerically meaningless (SDR is
            always exact: it does not depend on the filters).
    """

    cond: float
    reliable: bool

    def __new__(cls, sdr, isr, sir, sar, cond: float = math.nan, reliable: bool = True):
        self = super().__new__(cls, (sdr, isr, sir, sar))
        self.cond, self.reliable = float(cond), bool(reliable)
        return self

    sdr = property(lambda self: self[0])
    isr = property(lambda self: self[1])
    sir = property(lambda self: self[2])
    sar = property(lambda self: self[3])


# ----------------------------------------------------------------------------------------------- framing / SDR


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


def _frames(x: torch.Tensor, t0: int, t1: int, win: int, hop: int) -> torch.Tensor:
    """Frames ``t0..t1-1`` of ``x (..., T)`` as a view ``(..., t1 - t0, win)``."""
    return x[..., t0 * hop:(t1 - 1) * hop + win].unfold(-1, win, hop)


def _chunk(per_item_bytes: float, total: int, chunk: int | None, budget: int = _CHUNK_BYTES) -> int:
    if chunk is not None:
        return max(1, min(total, int(chunk)))
    return max(1, min(total, int(budget // max(per_item_bytes, 1))))


class _Scratch:
    """Working memory shared by the passes of one evaluation.

    Each pass takes its buffers from the start of one reservation (:meth:`take` after :meth:`reset`), so it reuses
    the pages that earlier passes touched instead of page-faulting fresh ones (a first touch costs 2-5 µs per 4 KiB
    page on a virtual machine: 10-30 % of a 30 s track's time when every pass had buffers of its own). The
    reservation is virtual: only touched pages become resident. A buffer that does not fit is allocated on its own.
    """

    def __init__(self, nbytes: int, device: torch.device | str):
        self.memory = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self.offset = 0

    def reset(self) -> _Scratch:
        """Start a new pass: the previous passes' buffers are dead."""
        self.offset = 0
        return self

    def take(self, *shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """An uninitialised contiguous ``shape`` buffer."""
        nbytes = math.prod(shape) * dtype.itemsize
        start = -(-self.offset // 64) * 64
        if start + nbytes > self.memory.numel():
            return torch.empty(shape, dtype=dtype, device=self.memory.device)
        self.offset = start + nbytes
        return self.memory[start:start + nbytes].view(dtype).view(shape)


def _channel_sum(x: torch.Tensor) -> torch.Tensor:
    """``(..., C, T) -> (..., T)``: ``x_0 + x_1 + …`` in order, in the input dtype (numpy's sum over a few channels),
    by explicit adds: torch reduces a small strided dim slowly."""
    out = x[..., 0, :]
    for c in range(1, x.shape[-2]):
        out = out + x[..., c, :]
    return out


def _safe_db(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
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
    num, den, quiet_ref, quiet_est = _frame_energies(references, estimates, int(win), int(hop), chunk_frames)
    return _safe_db(num, den).masked_fill((quiet_ref | quiet_est).any(-2, keepdim=True), math.nan)


def _frame_energies(references, estimates, win, hop, chunk_frames):
    """Per frame: reference energy and error energy ``(..., S, N)`` (float64), and per source whether its channel
    sum is zero over the whole frame (museval's silence rule) for the references and the estimates ``(..., S, N)``.

    One streaming pass over the inputs in frame chunks small enough to stay in cache, on their own memory layout
    (museval's ``(S, T, C)`` arrays are read contiguously): a float64 view of the references (or one cast) per chunk,
    the error in a reused buffer, energies by 2-norm reductions."""
    nwin, wlen = n_frames(references.shape[-1], win, hop)
    lead, n_ch = references.shape[:-2], references.shape[-2]
    step = _chunk(wlen * math.prod(lead) * n_ch * 8, nwin, chunk_frames, budget=_STREAM_BYTES)
    num = references.new_empty(*lead, nwin, dtype=torch.float64)
    den, quiet_ref = torch.empty_like(num), num.new_empty(num.shape, dtype=torch.bool)
    quiet_est = torch.empty_like(quiet_ref)
    # one reused error buffer in the inputs' layout (fresh buffers per chunk would page-fault on every chunk)
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


def _frames_norm(x: torch.Tensor, wlen: int, hop: int) -> torch.Tensor:
    """2-norm over channels and samples of each frame of ``x (..., C, T)`` -> ``(..., N)``."""
    return torch.linalg.vector_norm(x.unfold(-1, wlen, hop), dim=(-3, -1))


def _frames_quiet(x: torch.Tensor, wlen: int, hop: int, head: int = 64) -> torch.Tensor:
    """``(..., C, T) -> (..., N)``: the channel sum (in order, in the input dtype, like numpy) is 0 over the frame.
    Frames whose first ``head`` samples are not all zero are decided there; the rest are checked in full."""
    frames = x.unfold(-1, wlen, hop)  # (..., C, N, W)

    def zero(f):  # (..., C, N, w) -> (..., N)
        return (_channel_sum(f.transpose(-3, -2)) == 0).all(-1)

    quiet = zero(frames[..., :head])
    return quiet & zero(frames) if bool(quiet.any()) else quiet


# ----------------------------------------------------------------------------------------------- filters


def _segment(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """``x[..., start:stop]`` with zeros outside ``[0, T)``."""
    a, b = max(start, 0), min(stop, x.shape[-1])
    b = max(a, b)
    seg = x[..., a:b]
    return F.pad(seg, (a - start, stop - b)) if (a - start or stop - b) else seg


def _correlations(signals: list[torch.Tensor], n_x: int, lags: int, chunk: int | None = None,
                  scratch: _Scratch | None = None) -> torch.Tensor:
    """Exact linear cross-correlations ``r[i, j, k + lags − 1] = Σ_n z_i[n + k] z_j[n]`` for ``|k| < lags`` between
    the first ``n_x`` rows ``z_i`` and all rows ``z_j`` of ``signals`` (flattened in order).

    Every row is cut into blocks of ``B`` samples and each block transformed once, zero-padded to ``B + lags − 1``
    points or more (so the circular correlation of two blocks does not wrap around at the kept lags): the
    cross-spectra ``Σ_b Z_i·conj(Z_j)`` accumulated over the blocks give every product ``z_i[n + k]·z_j[n]`` with
    both samples in one block. The products that straddle a block boundary involve only the ``lags − 1`` samples on
    either side of it: they come from the cross-spectra of the samples after each boundary with those before it (and
    the reverse), with an FFT of ``≥ 3·(lags − 1)`` points. Each accumulation is one real batched matrix product per
    chunk of blocks (real and imaginary part stacked, re/im interleaved along the contraction; torch's complex batched
    products fall back to one small product per frequency on CPU). Blocks are copied chunk by chunk into reused
    buffers (from ``scratch``), so memory is bounded whatever the track length.

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
    step = _chunk((3 * n_z + 2 * n_x) * nfft * 8, nblocks, chunk)
    scratch = scratch or _Scratch(0, dev)
    # reused buffers (fresh ones per chunk would page-fault every time): blocks, their spectra, spectra as
    # (F, ·, rows, b) for the products, and the same for the samples around the boundaries
    acc = scratch.take(freqs, 2 * n_x, n_z).zero_()  # real parts, then imaginary parts
    blocks = scratch.take(n_z, step, nfft).zero_()  # the zero tails are never overwritten
    spec = scratch.take(n_z, step, freqs, dtype=torch.complex128)
    tz = scratch.take(freqs, n_z, step, dtype=torch.complex128)
    tx = scratch.take(freqs, 2, n_x, step, dtype=torch.complex128)  # Z_x and −i·Z_x
    if edge:
        acc_e = scratch.take(edge_freqs, 2 * n_x, n_z).zero_()
        edges = scratch.take(n_z, 2, step, edge).zero_()  # samples before a boundary at [0, ext), after at [ext, 2ext)
        spec_e = scratch.take(n_z, 2, step, edge_freqs, dtype=torch.complex128)
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
        fill(blocks[..., :block], start, start + step * block, block)
        tz.copy_(torch.fft.rfft(blocks, out=spec).permute(2, 0, 1))
        tx[:, 0] = tz[:, :n_x]
        accumulate(acc, tz, tx)
        if edge:  # the boundaries at the starts of the chunk's blocks (none before the first: zeros)
            fill(edges[:, 0, :, :ext], start - ext, start + (step - 1) * block, ext)
            fill(edges[:, 1, :, ext:2 * ext], start, start + (step - 1) * block + ext, ext)
            tz_e.copy_(torch.fft.rfft(edges, out=spec_e).permute(3, 0, 1, 2))
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


def _cho_solve(b: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """``(L Lᵀ)⁻¹ b`` from the lower Cholesky factor ``chol`` (only its lower triangle is read). Two triangular
    solves: ``torch.cholesky_solve`` copies the factor on every call, which dominates for a 4096² system."""
    y = torch.linalg.solve_triangular(chol, b, upper=False)
    return torch.linalg.solve_triangular(chol.mT, y, upper=True)


def _cholesky_in_place(gram: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Lower Cholesky factor of the symmetric ``gram`` in its own storage (it is overwritten) and whether the matrix
    was positive definite. On CPU through LAPACK ``potrf`` on the column-major view (torch's ``cholesky_ex(out=)``
    allocates a second matrix); the factor is then ``gram.mT``."""
    if gram.device.type == "cpu" and gram.dtype == torch.float64 and gram.is_contiguous():
        from scipy.linalg import lapack

        _, info = lapack.dpotrf(gram.numpy().T, lower=1, clean=0, overwrite_a=1)
        return gram.mT, info == 0
    chol, info = torch.linalg.cholesky_ex(gram, out=(gram, torch.empty((), dtype=torch.int32, device=gram.device)))
    return chol, int(info) == 0


def _probe(n: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """``(n, width)`` random start vectors (fixed seed) on ``like``'s device."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    return torch.randn(n, width, generator=gen, dtype=torch.float64).to(like.device)


def _power_iteration(apply, first: torch.Tensor, iters: int = 2) -> float:
    """Largest eigenvalue of the SPD operator ``apply`` (``(n, w) -> (n, w)``) from ``first = apply(v)`` for random
    vectors ``v`` (:func:`_probe`): ``iters`` steps of subspace iteration, then the largest Rayleigh-Ritz value."""
    q = torch.linalg.qr(first)[0]
    for _ in range(iters - 1):
        q = torch.linalg.qr(apply(q))[0]
    return float(torch.linalg.eigvalsh(q.T @ apply(q)).max())


def _lu_solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``solve(a, b)`` by LU with museval's least-squares fallback. On CPU through numpy (LAPACK ``gesv``, what
    museval calls): torch 2.13's CPU batched LU fails after ``torch.set_num_threads``."""
    if a.device.type == "cpu":
        an, bn = a.numpy(), b.numpy()
        try:
            return torch.from_numpy(np.linalg.solve(an, bn))
        except np.linalg.LinAlgError:
            return torch.from_numpy(np.stack([np.linalg.lstsq(m, r, rcond=None)[0] for m, r in
                                              zip(an.reshape(-1, *an.shape[-2:]), bn.reshape(-1, *bn.shape[-2:]))
                                              ]).reshape(bn.shape))
    return torch.linalg.solve(a, b)


def _filters(refs: torch.Tensor, ests: torch.Tensor, lags: int, cond_limit: float, chunk: int | None,
             scratch: _Scratch):
    """Global (v4) distortion filters.

    Args:
        refs, ests: ``(S, C, T)``.

    Returns:
        ``(c_all, c_own, cond)``: ``c_all (S, C, L, S, C)`` = filters ``[j, c_in, lag, e, c_out]`` projecting estimate
        ``e`` on all references; ``c_own (S, C, L, C)`` = ``[e, c_in, lag, c_out]`` on its own reference; ``cond``
        the condition-number estimate (``inf`` when a Cholesky factorisation failed).
    """
    n_src, n_ch, _ = refs.shape
    x = n_src * n_ch
    r = _correlations([refs, ests], x, lags, chunk, scratch.reset())
    ext = lags - 1
    lag = torch.arange(lags, device=refs.device)
    # D[(j,c,a), (e,c')] = <s_jc(· − a), ŝ_ec'> = r[jc, x + ec', −a]
    rhs = r[:, x:, ext - lag].permute(0, 2, 1).reshape(x * lags, x)
    cl = n_ch * lags
    own_rhs = torch.stack([rhs[e * cl:(e + 1) * cl, e * n_ch:(e + 1) * n_ch] for e in range(n_src)])
    channels = [slice(0, x)] + [slice(e * n_ch, (e + 1) * n_ch) for e in range(n_src)]  # all, then each source's

    def gram(rows: slice, in_scratch: bool = False) -> torch.Tensor:  # G + eps·I over the channels ``rows``
        n = (rows.stop - rows.start) * lags
        g = _gram(r[rows, rows], lags, scratch.reset().take(n, n) if in_scratch else None)
        g.diagonal().add_(EPS)
        return g

    apply = _toeplitz_apply(r[:, :x], lags)
    lam_max = _power_iteration(apply, apply(_probe(x * lags, 8, r)), iters=8)  # cheap FFT products: run longer
    cpu = refs.device.type == "cpu"
    # own-source systems: on CPU all sources' at once by the Schur recursion (λ_max of G bounds theirs); else, or when
    # the recursion refuses, dense, one at a time
    solved = None
    if cpu:
        own_r = torch.stack([r[rows, rows] for rows in channels[1:]])
        solved = _toeplitz_solve(own_r, own_rhs, lags, _toeplitz_apply(own_r, lags), lam_max, scratch)
    if solved is not None:
        c_own = solved[0]
    else:
        own = [_dense_solve(gram(rows, True), b, cond=False)[0] for rows, b in zip(channels[1:], own_rhs)]
        c_own = None if any(c is None for c in own) else torch.stack(own)
    solved = _toeplitz_solve(r[:, :x], rhs, lags, apply, lam_max, scratch, cond=True) if cpu else None
    c_all, lam_min = solved if solved is not None else _dense_solve(gram(channels[0], True), rhs)
    cond = lam_max / lam_min if lam_min > 0 and c_own is not None else math.inf
    if cond > cond_limit:  # flagged: LU like museval (numbers are not meaningful anyway), on the rebuilt matrices
        del c_own, c_all
        c_all = _lu_solve(gram(channels[0]), rhs)
        c_own = _lu_solve(torch.stack([gram(rows) for rows in channels[1:]]), own_rhs)
    return c_all.reshape(n_src, n_ch, lags, n_src, n_ch), c_own.reshape(n_src, n_ch, lags, n_ch), cond


def _solve_lambda_min(chol: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``((L Lᵀ)⁻¹ rhs, λ_min(L Lᵀ))`` from the lower Cholesky factor ``chol``. ``λ_min`` by inverse subspace
    iteration (2 steps on 4 vectors; each costs a pair of triangular solves, so kept narrow), whose first solve shares
    the pass over the factor with ``rhs`` (the solves are bound by reading the factor: extra columns are nearly
    free). Underestimates cond(G) by 10-25 %."""
    k = rhs.shape[1]
    both = _cho_solve(torch.cat([rhs, _probe(chol.shape[0], 4, chol)], 1), chol)
    return both[:, :k], 1.0 / _power_iteration(lambda v: _cho_solve(v, chol), both[:, k:])


def _dense_solve(gram: torch.Tensor, rhs: torch.Tensor, cond: bool = True) -> tuple[torch.Tensor | None, float]:
    """``(gram⁻¹ rhs, λ_min(gram))`` (``λ_min`` only with ``cond``, else NaN) by Cholesky in place (``gram`` is
    overwritten); ``(None, 0)`` when ``gram`` is not numerically positive definite."""
    chol, ok = _cholesky_in_place(gram)
    if not ok:
        return None, 0.0
    return _solve_lambda_min(chol, rhs) if cond else (_cho_solve(rhs, chol), math.nan)


def _toeplitz_solve(r: torch.Tensor, rhs: torch.Tensor, lags: int, apply, lam_max: float, scratch: _Scratch,
                    cond: bool = False, max_backward_error: float = 1e-12) -> tuple[torch.Tensor, float] | None:
    """:func:`_dense_solve` for the Gram matrices of the correlations ``r (..., X, X, 2·lags − 1)`` (a batch of
    systems, ``rhs (..., X·lags, w)``) without forming them: in tap-major order they are block Toeplitz, factorised by
    :func:`_schur_factor`; ``apply`` multiplies by them (:func:`_toeplitz_apply`), ``lam_max`` bounds their largest
    eigenvalues; the factors live in ``scratch``. ``λ_min`` only with ``cond`` (unbatched), else NaN. ``None`` when
    the recursion breaks down or a solution's normwise backward error ``‖G c − b‖ / (λ_max ‖c‖ + ‖b‖)`` exceeds
    ``max_backward_error`` (the dense path then decides; measured on 16-bit references: dense Cholesky 4e-17-1e-16,
    the Schur recursion 1e-16-9e-16)."""
    x = r.shape[-2]
    upper = _schur_factor(r.numpy(), lags, scratch.reset().take(*r.shape[:-3], x * lags, x * lags).numpy())
    if upper is None:
        return None
    chol = torch.from_numpy(upper).mT
    b = rhs.unflatten(-2, (x, lags)).transpose(-3, -2).flatten(-3, -2)  # rows (channel, tap) -> (tap, channel)
    c, lam_min = _solve_lambda_min(chol, b) if cond else (_cho_solve(b, chol), math.nan)
    residual, norm_c, norm_b = (torch.linalg.vector_norm(t, dim=(-2, -1)) for t in (apply(c) - b, c, b))
    if not bool((residual <= max_backward_error * (lam_max * norm_c + norm_b)).all()):
        return None
    return c.unflatten(-2, (lags, x)).transpose(-3, -2).flatten(-3, -2), lam_min


def _schur_factor(r: np.ndarray, lags: int, out: np.ndarray | None = None) -> np.ndarray | None:
    """Upper Cholesky factor ``U`` (``Uᵀ U = H``) of the tap-major Gram matrix
    ``H[(a, p), (b, q)] = r[p, q, b − a + lags − 1] + eps·δ`` by the block Schur algorithm, or ``None`` when ``H`` is
    not numerically positive definite.

    ``H`` is block Toeplitz with ``X×X`` blocks, so ``H − Z H Zᵀ = u uᵀ − v vᵀ`` (``Z`` shifts down one block) with
    the ``(n, X)`` generators ``u = H[:, :X] L₀⁻ᵀ`` (``L₀ Lᵀ₀`` the first block) and ``v`` = ``u`` with its first
    block zeroed. Step ``k`` turns the generators' top blocks ``N = [a b]`` into ``[D 0]`` by a J-orthogonal
    transformation (``J = diag(I, −I)``, ``D Dᵀ = P = N J Nᵀ``): the factor's block column ``k`` is
    ``ℓ = [u v] J Nᵀ D⁻ᵀ``, the new ``v`` is ``[u v] Y`` with ``Y Yᵀ = J Nᵀ P⁻¹ N J − J`` (positive semidefinite of
    rank ``X``; from its eigenvectors), and the new ``u`` is ``ℓ`` shifted down one block (its top block is the
    previous ``D``, so ``a`` is always invertible). ``O(lags²·X²)`` work and ``lags`` small ``2X×2X`` problems
    instead of the ``(lags·X)³ / 3`` of dense Cholesky (4 stereo sources: ~0.1 s instead of ~0.4 s on 2 cores);
    its backward error is up to ~20x dense Cholesky's (still ~1e-15), which :func:`_toeplitz_solve` checks.

    Args:
        r: ``(..., X, X, 2·lags − 1)`` correlations (see :func:`_correlations`): a batch of matrices, factorised
            together (the steps' small problems are batched).
        out: ``(..., X·lags, X·lags)`` float64 buffer for ``U`` (default: a new one).
    """
    batch, x = r.shape[:-3], r.shape[-2]
    n, ext = x * lags, lags - 1
    r = r.reshape(-1, x, x, 2 * lags - 1)
    first = np.ascontiguousarray(r[..., ext - np.arange(lags)].transpose(0, 3, 1, 2)).reshape(-1, n, x)  # H[:, :X]
    first[:, np.arange(x), np.arange(x)] += EPS
    signs = np.r_[np.ones(x), -np.ones(x)]  # J
    minus_j = -np.diag(signs)
    # rows k·X.. hold ℓ_kᵀ from column k·X on; the rest (below the diagonal blocks) is never written nor read (nor
    # paged in), so it is left uninitialised. Allocated by torch: numpy madvises big arrays for transparent huge
    # pages, whose first touch can stall in memory compaction (~0.3 s here)
    upper = (torch.empty(*batch, n, n, dtype=torch.float64).numpy() if out is None else out).reshape(-1, n, n)
    # [u v]ᵀ of the current step, in two buffers: a step reads one and writes the next step's into the other
    gens = np.empty((2, len(upper), 2 * x, n - x))
    # single-threaded BLAS: every step's products are small, and threads would cost more in wake-ups than they save
    # (and stall badly when other processes share the cores)
    with threadpool_limits(1, user_api="blas"):
        try:
            for h, f in zip(upper, first):
                h[:x] = scipy.linalg.solve_triangular(np.linalg.cholesky(f[:x]), f.T, lower=True)
            gens[1, :, :x], gens[1, :, x:] = upper[:, :x, :n - x], upper[:, :x, x:]  # u shifted, v = u from block 1
            for k in range(1, lags):  # per step ~10 small numpy calls (their overhead is most of the cost)
                s = k * x
                g, following = gens[k % 2, ..., :n - s], gens[(k + 1) % 2, ..., :n - s - x]
                jn = signs[:, None] * g[..., :x]  # J Nᵀ
                jnt = jn.swapaxes(-1, -2)
                p = g[..., :x].swapaxes(-1, -2) @ jn
                d = np.linalg.cholesky(p)
                w, vec = np.linalg.eigh(jn @ np.linalg.solve(p, jnt) + minus_j)
                row = np.matmul(np.linalg.solve(d, jnt), g, out=upper[:, s:s + x, s:])  # ℓ_kᵀ
                if k + 1 < lags:  # the new u is ℓ shifted down a block; the new v's first block is not needed
                    following[:, :x] = row[..., :n - s - x]
                    y = (vec[..., x:] * np.sqrt(np.maximum(w[..., None, x:], 0.0))).swapaxes(-1, -2)
                    np.matmul(y, g[..., x:], out=following[:, x:])
        except np.linalg.LinAlgError:
            return None
    return upper.reshape(*batch, n, n) if np.isfinite(upper[:, -x:, -x:]).all() else None


def _toeplitz_apply(r: torch.Tensor, lags: int):
    """``v (..., X·lags, w) -> H v`` for the tap-major Gram matrices of :func:`_schur_factor` (without their ``eps·I``)
    by FFT: ``(H v)[a, p] = Σ_q Σ_b r[p, q, b − a + lags − 1] v[b, q]``, a convolution with the flipped correlations
    ``r (..., X, X, 2·lags − 1)``."""
    x, ext = r.shape[-2], lags - 1
    nfft = next_fast_len(3 * lags - 2, real=True)
    kernel = torch.fft.rfft(r.flip(-1), n=nfft).unsqueeze(-2)  # (..., X, X, 1, F)

    def apply(v: torch.Tensor) -> torch.Tensor:
        spec = torch.fft.rfft(v.unflatten(-2, (lags, x)).movedim(-3, -1), n=nfft)  # (..., X, w, F)
        # Σ_q kernel[:, q]·spec[q], a q at a time (no (X, X, w, F) temporary)
        acc = kernel[..., 0, :, :] * spec[..., 0, None, :, :]
        for q in range(1, x):
            acc.addcmul_(kernel[..., q, :, :], spec[..., q, None, :, :])
        out = torch.fft.irfft(acc, n=nfft)[..., ext:ext + lags]  # (..., X, w, L)
        return out.movedim(-1, -3).reshape(v.shape)

    return apply


def _gram(r: torch.Tensor, lags: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix of the delayed reference channels from their correlations ``r (X, X, 2·lags − 1)``:
    ``G[(p, a), (q, b)] = <s_p(· − a), s_q(· − b)> = r[p, q, b − a + lags − 1]``, ``(X·lags, X·lags)``, written row
    block by row block (temporaries of one row block's size) into ``out`` (default: a new matrix)."""
    x = r.shape[0]
    gram = r.new_empty(x, lags, x, lags) if out is None else out.view(x, lags, x, lags)
    for p in range(x):  # gram[p, a, q, b] = r[p, q, lags − 1 − a + b]: windows of r[p], flipped along a
        gram[p] = r[p].unfold(-1, lags, 1).flip(1).transpose(0, 1)
    return gram.view(x * lags, x * lags)


# ----------------------------------------------------------------------------------------------- projections


def _image_metrics(refs, ests, c_all, c_own, ref_energy, nwin, wlen, hop, chunk, scratch):
    """ISR, SIR, SAR ``(S, N)`` by frequency-domain projection of the frames of a chunk at once; ``ref_energy``
    ``(S, N)`` holds the frames' reference energies."""
    n_src, n_ch, lags = c_own.shape[:3]
    x = n_src * n_ch
    nfft = next_fast_len(wlen + lags - 1, real=True)
    freqs = nfft // 2 + 1
    dev = refs.device
    # Parseval: Σ_n x[n]² = Σ_f w_f |X_f|² for a real length-nfft signal; the frame spectra are scaled by √w_f once, so
    # every projection and error spectrum below is scaled too and its energy is a plain sum of squares
    weight = torch.full((freqs,), 2.0 / nfft, dtype=torch.float64, device=dev)
    weight[0] = 1.0 / nfft
    if nfft % 2 == 0:
        weight[-1] = 1.0 / nfft
    weight = weight.sqrt()
    # filter spectra: all-source (S·C_out, S·C_in, F), own-source (S, C_out, C_in, F)
    h_all = scratch.take(x, x, freqs, dtype=torch.complex128)
    for i, taps in enumerate(c_all.permute(3, 4, 0, 1, 2).reshape(x, x, lags)):  # small zero-padded temporaries
        torch.fft.rfft(taps, n=nfft, out=h_all[i])
    h_own = scratch.take(n_src, n_ch, n_ch, freqs, dtype=torch.complex128)
    for e, taps in enumerate(c_own.permute(0, 3, 1, 2)):
        torch.fft.rfft(taps, n=nfft, out=h_own[e])
    step = _chunk(x * 2 * nfft * 8 * 6, nwin, chunk, budget=_STREAM_BYTES)
    frames = scratch.take(2, n_src, n_ch, step, nfft).zero_()  # the zero tails are never overwritten
    # reused spectra buffers (fresh ones per chunk would page-fault every time)
    spec = scratch.take(2, n_src, n_ch, step, freqs, dtype=torch.complex128)
    proj, own, diff = (scratch.take(n_src, n_ch, step, freqs, dtype=torch.complex128) for _ in range(3))
    out = torch.empty(3, n_src, nwin, dtype=torch.float64, device=dev)

    def energy(z):  # (S, C, n, F) complex -> (S, n)
        return torch.linalg.vector_norm(torch.view_as_real(z), dim=(1, -2, -1)).square_()

    for t in range(0, nwin, step):
        n = min(step, nwin - t)
        for k, signal in enumerate((refs, ests)):
            frames[k, :, :, :n, :wlen].copy_(_frames(signal, t, t + n, wlen, hop))
        sf, ef = torch.fft.rfft(frames[:, :, :, :n], out=spec[:, :, :, :n]).mul_(weight)  # (S, C, n, F) each
        # P[e c] = Σ_{j c'} h_all[e c, j c'] · S[j c'];  P_j[e c] = Σ_c' h_own[e, c, c'] · S[e c']
        flat, p = sf.flatten(0, 1), proj[:, :, :n].flatten(0, 1)
        torch.mul(h_all[:, 0, None], flat[0], out=p)
        for i in range(1, x):
            p.addcmul_(h_all[:, i, None], flat[i])
        p, o = proj[:, :, :n], own[:, :, :n]
        torch.mul(h_own[:, :, 0, None], sf[:, None, 0], out=o)
        for k in range(1, n_ch):
            o.addcmul_(h_own[:, :, k, None], sf[:, None, k])
        sir_num, sar_num = energy(o), energy(p)
        sir_den = energy(torch.sub(p, o, out=diff[:, :, :n]))
        isr_den = energy(torch.sub(o, sf, out=diff[:, :, :n]))
        sar_den = energy(ef.sub_(p))
        out[0, :, t:t + n] = _safe_db(ref_energy[:, t:t + n], isr_den)
        out[1, :, t:t + n] = _safe_db(sir_num, sir_den)
        out[2, :, t:t + n] = _safe_db(sar_num, sar_den)
    return out


# ----------------------------------------------------------------------------------------------- entry point


def _as_stems(x, name: str) -> torch.Tensor:
    """museval layout ``(S, T, C)`` (or ``(S, T)`` mono) -> tensor ``(S, C, T)`` (a view when possible)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.dim() == 2:
        t = t.unsqueeze(-1)
    if t.dim() != 3:
        raise ValueError(f"{name}: expected (sources, samples, channels) or (sources, samples), got shape "
                         f"{tuple(t.shape)}")
    return t.permute(0, 2, 1)


def bss_eval_v4(references, estimates, win: int = 44100, hop: int = 44100, *, filters_len: int = 512,
                sdr_only: bool = False, device: str | torch.device | None = None, chunk: int | None = None,
                cond_limit: float = COND_LIMIT) -> BSSEvalV4:
    """BSS Eval v4 exactly as ``museval.evaluate(references, estimates, win, hop, mode='v4')``.

    Args:
        references: true sources ``(S, T, C)`` (or ``(S, T)``), numpy array or tensor of any real dtype.
        estimates: estimated sources ``(S, T', C)``; truncated / zero-padded at the end to ``T`` samples.
        win, hop: frame length and hop in samples.
        filters_len: distortion-filter taps (museval: 512).
        sdr_only: skip the filters: ISR/SIR/SAR are returned as NaN (SDR is identical either way; ~100× cheaper).
        device: where to compute (default: the references' device).
        chunk: frames (and correlation blocks) processed at once (default: a ~100 MB working-set budget).
        cond_limit: condition-number limit above which ISR/SIR/SAR are flagged unreliable.

    Returns:
        :class:`BSSEvalV4` ``(sdr, isr, sir, sar)``, each ``(S, N)`` float64 on ``device``, with ``cond`` and
        ``reliable``.

    Raises:
        ValueError: on mismatching shapes or a reference/estimate source that is all zeros over the whole track.
    """
    refs, ests = _as_stems(references, "references"), _as_stems(estimates, "estimates")
    if device is not None:
        refs, ests = refs.to(device), ests.to(device)
    elif ests.device != refs.device:
        ests = ests.to(refs.device)
    if refs.shape[:2] != ests.shape[:2]:
        raise ValueError(f"references {tuple(references.shape)} and estimates {tuple(estimates.shape)} differ in "
                         "the number of sources or channels")
    length = refs.shape[-1]
    if ests.shape[-1] != length:  # museval.evaluate(padding=True)
        ests = ests[..., :length] if ests.shape[-1] > length else F.pad(ests, (0, length - ests.shape[-1]))
    win, hop = int(win), int(hop)
    nwin, wlen = n_frames(length, win, hop)
    ref_energy, err_energy, quiet_ref, quiet_est = _frame_energies(refs, ests, wlen, hop, chunk)
    covered = (nwin - 1) * hop + wlen  # frames tile [0, covered) when hop <= wlen; check the rest separately
    for kind, stems, quiet in (("reference", refs, quiet_ref), ("estimate", ests, quiet_est)):
        if hop <= wlen:
            silent = quiet.all(-1) & (_channel_sum(stems[..., covered:]) == 0).all(-1)
        else:
            silent = (_channel_sum(stems) == 0).all(-1)
        if bool(silent.any()):
            raise ValueError(f"{kind} source(s) {silent.nonzero().flatten().tolist()} are silent (all zeros) over "
                             "the whole signal; BSS Eval cannot evaluate a silent source (museval raises too)")
    silent = (quiet_ref | quiet_est).any(0)
    sdr = _safe_db(ref_energy, err_energy).masked_fill(silent, math.nan)
    nan = torch.full_like(sdr, math.nan)
    if sdr_only:
        return BSSEvalV4(sdr, nan, nan.clone(), nan.clone())
    # the largest buffer is the Gram matrix's factor; the reservation is virtual (see _Scratch)
    scratch = _Scratch((refs.shape[0] * refs.shape[1] * filters_len) ** 2 * 8 + 8 * _CHUNK_BYTES, refs.device)
    c_all, c_own, cond = _filters(refs, ests, filters_len, cond_limit, chunk, scratch)
    isr, sir, sar = _image_metrics(refs, ests, c_all, c_own, ref_energy, nwin, wlen, hop, chunk, scratch.reset())
    isr, sir, sar = (m.masked_fill(silent, math.nan) for m in (isr, sir, sar))
    reliable = cond <= cond_limit
    if not reliable:
        warnings.warn(f"BSS Eval v4: the reference Gram matrix is ill-conditioned (cond ≈ {cond:.3g} > "
                      f"{cond_limit:.0e}); ISR/SIR/SAR are not meaningful (references without a noise floor? "
                      "quantise them to 16 bit). SDR is unaffected.", IllConditionedWarning, stacklevel=2)
    return BSSEvalV4(sdr, isr, sir, sar, cond=cond, reliable=reliable)
