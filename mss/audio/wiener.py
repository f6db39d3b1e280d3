"""Multichannel Wiener filtering by expectation-maximisation (norbert / Open-Unmix semantics).

Given non-negative magnitude estimates ``|y_j|`` of ``S`` sources and the complex mixture STFT ``x``, the
filter fits a local Gaussian model per source -- a time-frequency power ``v_j(f, t)`` and a time-invariant
spatial covariance ``R_j(f)`` per Wiener window -- and returns the posterior means
``y_j = v_j R_j C_xx^-1 x`` with ``C_xx = sum_j v_j R_j``. It is differentiable and has no parameters, so
it can post-process any spectrogram model (Spleeter ``--mwf``, Open-Unmix ``niter``) or sit inside a
training graph.

Shape legend: ``B`` batch, ``S`` sources, ``C`` audio channels, ``F`` frequency bins, ``N`` frames.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["wiener"]


def wiener(targets: Tensor, mix_stft: Tensor, iterations: int = 1, softmask: bool = True,
           residual: bool = False, eps: float = 1e-10, scale_factor: float = 10.0,
           window_frames: int | None = 300) -> Tensor:
    """Multichannel Wiener filter of magnitude estimates against a mixture STFT.

    Steps, independently for every Wiener window of ``window_frames`` frames and every batch item:

    1. initial estimate: ``softmask`` -> ratio mask ``v_j / (eps + sum_k v_k)`` times ``x``;
       otherwise target magnitude with the mixture phase;
    2. optional ``residual`` source ``x - sum_j y_j`` appended as the last source;
    3. (if ``iterations > 0``) scale ``x`` and ``y`` down by ``max(1, max|x| / scale_factor)``;
    4. ``iterations`` EM steps: ``v_j = mean_c |y_j|^2``;
       ``R_j = sum_t y_j y_j^H / (eps + sum_t v_j)`` per frequency; ``C_xx = sum_j v_j R_j + sqrt(eps) I``;
       ``y_j = v_j R_j C_xx^-1 x``; then scale back.

    EM runs in ``complex128`` internally (covariances of near-mono material are badly conditioned in
    single precision) and the result is cast back to ``mix_stft.dtype``. Any channel count is supported
    (closed-form inverse for ``C <= 2``, :func:`torch.linalg.solve` above).

    Args:
        targets: non-negative magnitude estimates ``(B, S, C, F, N)``.
        mix_stft: complex mixture STFT ``(B, C, F, N)``.
        iterations: number of EM iterations (0 = initial estimate only).
        softmask: ratio-mask initialisation (norbert / Spleeter default) instead of magnitude + mixture phase.
        residual: append the residual ``x - sum_j y_j`` as an extra source.
        eps: regulariser (ratio masks, covariance normalisation, ``sqrt(eps)`` on the ``C_xx`` diagonal).
        scale_factor: target maximum magnitude after down-scaling (numerical range control).
        window_frames: frames per Wiener window (``R_j`` and the scaling are estimated per window; bounds
            memory on long tracks). ``None`` filters the whole input at once.

    Returns:
        complex source STFTs ``(B, S', C, F, N)`` with ``S' = S + 1`` if ``residual`` else ``S``.
    """
    if not mix_stft.is_complex() or mix_stft.dim() != 4:
        raise ValueError(f"mix_stft must be a complex (B, C, F, N) tensor, got {tuple(mix_stft.shape)} "
                         f"{mix_stft.dtype}")
    if targets.is_complex() or targets.dim() != 5:
        raise ValueError(f"targets must be real magnitudes (B, S, C, F, N), got {tuple(targets.shape)} "
                         f"{targets.dtype}")
    if targets.shape[0] != mix_stft.shape[0] or targets.shape[2:] != mix_stft.shape[1:]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match mix_stft {tuple(mix_stft.shape)} "
                         "as (B, S, C, F, N) vs (B, C, F, N)")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if window_frames is not None and window_frames < 1:
        raise ValueError(f"window_frames must be >= 1 or None, got {window_frames}")

    frames = mix_stft.shape[-1]
    win = frames if window_frames is None else window_frames
    chunks = [_wiener_window(targets[..., s:s + win], mix_stft[..., s:s + win], iterations, softmask,
                             residual, eps, scale_factor) for s in range(0, max(frames, 1), win)]
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=-1)


def _wiener_window(v: Tensor, x: Tensor, iterations: int, softmask: bool, residual: bool, eps: float,
                   scale_factor: float) -> Tensor:
    """:func:`wiener` on one window. ``v``: ``(B, S, C, F, N)``, ``x``: ``(B, C, F, N)`` complex."""
    v = v.to(x.real.dtype)
    xs = x.unsqueeze(1)  # B 1 C F N
    if softmask:
        y = xs * (v / (eps + v.sum(dim=1, keepdim=True)))
    else:
        y = torch.polar(v, torch.angle(xs).expand_as(v))
    if residual:
        y = torch.cat([y, xs - y.sum(dim=1, keepdim=True)], dim=1)
    if iterations == 0:
        return y

    out_dtype = y.dtype
    x, y = x.to(torch.complex128), y.to(torch.complex128)
    scale = torch.clamp(x.abs().amax(dim=(1, 2, 3)) / scale_factor, min=1.0)  # B
    x = x / scale[:, None, None, None]
    y = y / scale[:, None, None, None, None]
    for _ in range(iterations):
        y = _em_step(y, x, eps)
    return (y * scale[:, None, None, None, None]).to(out_dtype)


def _em_step(y: Tensor, x: Tensor, eps: float) -> Tensor:
    """One EM iteration. ``y``: ``(B, S, C, F, N)``, ``x``: ``(B, C, F, N)`` complex -> new ``y``."""
    channels = x.shape[1]
    v = y.abs().square().mean(dim=2)  # B S F N
    # spatial covariance per source and frequency, normalised by the source's total power in the window
    r = torch.einsum("bscfn,bsdfn->bsfcd", y, y.conj())
    r = r / (eps + v.sum(dim=-1))[..., None, None].to(r.dtype)  # B S F C C
    vc = v.to(r.dtype)
    cxx = torch.einsum("bsfn,bsfcd->bfncd", vc, r)  # B F N C C
    cxx = cxx + math.sqrt(eps) * torch.eye(channels, dtype=cxx.dtype, device=cxx.device)
    z = solve_small(cxx, torch.einsum("bcfn->bfnc", x))  # C_xx^-1 x : B F N C
    rz = torch.einsum("bsfcd,bfnd->bscfn", r, z)  # R_j C_xx^-1 x : B S C F N
    return vc.unsqueeze(2) * rz


def solve_small(a: Tensor, b: Tensor) -> Tensor:
    """Solve ``a z = b`` for batched ``a``: ``(..., C, C)``, ``b``: ``(..., C)`` -> ``z``: ``(..., C)``.

    Closed form for ``C = 1`` and ``C = 2`` (fast and exact in the small-matrix case), LU solve otherwise.
    """
    channels = a.shape[-1]
    if channels == 1:
        return b / a[..., 0, :]
    if channels == 2:
        a00, a01, a10, a11 = a[..., 0, 0], a[..., 0, 1], a[..., 1, 0], a[..., 1, 1]
        det = a00 * a11 - a01 * a10
        z0 = (a11 * b[..., 0] - a01 * b[..., 1]) / det
        z1 = (a00 * b[..., 1] - a10 * b[..., 0]) / det
        return torch.stack([z0, z1], dim=-1)
    return torch.linalg.solve(a, b.unsqueeze(-1)).squeeze(-1)
