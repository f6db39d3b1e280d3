"""The BSS Eval v4 driver: input layout, the whole-track checks, SDR, then filters and image metrics."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from mss.metrics.bss_eval.framing import frame_energies, n_frames, safe_db, silent_sources
from mss.metrics.bss_eval.projections import filters, image_metrics
from mss.metrics.bss_eval.scratch import CHUNK_BYTES, Scratch

__all__ = ["COND_LIMIT", "BSSEvalV4", "IllConditionedWarning", "SilentSourceError", "bss_eval_v4"]

COND_LIMIT = 1e11  # cond(G) above which ISR/SIR/SAR are flagged (16-bit refs: 1e9-2e10; 20-bit: 3e11, ISR < 0 dB)


class IllConditionedWarning(UserWarning):
    """The reference Gram matrix is (numerically) singular: ISR/SIR/SAR are not meaningful for this track."""


class SilentSourceError(ValueError):
    """A reference or estimate source is all zeros over the whole signal: BSS Eval cannot evaluate it.

    Attributes:
        kind: ``"reference"`` or ``"estimate"``.
        sources: indices of the silent sources of that kind.
    """

    def __init__(self, kind: str, sources: list[int]):
        super().__init__(f"{kind} source(s) {sources} are silent (all zeros) over the whole signal; BSS Eval cannot "
                         "evaluate a silent source (museval raises too)")
        self.kind, self.sources = kind, sources


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
        ValueError: on mismatching shapes; :class:`SilentSourceError` (a ``ValueError``) for a reference/estimate
            source that is all zeros over the whole track.
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
    ref_energy, err_energy, quiet_ref, quiet_est = frame_energies(refs, ests, wlen, hop, chunk)
    for kind, stems, quiet in (("reference", refs, quiet_ref), ("estimate", ests, quiet_est)):
        silent = silent_sources(stems, quiet, wlen, hop)
        if bool(silent.any()):
            raise SilentSourceError(kind, silent.nonzero().flatten().tolist())
    silent = (quiet_ref | quiet_est).any(0)
    sdr = safe_db(ref_energy, err_energy).masked_fill(silent, math.nan)
    nan = torch.full_like(sdr, math.nan)
    if sdr_only:
        return BSSEvalV4(sdr, nan, nan.clone(), nan.clone())
    # the largest buffer is the Gram matrix's factor
    scratch = Scratch((refs.shape[0] * refs.shape[1] * filters_len) ** 2 * 8 + 8 * CHUNK_BYTES, refs.device)
    c_all, c_own, cond = filters(refs, ests, filters_len, cond_limit, chunk, scratch)
    isr, sir, sar = image_metrics(refs, ests, c_all, c_own, ref_energy, nwin, wlen, hop, chunk, scratch.reset())
    isr, sir, sar = (m.masked_fill(silent, math.nan) for m in (isr, sir, sar))
    reliable = cond <= cond_limit
    if not reliable:
        warnings.warn(f"BSS Eval v4: the reference Gram matrix is ill-conditioned (cond ≈ {cond:.3g} > "
                      f"{cond_limit:.0e}); ISR/SIR/SAR are not meaningful (references without a noise floor? "
                      "quantise them to 16 bit). SDR is unaffected.", IllConditionedWarning, stacklevel=2)
    return BSSEvalV4(sdr, isr, sir, sar, cond=cond, reliable=reliable)
