"""The projections of BSS Eval v4: the global distortion filters (least squares on the reference Gram matrix, once
per track) and the frame-wise image metrics ISR, SIR and SAR.

Shape legend: ``S`` sources, ``C`` channels, ``T`` samples, ``L`` filter taps, ``F`` frequency bins, ``N`` frames.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.fft import next_fast_len

from mss.metrics.bss_eval.correlations import cross_correlations
from mss.metrics.bss_eval.framing import frames, safe_db
from mss.metrics.bss_eval.scratch import STREAM_BYTES, Scratch, chunk_size, lu_solve, rfft_into
from mss.metrics.bss_eval.toeplitz import EPS, dense_solve, gram, power_iteration, probe, toeplitz_apply, toeplitz_solve

__all__ = ["COPY_TOL", "copied_channels", "filters", "image_metrics"]


COPY_TOL = 1e-12  # a reference channel this far below (relative energy, -120 dB) a fit by its source's other channels


def copied_channels(r: torch.Tensor, n_src: int, n_ch: int, lags: int, tol: float = COPY_TOL) -> list[list[int]]:
    """The reference channels of each source that are scaled copies of its other channels, from the lag-0
    correlations in ``r (S·C, ·, 2L − 1)``: channel ``c`` of source ``j`` is a copy when it is silent or the energy of
    its part orthogonal to the source's earlier kept channels is at most ``tol`` times its energy (panned-mono stems:
    ~-150 dB in float32, bit-identical channels exactly 0; 16-bit rounding leaves them ~-70 to -90 dB, kept)."""
    copies = []
    for j in range(n_src):
        rows = slice(j * n_ch, (j + 1) * n_ch)
        zero_lag = r[rows, rows, lags - 1].cpu().double().numpy()
        kept, dropped = [], []
        for c in range(n_ch):
            energy = zero_lag[c, c]
            if kept and energy > 0:
                fit = zero_lag[c, kept] @ np.linalg.lstsq(zero_lag[np.ix_(kept, kept)], zero_lag[kept, c],
                                                          rcond=None)[0]
                energy_left = energy - fit
            else:
                energy_left = energy
            (dropped if energy_left <= tol * energy or energy <= 0 else kept).append(c)
        copies.append(dropped)
    return copies


def filters(refs: torch.Tensor, ests: torch.Tensor, lags: int, cond_limit: float, chunk: int | None,
            scratch: Scratch):
    """Global (v4) distortion filters.

    A reference channel that is a scaled copy of another channel of its source (:func:`copied_channels`) adds
    nothing to the span the estimates are projected on but makes the Gram matrix singular: it is left out of the
    systems (its filter taps are zero), which gives the exact projection where museval's solve of the singular
    system returns one perturbed by rounding (up to ~1e-2 dB on bit-identical channels).

    Args:
        refs, ests: ``(S, C, T)``.

    Returns:
        ``(c_all, c_own, cond, copies, rel)``: ``c_all (S, C, L, S, C)`` = filters ``[j, c_in, lag, e, c_out]``
        projecting estimate ``e`` on all references; ``c_own (S, C, L, C)`` = ``[e, c_in, lag, c_out]`` on its own
        reference;
        ``cond`` the condition-number estimate of the (reduced) Gram matrix (``inf`` when a Cholesky factorisation
        failed); ``copies`` the left-out channels of each source; ``rel (S,)`` an a-posteriori bound on the relative
        rounding error of each estimate's projection (from the residual of its normal equations).
    """
    n_src, n_ch, _ = refs.shape
    x = n_src * n_ch
    r = cross_correlations([refs, ests], x, lags, chunk, scratch.reset())
    copies = copied_channels(r, n_src, n_ch, lags)
    own_channels = [[c for c in range(n_ch) if c not in copies[j]] for j in range(n_src)]
    keep = [j * n_ch + c for j in range(n_src) for c in own_channels[j]]
    ext = lags - 1
    lag = torch.arange(lags, device=refs.device)
    # D[(j,c,a), (e,c')] = <s_jc(· − a), ŝ_ec'> = r[jc, x + ec', −a]
    rhs = r[:, x:, ext - lag].permute(0, 2, 1)  # (X, L, X)
    if len(keep) < x:  # the reduced systems: kept reference channels only (rows and columns of r)
        idx = torch.tensor(keep, device=r.device)
        r = torch.cat([r[idx][:, idx], r[idx][:, x:]], 1)
        rhs = rhs[idx]
    xk = len(keep)
    offsets = np.cumsum([0] + [len(c) for c in own_channels])
    own_rhs = [rhs[offsets[e]:offsets[e + 1], :, e * n_ch:(e + 1) * n_ch].reshape(-1, n_ch) for e in range(n_src)]
    rhs = rhs.reshape(xk * lags, x)
    channels = [slice(0, xk)] + [slice(offsets[e], offsets[e + 1]) for e in range(n_src)]  # all, then each source's

    def regularised(rows: slice, in_scratch: bool = False) -> torch.Tensor:  # G + eps·I over the channels ``rows``
        n = (rows.stop - rows.start) * lags
        g = gram(r[rows, rows], lags, scratch.reset().take(n, n) if in_scratch else None)
        g.diagonal().add_(EPS)
        return g

    apply = toeplitz_apply(r[:, :xk], lags)
    lam_max = power_iteration(apply, apply(probe(xk * lags, 8, r)), iters=8)  # cheap FFT products: run longer
    cpu = refs.device.type == "cpu"
    # own-source systems: on CPU the sources with as many kept channels at once by the Schur recursion (λ_max of G
    # bounds theirs); else, or when the recursion refuses, dense, one at a time
    own: list[torch.Tensor | None] = [None] * n_src
    if cpu:
        for width in sorted({len(c) for c in own_channels}):
            group = [e for e in range(n_src) if len(own_channels[e]) == width]
            own_r = torch.stack([r[channels[e + 1], channels[e + 1]] for e in group])
            solved = toeplitz_solve(own_r, torch.stack([own_rhs[e] for e in group]), lags,
                                    toeplitz_apply(own_r, lags), lam_max, scratch)
            if solved is not None:
                for i, e in enumerate(group):
                    own[e] = solved[0][i].clone()
    for e in range(n_src):
        if own[e] is None:
            own[e] = dense_solve(regularised(channels[e + 1], True), own_rhs[e], cond=False)[0]
    solved = toeplitz_solve(r[:, :xk], rhs, lags, apply, lam_max, scratch, cond=True) if cpu else None
    c_all, lam_min = solved if solved is not None else dense_solve(regularised(channels[0], True), rhs)
    cond = lam_max / lam_min if lam_min > 0 and all(c is not None for c in own) else math.inf
    if cond > cond_limit:  # flagged: LU like museval (on the rebuilt matrices)
        del c_all
        c_all = lu_solve(regularised(channels[0]), rhs)
        own = [lu_solve(regularised(channels[e + 1]), own_rhs[e]) for e in range(n_src)]
    # a-posteriori error of the all-source projections, per estimate channel: ‖δP‖ ≤ ‖G c − D‖ / √λ_min against
    # ‖P‖ = √(cᵀ D) (G c = D); the own-source systems are principal blocks of G, better conditioned
    to_taps = lambda v: v.unflatten(0, (xk, lags)).transpose(0, 1).reshape(xk * lags, -1)  # noqa: E731
    residual = torch.linalg.vector_norm(apply(to_taps(c_all)) - to_taps(rhs), dim=0)
    energy = (c_all * rhs).sum(0).clamp(min=0)
    lam_min = lam_max / cond if math.isfinite(cond) else 0.0
    rel = residual / (lam_min ** 0.5 * energy.sqrt())  # 0/0 (silent estimate channel): NaN -> unbounded
    rel = torch.where(rel.isnan(), math.inf, rel).reshape(n_src, n_ch)
    rel = rel.amax(1).cpu().numpy()
    # back to every channel: zero taps on the left-out copies
    full_all = c_all.new_zeros(x, lags, x)
    full_all[keep] = c_all.reshape(xk, lags, x)
    full_own = c_all.new_zeros(n_src, n_ch, lags, n_ch)
    for e in range(n_src):
        full_own[e, own_channels[e]] = own[e].reshape(len(own_channels[e]), lags, n_ch)
    return full_all.reshape(n_src, n_ch, lags, n_src, n_ch), full_own, cond, copies, rel


def image_metrics(refs, ests, c_all, c_own, ref_energy, nwin, wlen, hop, chunk, scratch):
    """ISR, SIR, SAR ``(S, N)`` by frequency-domain projection of the frames of a chunk at once; ``ref_energy``
    ``(S, N)`` holds the frames' reference energies."""
    n_src, n_ch, lags = c_own.shape[:3]
    x = n_src * n_ch
    nfft = next_fast_len(wlen + lags - 1, real=True)
    freqs = nfft // 2 + 1
    dev = refs.device
    # Parseval: Σ_n x[n]² = (2·Σ_f |X_f|² − |X_0|² − |X_nyquist|²) / nfft for a real length-nfft signal (no Nyquist
    # bin for odd nfft): the single bins are corrected after the plain sum of squares, so no spectrum is weighted
    ends = [0, freqs - 1] if nfft % 2 == 0 else [0]
    # filter spectra: all-source (S·C_out, S·C_in, F), own-source (S, C_out, C_in, F)
    h_all = scratch.take(x, x, freqs, dtype=torch.complex128)
    for i, taps in enumerate(c_all.permute(3, 4, 0, 1, 2).reshape(x, x, lags)):
        torch.fft.rfft(taps, n=nfft, out=h_all[i])
    h_own = scratch.take(n_src, n_ch, n_ch, freqs, dtype=torch.complex128)
    for e, taps in enumerate(c_own.permute(0, 3, 1, 2)):
        torch.fft.rfft(taps, n=nfft, out=h_own[e])
    step = chunk_size(x * 2 * nfft * 8 * 6, nwin, chunk, budget=STREAM_BYTES)
    spec = scratch.take(2, n_src, n_ch, step, freqs, dtype=torch.complex128)
    proj, own, diff = (scratch.take(n_src, n_ch, step, freqs, dtype=torch.complex128) for _ in range(3))
    out = torch.empty(3, n_src, nwin, dtype=torch.float64, device=dev)

    def energy(z):  # (S, C, n, F) complex -> (S, n)
        total = torch.linalg.vector_norm(torch.view_as_real(z), dim=(1, -2, -1)).square_().mul_(2)
        total -= torch.view_as_real(z[..., ends]).square().sum((1, -2, -1))
        return total.div_(nfft)

    for t in range(0, nwin, step):
        n = min(step, nwin - t)
        for k, signal in enumerate((refs, ests)):  # from views of the frames (the FFT zero-pads them)
            rfft_into(frames(signal, t, t + n, wlen, hop), spec[k, :, :, :n], n=nfft)
        sf, ef = spec[:, :, :, :n]  # (S, C, n, F) each
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
