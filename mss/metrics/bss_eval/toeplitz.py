"""The reference Gram matrix of BSS Eval v4 and its systems: assembly from the correlations, the block Toeplitz
product, the block Schur factorisation, Cholesky solves (block Toeplitz or dense) and eigenvalue estimates.

The Gram matrix of the ``X`` delayed reference channels (``L`` taps each) is ``G[(p, a), (q, b)] = r[p, q, b − a +
L − 1]`` for the correlations ``r (X, X, 2L − 1)``; museval solves ``(G + eps·I) c = D``. Reordered tap-major
(``H[(a, p), (b, q)]``) it is block Toeplitz with ``X×X`` blocks, which :func:`schur_factor` and
:func:`toeplitz_apply` exploit.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import torch
from scipy.fft import next_fast_len

from mss.metrics.bss_eval.scratch import Scratch, cholesky_in_place, host_array, single_threaded_blas

__all__ = ["EPS", "dense_solve", "gram", "power_iteration", "probe", "schur_factor", "toeplitz_apply",
           "toeplitz_solve"]

EPS = float(np.finfo(float).eps)  # museval's regulariser on the Gram matrix diagonal


def gram(r: torch.Tensor, lags: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Gram matrix of the delayed reference channels from their correlations ``r (X, X, 2·lags − 1)``:
    ``G[(p, a), (q, b)] = <s_p(· − a), s_q(· − b)> = r[p, q, b − a + lags − 1]``, ``(X·lags, X·lags)``, written row
    block by row block (temporaries of one row block's size) into ``out`` (default: a new matrix)."""
    x = r.shape[0]
    g = r.new_empty(x, lags, x, lags) if out is None else out.view(x, lags, x, lags)
    for p in range(x):  # g[p, a, q, b] = r[p, q, lags − 1 − a + b]: windows of r[p], flipped along a
        g[p] = r[p].unfold(-1, lags, 1).flip(1).transpose(0, 1)
    return g.view(x * lags, x * lags)


def toeplitz_apply(r: torch.Tensor, lags: int):
    """``v (..., X·lags, w) -> H v`` for the tap-major Gram matrices of :func:`schur_factor` (without their ``eps·I``)
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


def schur_factor(r: np.ndarray, lags: int, out: np.ndarray | None = None) -> np.ndarray | None:
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
    its backward error is up to ~20x dense Cholesky's (still ~1e-15), which :func:`toeplitz_solve` checks.

    Args:
        r: ``(..., X, X, 2·lags − 1)`` correlations (see
            :func:`~mss.metrics.bss_eval.correlations.cross_correlations`): a batch of matrices, factorised together
            (the steps' small problems are batched).
        out: ``(..., X·lags, X·lags)`` float64 buffer for ``U`` (default: a new one).
    """
    batch, x = r.shape[:-3], r.shape[-2]
    n, ext = x * lags, lags - 1
    r = r.reshape(-1, x, x, 2 * lags - 1)
    first = np.ascontiguousarray(r[..., ext - np.arange(lags)].transpose(0, 3, 1, 2)).reshape(-1, n, x)  # H[:, :X]
    first[:, np.arange(x), np.arange(x)] += EPS
    signs = np.r_[np.ones(x), -np.ones(x)]  # J
    minus_j = -np.diag(signs)
    # rows k·X.. hold ℓ_kᵀ from column k·X on; the rest (below the diagonal blocks) is never written nor read, so it
    # is left uninitialised
    upper = (host_array(*batch, n, n) if out is None else out).reshape(-1, n, n)
    # [u v]ᵀ of the current step, in two buffers: a step reads one and writes the next step's into the other
    gens = np.empty((2, len(upper), 2 * x, n - x))
    with single_threaded_blas():  # every step's products are small
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


def toeplitz_solve(r: torch.Tensor, rhs: torch.Tensor, lags: int, apply, lam_max: float, scratch: Scratch,
                   cond: bool = False, max_backward_error: float = 1e-12) -> tuple[torch.Tensor, float] | None:
    """:func:`dense_solve` for the Gram matrices of the correlations ``r (..., X, X, 2·lags − 1)`` (a batch of
    systems, ``rhs (..., X·lags, w)``) without forming them: in tap-major order they are block Toeplitz, factorised by
    :func:`schur_factor`; ``apply`` multiplies by them (:func:`toeplitz_apply`), ``lam_max`` bounds their largest
    eigenvalues; the factors live in ``scratch``. ``λ_min`` only with ``cond`` (unbatched), else NaN. ``None`` when
    the recursion breaks down or a solution's normwise backward error ``‖G c − b‖ / (λ_max ‖c‖ + ‖b‖)`` exceeds
    ``max_backward_error`` (the dense path then decides; measured on 16-bit references: dense Cholesky 4e-17-1e-16,
    the Schur recursion 1e-16-9e-16)."""
    x = r.shape[-2]
    upper = schur_factor(r.numpy(), lags, scratch.reset().take(*r.shape[:-3], x * lags, x * lags).numpy())
    if upper is None:
        return None
    chol = torch.from_numpy(upper).mT
    b = rhs.unflatten(-2, (x, lags)).transpose(-3, -2).flatten(-3, -2)  # rows (channel, tap) -> (tap, channel)
    c, lam_min = _solve_lambda_min(chol, b) if cond else (_cho_solve(b, chol), math.nan)
    residual, norm_c, norm_b = (torch.linalg.vector_norm(t, dim=(-2, -1)) for t in (apply(c) - b, c, b))
    if not bool((residual <= max_backward_error * (lam_max * norm_c + norm_b)).all()):
        return None
    return c.unflatten(-2, (lags, x)).transpose(-3, -2).flatten(-3, -2), lam_min


def dense_solve(gram: torch.Tensor, rhs: torch.Tensor, cond: bool = True) -> tuple[torch.Tensor | None, float]:
    """``(gram⁻¹ rhs, λ_min(gram))`` (``λ_min`` only with ``cond``, else NaN) by Cholesky in place (``gram`` is
    overwritten); ``(None, 0)`` when ``gram`` is not numerically positive definite."""
    chol, ok = cholesky_in_place(gram)
    if not ok:
        return None, 0.0
    return _solve_lambda_min(chol, rhs) if cond else (_cho_solve(rhs, chol), math.nan)


def _solve_lambda_min(chol: torch.Tensor, rhs: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``((L Lᵀ)⁻¹ rhs, λ_min(L Lᵀ))`` from the lower Cholesky factor ``chol``. ``λ_min`` by inverse subspace
    iteration (2 steps on 4 vectors; each costs a pair of triangular solves, so kept narrow), whose first solve shares
    the pass over the factor with ``rhs`` (the solves are bound by reading the factor: extra columns are nearly
    free). Underestimates cond(G) by 10-25 %."""
    k = rhs.shape[1]
    both = _cho_solve(torch.cat([rhs, probe(chol.shape[0], 4, chol)], 1), chol)
    return both[:, :k], 1.0 / power_iteration(lambda v: _cho_solve(v, chol), both[:, k:])


def _cho_solve(b: torch.Tensor, chol: torch.Tensor) -> torch.Tensor:
    """``(L Lᵀ)⁻¹ b`` from the lower Cholesky factor ``chol`` (only its lower triangle is read). Two triangular
    solves: ``torch.cholesky_solve`` copies the factor on every call, which dominates for a 4096² system."""
    y = torch.linalg.solve_triangular(chol, b, upper=False)
    return torch.linalg.solve_triangular(chol.mT, y, upper=True)


def probe(n: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """``(n, width)`` random start vectors (fixed seed) on ``like``'s device."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    return torch.randn(n, width, generator=gen, dtype=torch.float64).to(like.device)


def power_iteration(apply, first: torch.Tensor, iters: int = 2) -> float:
    """Largest eigenvalue of the SPD operator ``apply`` (``(n, w) -> (n, w)``) from ``first = apply(v)`` for random
    vectors ``v`` (:func:`probe`): ``iters`` steps of subspace iteration, then the largest Rayleigh-Ritz value."""
    q = torch.linalg.qr(first)[0]
    for _ in range(iters - 1):
        q = torch.linalg.qr(apply(q))[0]
    return float(torch.linalg.eigvalsh(q.T @ apply(q)).max())
