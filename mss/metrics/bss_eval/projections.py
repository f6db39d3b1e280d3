"""The projections of BSS Eval v4: the global distortion filters (least squares on the reference Gram matrix, once
per track) and the frame-wise image metrics ISR, SIR and SAR.

Shape legend: ``S`` sources, ``C`` channels, ``T`` samples, ``L`` filter taps, ``F`` frequency bins, ``N`` frames.
"""

from __future__ import annotations

import math

import torch
from scipy.fft import next_fast_len

from mss.metrics.bss_eval.correlations import cross_correlations
from mss.metrics.bss_eval.framing import frames, safe_db
from mss.metrics.bss_eval.scratch import STREAM_BYTES, Scratch, chunk_size, lu_solve
from mss.metrics.bss_eval.toeplitz import EPS, dense_solve, gram, power_iteration, probe, toeplitz_apply, toeplitz_solve

__all__ = ["filters", "image_metrics"]


def filters(refs: torch.Tensor, ests: torch.Tensor, lags: int, cond_limit: float, chunk: int | None,
            scratch: Scratch):
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
    r = cross_correlations([refs, ests], x, lags, chunk, scratch.reset())
    ext = lags - 1
    lag = torch.arange(lags, device=refs.device)
    # D[(j,c,a), (e,c')] = <s_jc(· − a), ŝ_ec'> = r[jc, x + ec', −a]
    rhs = r[:, x:, ext - lag].permute(0, 2, 1).reshape(x * lags, x)
    cl = n_ch * lags
    own_rhs = torch.stack([rhs[e * cl:(e + 1) * cl, e * n_ch:(e + 1) * n_ch] for e in range(n_src)])
    channels = [slice(0, x)] + [slice(e * n_ch, (e + 1) * n_ch) for e in range(n_src)]  # all, then each source's

    def regularised(rows: slice, in_scratch: bool = False) -> torch.Tensor:  # G + eps·I over the channels ``rows``
        n = (rows.stop - rows.start) * lags
        g = gram(r[rows, rows], lags, scratch.reset().take(n, n) if in_scratch else None)
        g.diagonal().add_(EPS)
        return g

    apply = toeplitz_apply(r[:, :x], lags)
    lam_max = power_iteration(apply, apply(probe(x * lags, 8, r)), iters=8)  # cheap FFT products: run longer
    cpu = refs.device.type == "cpu"
    # own-source systems: on CPU all sources' at once by the Schur recursion (λ_max of G bounds theirs); else, or when
    # the recursion refuses, dense, one at a time
    solved = None
    if cpu:
        own_r = torch.stack([r[rows, rows] for rows in channels[1:]])
        solved = toeplitz_solve(own_r, own_rhs, lags, toeplitz_apply(own_r, lags), lam_max, scratch)
    if solved is not None:
        c_own = solved[0]
    else:
        own = [dense_solve(regularised(rows, True), b, cond=False)[0] for rows, b in zip(channels[1:], own_rhs)]
        c_own = None if any(c is None for c in own) else torch.stack(own)
    solved = toeplitz_solve(r[:, :x], rhs, lags, apply, lam_max, scratch, cond=True) if cpu else None
    c_all, lam_min = solved if solved is not None else dense_solve(regularised(channels[0], True), rhs)
    cond = lam_max / lam_min if lam_min > 0 and c_own is not None else math.inf
    if cond > cond_limit:  # flagged: LU like museval (numbers are not meaningful anyway), on the rebuilt matrices
        del c_own, c_all
        c_all = lu_solve(regularised(channels[0]), rhs)
        c_own = lu_solve(torch.stack([regularised(rows) for rows in channels[1:]]), own_rhs)
    return c_all.reshape(n_src, n_ch, lags, n_src, n_ch), c_own.reshape(n_src, n_ch, lags, n_ch), cond


def image_metrics(refs, ests, c_all, c_own, ref_energy, nwin, wlen, hop, chunk, scratch):
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
    for i, taps in enumerate(c_all.permute(3, 4, 0, 1, 2).reshape(x, x, lags)):
        torch.fft.rfft(taps, n=nfft, out=h_all[i])
    h_own = scratch.take(n_src, n_ch, n_ch, freqs, dtype=torch.complex128)
    for e, taps in enumerate(c_own.permute(0, 3, 1, 2)):
        torch.fft.rfft(taps, n=nfft, out=h_own[e])
    step = chunk_size(x * 2 * nfft * 8 * 6, nwin, chunk, budget=STREAM_BYTES)
    frame_buf = scratch.take(2, n_src, n_ch, step, nfft).zero_()  # the zero tails are never overwritten
    spec = scratch.take(2, n_src, n_ch, step, freqs, dtype=torch.complex128)
    proj, own, diff = (scratch.take(n_src, n_ch, step, freqs, dtype=torch.complex128) for _ in range(3))
    out = torch.empty(3, n_src, nwin, dtype=torch.float64, device=dev)

    def energy(z):  # (S, C, n, F) complex -> (S, n)
        return torch.linalg.vector_norm(torch.view_as_real(z), dim=(1, -2, -1)).square_()

    for t in range(0, nwin, step):
        n = min(step, nwin - t)
        for k, signal in enumerate((refs, ests)):
            frame_buf[k, :, :, :n, :wlen].copy_(frames(signal, t, t + n, wlen, hop))
        sf, ef = torch.fft.rfft(frame_buf[:, :, :, :n], out=spec[:, :, :, :n]).mul_(weight)  # (S, C, n, F) each
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
        out[0, :, t:t + n] = safe_db(ref_energy[:, t:t + n], isr_den)
        out[1, :, t:t + n] = safe_db(sir_num, sir_den)
        out[2, :, t:t + n] = safe_db(sar_num, sar_den)
    return out
