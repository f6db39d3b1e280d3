"""Cheap whole-signal SDR metrics on torch tensors.

Shape legend: ``B`` batch (any number of leading dims, written ``...``), ``S`` sources, ``C`` channels,
``T`` samples.

* :func:`nsdr` is the MDX/SDX "new SDR" (a.k.a. utterance SDR, uSDR): the plain signal-to-error ratio of a stem over
  the whole signal, energies summed over channels and time. It is the same quantity as museval's v4 SDR, but computed
  over the whole track instead of 1-s frames, and it is never NaN.
* :func:`si_sdr` is the scale-invariant SDR of Le Roux et al. (ICASSP 2019), computed per source on the flattened
  ``C·T`` signal; :func:`si_sir_sar` splits its error into interference and artefacts as that paper does.

Both compute in float64 and return the floating dtype of ``references`` (float32 when the inputs are not floating).
"""

from __future__ import annotations

import torch

__all__ = ["nsdr", "si_sdr", "si_sir_sar"]


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


def si_sir_sar(references: torch.Tensor, estimates: torch.Tensor, eps: float = 1e-8
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale-invariant SIR and SAR in dB (Le Roux et al. 2019, §3), per source with channels flattened.

    With ``e_target = α s_j`` (as in :func:`si_sdr`) and ``P ŝ_j`` the least-squares projection of the estimate on
    the span of all references ``s_1 … s_S``: ``e_interf = P ŝ_j − e_target``, ``e_artif = ŝ_j − P ŝ_j``,
    ``SI-SIR = 10·log10(‖e_target‖² / ‖e_interf‖²)``, ``SI-SAR = 10·log10(‖e_target‖² / ‖e_artif‖²)``.

    Args:
        references, estimates: ``(..., S, C, T)``.

    Returns:
        ``(si_sir, si_sar)``, each ``(..., S)``.
    """
    _check(references, estimates)
    ref = references.to(torch.float64).flatten(-2)  # (..., S, N)
    est = estimates.to(torch.float64).flatten(-2)
    energy = ref.square().sum(-1)  # (..., S)
    alpha = (est * ref).sum(-1) / (energy + eps)
    target = alpha[..., None] * ref
    gram = ref @ ref.transpose(-1, -2) + eps * torch.eye(ref.shape[-2], dtype=ref.dtype, device=ref.device)
    coef = torch.linalg.solve(gram, ref @ est.transpose(-1, -2))  # (..., S refs, S estimates)
    projected = coef.transpose(-1, -2) @ ref  # (..., S, N): P ŝ_j
    t = target.square().sum(-1) + eps
    sir = 10.0 * torch.log10(t / ((projected - target).square().sum(-1) + eps))
    sar = 10.0 * torch.log10(t / ((est - projected).square().sum(-1) + eps))
    dtype = _out_dtype(references)
    return sir.to(dtype), sar.to(dtype)
