"""Cheap whole-signal SDR metrics on torch tensors.

Shape legend: ``B`` batch (any number of leading dims, written ``...``), ``S`` sources, ``C`` channels,
``T`` samples.

* :func:`nsdr` is the MDX/SDX "new SDR" (a.k.a. utterance SDR, uSDR): the plain signal-to-error ratio of a stem over
  the whole signal, energies summed over channels and time. It is the same quantity as museval's v4 SDR, but computed
  over the whole track instead of 1-s frames, and it is never NaN.
* :func:`si_sdr` is the scale-invariant SDR of Le Roux et al. (ICASSP 2019), computed per source on the flattened
  ``C·T`` signal.

Both compute in float64 and return the floating dtype of ``references`` (float32 when the inputs are not floating).
"""

from __future__ import annotations

import torch

__all__ = ["nsdr", "si_sdr"]


def _out_dtype(x: torch.Tensor) -> torch.dtype:
    return x.dtype if x.is_floating_point() else torch.float32


def _check(references: torch.Tensor, estimates: torch.Tensor) -> None:
    if references.shape != estimates.shape:
        raise ValueError(
            f"shape mismatch: references {tuple(references.shape)} vs estimates {tuple(estimates.shape)}"
        )
    if references.dim() < 3:
        raise ValueError(f"expected (..., S, C, T) tensors, got shape {tuple(references.shape)}")


def nsdr(references: torch.Tensor, estimates: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """MDX "new SDR" in dB: ``10·log10((Σ s² + eps) / (Σ (s − ŝ)² + eps))``, sums over channels and time.

    Args:
        references: true stems ``(..., S, C, T)``.
        estimates: estimated stems ``(..., S, C, T)``.
        eps: stabiliser added to both energies (MDX uses 1e-7). A perfect estimate gives
            ``10·log10((Σ s² + eps) / eps)``, a silent reference with a non-silent estimate a strongly negative value.

    Returns:
        ``(..., S)`` scores in dB.
    """
    _check(references, estimates)
    ref = references.to(torch.float64)
    err = ref - estimates.to(torch.float64)
    num = ref.square().sum(dim=(-2, -1)) + eps
    den = err.square().sum(dim=(-2, -1)) + eps
    return (10.0 * torch.log10(num / den)).to(_out_dtype(references))


def si_sdr(
    references: torch.Tensor, estimates: torch.Tensor, zero_mean: bool = False, eps: float = 1e-8
) -> torch.Tensor:
    """Scale-invariant SDR in dB, per source with channels flattened.

    With ``s`` and ``ŝ`` the flattened ``C·T`` reference and estimate of one source, ``α = ⟨ŝ, s⟩ / ‖s‖²`` and
    ``SI-SDR = 10·log10(‖α s‖² / ‖α s − ŝ‖²)``. ``eps`` guards both the projection and the ratio.

    Args:
        references: true stems ``(..., S, C, T)``.
        estimates: estimated stems ``(..., S, C, T)``.
        zero_mean: subtract each flattened signal's mean first (the original paper's convention).
        eps: numerical stabiliser.

    Returns:
        ``(..., S)`` scores in dB.
    """
    _check(references, estimates)
    ref = references.to(torch.float64).flatten(-2)  # (..., S, C·T)
    est = estimates.to(torch.float64).flatten(-2)
    if zero_mean:
        ref = ref - ref.mean(dim=-1, keepdim=True)
        est = est - est.mean(dim=-1, keepdim=True)
    alpha = (est * ref).sum(-1, keepdim=True) / (ref.square().sum(-1, keepdim=True) + eps)
    target = alpha * ref
    num = target.square().sum(-1) + eps
    den = (target - est).square().sum(-1) + eps
    return (10.0 * torch.log10(num / den)).to(_out_dtype(references))
