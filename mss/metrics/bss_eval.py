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
factorised **once** (Cholesky, in place) for all estimates; all frames of a chunk are projected at once in the
frequency domain and the energies are taken by Parseval (no per-frame Python loop, no inverse FFTs). Memory is
bounded by chunking blocks and frames. Everything runs on the device of the inputs (CPU or CUDA).

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
import torch
import torch.nn.functional as F
from scipy.fft import next_fast_len

__all__ = ["COND_LIMIT", "BSSEvalV4", "IllConditionedWarning", "bss_eval_v4", "frame_sdr", "n_frames"]

EPS = float(np.finfo(float).eps)  # museval's regulariser on the Gram matrix diagonal
COND_LIMIT = 1e11  # cond(G) above which ISR/SIR/SAR are flagged (16-bit refs: 1e9-2e10; 20-bit: 3e11, ISR < 0 dB)
_CORR_FFT = 16384  # block FFT size of the correlation pass
_CHUNK_BYTES = 64 * 2**20  # working-memory budget of one chunk of blocks / frames


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


def _chunk(per_item_bytes: float, total: int, chunk: int | None) -> int:
    if chunk is not None:
        return max(1, int(chunk))
    return max(1, min(total, int(_CHUNK_BYTES // max(per_item_bytes, 1))))


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
    num, den, silent = _frame_energies(references, estimates, int(win), int(hop), chunk_frames)
    return _safe_db(num, den).masked_fill(silent.unsqueeze(-2), math.nan)


def _frame_energies(references, estimates, win, hop, chunk_frames):
    """Per frame: reference energy, error energy ``(..., S, N)`` (float64) and the silence mask ``(..., N)``."""
    nwin, wlen = n_frames(references.shape[-1], win, hop)
    step = _chunk(wlen * references[..., 0].numel() * 8 * 4, nwin, chunk_frames)
    num, den, silent = [], [], []
    for t in range(0, nwin, step):
        t1 = min(t + step, nwin)
        a, b = t * hop, (t1 - 1) * hop + wlen
        # one strided pass per input into contiguous float64 (..., S, C, Tc); then only vectorised passes
        ref = torch.empty(references[..., a:b].shape, dtype=torch.float64, device=references.device)
        est = torch.empty_like(ref)
        ref.copy_(references[..., a:b])
        est.copy_(estimates[..., a:b])
        quiet = []  # museval's silence rule: channel sums of its input arrays == 0 over the whole frame
        for x, original in ((ref, references), (est, estimates)):
            # float64 sums of ≤ 2 channels are zero exactly when the input-dtype sums are; else use the input dtype
            total = _channel_sum(x if x.shape[-2] <= 2 else original[..., a:b])
            quiet.append((total == 0).unfold(-1, wlen, hop).all(-1).any(-2))
        silent.append(quiet[0] | quiet[1])
        energy = error = None  # (..., S, Tc) per-sample energies summed over channels
        for c in range(ref.shape[-2]):
            s, d = ref[..., c, :], est[..., c, :].sub_(ref[..., c, :])
            energy = s.square() if energy is None else energy.addcmul_(s, s)
            error = d.square() if error is None else error.addcmul_(d, d)
        num.append(energy.unfold(-1, wlen, hop).sum(-1))
        den.append(error.unfold(-1, wlen, hop).sum(-1))
    return torch.cat(num, -1), torch.cat(den, -1), torch.cat(silent, -1)


# ----------------------------------------------------------------------------------------------- filters


def _segment(x: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """``x[..., start:stop]`` with zeros outside ``[0, T)``."""
    a, b = max(start, 0), min(stop, x.shape[-1])
    b = max(a, b)
    seg = x[..., a:b]
    return F.pad(seg, (a - start, stop - b)) if (a - start or stop - b) else seg


def _correlations(xs: list[torch.Tensor], ys: list[torch.Tensor], lags: int, chunk: int | None = None) -> torch.Tensor:
    """Exact linear cross-correlations ``r[i, j, k + lags − 1] = Σ_n x_i[n + k] y_j[n]`` for ``|k| < lags``.

    Overlap-save blocks: each length-``B`` block of ``y`` meets the block of ``x`` extended by ``lags − 1`` samples on
    both sides; cross-spectra are accumulated over blocks and inverted once per pair. Signals are read block-chunk by
    block-chunk (never copied whole), so memory is bounded whatever the track length.

    Args:
        xs, ys: lists of ``(..., T)`` signals (any real dtype and strides; computed in float64); their rows,
            flattened in order, are the ``X`` and ``Y`` signals.

    Returns:
        ``(X, Y, 2·lags − 1)`` float64.
    """
    length, ext = xs[0].shape[-1], lags - 1
    n_x, n_y = sum(t[..., 0].numel() for t in xs), sum(t[..., 0].numel() for t in ys)
    nfft = next_fast_len(min(length, _CORR_FFT - 2 * ext) + 2 * ext, real=True)
    block = nfft - 2 * ext
    nblocks = -(-length // block)
    freqs = nfft // 2 + 1
    acc = torch.zeros(n_x, n_y, freqs, dtype=torch.complex128, device=xs[0].device)
    step = _chunk((n_x + n_y) * freqs * 16 * 2, nblocks, chunk)

    def rows(signals, start, stop):
        return torch.cat([_segment(t, start, stop).reshape(-1, stop - start) for t in signals]).to(torch.float64)

    for b0 in range(0, nblocks, step):
        b1 = min(b0 + step, nblocks)
        xb = rows(xs, b0 * block - ext, b1 * block + ext).unfold(-1, block + 2 * ext, block)  # (X, b, B + 2L − 2)
        yb = rows(ys, b0 * block, b1 * block).reshape(n_y, b1 - b0, block)
        xf = torch.fft.rfft(xb, n=nfft)  # (X, b, F)
        yf = torch.fft.rfft(yb, n=nfft).conj()  # (Y, b, F)
        acc += torch.matmul(xf.permute(2, 0, 1), yf.permute(2, 1, 0)).permute(1, 2, 0)  # Σ_b X·conj(Y)
    return torch.fft.irfft(acc, n=nfft)[..., :2 * ext + 1]


def _cho_solve(b: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """``(L Lᵀ)⁻¹ b`` from the lower Cholesky factor ``chol`` (only its lower triangle is read). Two triangular
    solves: ``torch.cholesky_solve`` copies the factor on every call, which dominates for a 4096² system."""
    y = torch.linalg.solve_triangular(chol, b, upper=False)
    return torch.linalg.solve_triangular(chol.mT, y, upper=True)


def _power_iteration(apply, n: int, like: torch.Tensor, iters: int = 6) -> float:
    """Largest eigenvalue of the SPD operator ``apply`` by subspace iteration (2 vectors), Rayleigh quotient."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(n, 2, generator=gen, dtype=torch.float64).to(like.device)
    for _ in range(iters):
        v = torch.linalg.qr(apply(v))[0]
    return float(torch.linalg.eigvalsh(v.T @ apply(v)).max())


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


def _filters(refs: torch.Tensor, ests: torch.Tensor, lags: int, cond_limit: float, chunk: int | None):
    """Global (v4) distortion filters.

    Args:
        refs, ests: ``(S, C, T)``.

    Returns:
        ``(c_all, c_own, cond)``: ``c_all (S, C, L, S, C)`` = filters ``[j, c_in, lag, e, c_out]`` projecting estimate
        ``e`` on all references; ``c_own (S, C, L, C)`` = ``[e, c_in, lag, c_out]`` on its own reference; ``cond``
        the condition-number estimate (``inf`` when Cholesky failed).
    """
    n_src, n_ch, _ = refs.shape
    x = n_src * n_ch
    r = _correlations([refs], [refs, ests], lags, chunk)
    ext = lags - 1
    dev = refs.device
    lag = torch.arange(lags, device=dev)
    # G[(j,c,a), (i,c',b)] = <s_jc(· − a), s_ic'(· − b)> = r[jc, ic', b − a]
    rows = torch.arange(x, device=dev)
    gram = r[rows.view(x, 1, 1, 1), rows.view(1, 1, x, 1), (lag.view(1, 1, 1, lags) - lag.view(1, lags, 1, 1)) + ext]
    gram = gram.reshape(x * lags, x * lags)
    # D[(j,c,a), (e,c')] = <s_jc(· − a), ŝ_ec'> = r[jc, x + ec', −a]
    rhs = r[:, x:, ext - lag].permute(0, 2, 1).reshape(x * lags, x)
    cl = n_ch * lags
    own_gram = torch.stack([gram[e * cl:(e + 1) * cl, e * cl:(e + 1) * cl] for e in range(n_src)])
    own_rhs = torch.stack([rhs[e * cl:(e + 1) * cl, e * n_ch:(e + 1) * n_ch] for e in range(n_src)])
    gram.diagonal().add_(EPS)
    own_gram.diagonal(dim1=-2, dim2=-1).add_(EPS)
    lam_max = _power_iteration(lambda v: gram @ v, gram.shape[0], gram)
    backup = gram.clone() if gram.device.type != "cpu" else None  # LU fallback needs G; on CPU rebuilt below
    chol, info = torch.linalg.cholesky_ex(gram, out=(gram, torch.empty((), dtype=torch.int32, device=dev)))
    own_chol, own_info = torch.linalg.cholesky_ex(own_gram)
    cond = math.inf
    if int(info) == 0 and int(own_info.max()) == 0:
        lam_min = 1.0 / _power_iteration(lambda v: _cho_solve(v, chol), gram.shape[0], gram)
        cond = lam_max / lam_min
    if cond <= cond_limit:
        c_all = _cho_solve(rhs, chol)
        c_own = _cho_solve(own_rhs, own_chol)
    else:  # flagged: LU like museval (numbers are not meaningful anyway)
        del chol
        if backup is None:
            backup = _filters_gram(refs, lags, chunk)
        c_all = _lu_solve(backup, rhs)
        own = torch.stack([backup[e * cl:(e + 1) * cl, e * cl:(e + 1) * cl] for e in range(n_src)])
        c_own = _lu_solve(own, own_rhs)
    return c_all.reshape(n_src, n_ch, lags, n_src, n_ch), c_own.reshape(n_src, n_ch, lags, n_ch), cond


def _filters_gram(refs: torch.Tensor, lags: int, chunk: int | None) -> torch.Tensor:
    """``G + eps·I`` again (only on the rare ill-conditioned path, after the in-place Cholesky destroyed it)."""
    x = refs.shape[0] * refs.shape[1]
    r = _correlations([refs], [refs], lags, chunk)
    lag = torch.arange(lags, device=refs.device)
    rows = torch.arange(x, device=refs.device)
    gram = r[rows.view(x, 1, 1, 1), rows.view(1, 1, x, 1), (lag.view(1, 1, 1, lags) - lag.view(1, lags, 1, 1))
             + lags - 1].reshape(x * lags, x * lags)
    gram.diagonal().add_(EPS)
    return gram


# ----------------------------------------------------------------------------------------------- projections


def _image_metrics(refs, ests, c_all, c_own, ref_energy, nwin, wlen, hop, chunk):
    """ISR, SIR, SAR ``(S, N)`` by frequency-domain projection of all frames of a chunk at once; ``ref_energy``
    ``(S, N)`` holds the frames' reference energies."""
    n_src, n_ch, lags = c_own.shape[:3]
    x = n_src * n_ch
    nfft = next_fast_len(wlen + lags - 1, real=True)
    freqs = nfft // 2 + 1
    # Parseval: Σ_n x[n]² = Σ_f w_f |X_f|² for a real length-nfft signal; the frame spectra are scaled by √w_f once, so
    # every projection and error spectrum below is scaled too and its energy is a plain sum of squares
    weight = torch.full((freqs,), 2.0 / nfft, dtype=torch.float64, device=refs.device)
    weight[0] = 1.0 / nfft
    if nfft % 2 == 0:
        weight[-1] = 1.0 / nfft
    weight = weight.sqrt()
    # filter spectra: all-source (F, S·C_out, S·C_in), own-source (S, C_out, C_in, F)
    h_all = torch.fft.rfft(c_all.permute(3, 4, 0, 1, 2).reshape(x, x, lags), n=nfft).permute(2, 0, 1).contiguous()
    h_own = torch.fft.rfft(c_own.permute(0, 3, 1, 2), n=nfft)
    step = _chunk(freqs * 16 * x * 6, nwin, chunk)
    out = []
    for t in range(0, nwin, step):
        t1 = min(t + step, nwin)
        sf = torch.fft.rfft(_frames(refs, t, t1, wlen, hop).to(torch.float64), n=nfft).mul_(weight)  # (S, C, n, F)
        ef = torch.fft.rfft(_frames(ests, t, t1, wlen, hop).to(torch.float64), n=nfft).mul_(weight)
        # P[e, c] = Σ_{j,c'} h_all[e c, j c'] · S[j c']      -> (S, C, n, F)
        proj = torch.matmul(h_all, sf.reshape(x, t1 - t, freqs).permute(2, 0, 1)).permute(1, 2, 0)
        proj = proj.reshape(n_src, n_ch, t1 - t, freqs)
        # P_j[e, c] = Σ_c' h_own[e, c, c'] · S[e, c']
        own = sum(h_own[:, :, k, None, :] * sf[:, k, None] for k in range(n_ch))

        def energy(z):  # (S, C, n, F) -> (S, n); reduce the contiguous (F, re/im) axis first: fast
            return torch.linalg.vector_norm(torch.view_as_real(z).flatten(-2), dim=-1).square().sum(1)

        isr = _safe_db(ref_energy[:, t:t1], energy(own - sf))
        sir = _safe_db(energy(own), energy(proj - own))
        sar = _safe_db(energy(proj), energy(ef - proj))
        out.append(torch.stack([isr, sir, sar]))
    return torch.cat(out, dim=-1)


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
    for kind, stems in (("reference", refs), ("estimate", ests)):
        silent = (_channel_sum(stems) == 0).all(-1)
        if bool(silent.any()):
            raise ValueError(f"{kind} source(s) {silent.nonzero().flatten().tolist()} are silent (all zeros) over "
                             "the whole signal; BSS Eval cannot evaluate a silent source (museval raises too)")
    win, hop = int(win), int(hop)
    nwin, wlen = n_frames(length, win, hop)
    ref_energy, err_energy, silent = _frame_energies(refs, ests, wlen, hop, chunk)
    sdr = _safe_db(ref_energy, err_energy).masked_fill(silent.unsqueeze(-2), math.nan)
    nan = torch.full_like(sdr, math.nan)
    if sdr_only:
        return BSSEvalV4(sdr, nan, nan.clone(), nan.clone())
    c_all, c_own, cond = _filters(refs, ests, filters_len, cond_limit, chunk)
    isr, sir, sar = _image_metrics(refs, ests, c_all, c_own, ref_energy, nwin, wlen, hop, chunk)
    isr, sir, sar = (m.masked_fill(silent.unsqueeze(-2), math.nan) for m in (isr, sir, sar))
    reliable = cond <= cond_limit
    if not reliable:
        warnings.warn(f"BSS Eval v4: the reference Gram matrix is ill-conditioned (cond ≈ {cond:.3g} > "
                      f"{cond_limit:.0e}); ISR/SIR/SAR are not meaningful (references without a noise floor? "
                      "quantise them to 16 bit). SDR is unaffected.", IllConditionedWarning, stacklevel=2)
    return BSSEvalV4(sdr, isr, sir, sar, cond=cond, reliable=reliable)
