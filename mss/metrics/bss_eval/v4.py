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
from mss.platform.threads import thread_budget

__all__ = ["COND_LIMIT", "MAX_ERROR_DB", "BSSEvalV4", "IllConditionedWarning", "SilentSourceError", "bss_eval_v4"]

COND_LIMIT = 1e11  # cond(G) above which the filters are solved by LU like museval (16-bit refs: 1e9-2e10)
MAX_ERROR_DB = 0.01  # estimated rounding error of ISR/SIR/SAR above which a source is flagged


class IllConditionedWarning(UserWarning):
    """The reference Gram matrix is so ill-conditioned that some sources' ISR/SIR/SAR may be off by more than
    :data:`MAX_ERROR_DB` (the warning names them and the estimated error)."""


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
        cond: estimate of the condition number of the reference Gram matrix ``G + eps·I`` (after leaving out the
            channels in ``copies``; ``inf`` when its Cholesky factorisation failed, ``nan`` when the filters were not
            computed).
        error_db: ``(S,)`` first-order bound on the rounding error of each source's ISR/SIR/SAR in dB (the worst
            frame): ``20·log10(e)·ρ·10^(m/20)`` for the largest metric ``m`` of the source, where ``ρ = ‖G c − D‖ /
            (√λ_min(G) ‖P‖)`` bounds the relative error of its projections ``P`` from the residual of the solved
            normal equations (a relative error ``ρ`` is amplified by the ratio of the projected signal to the small
            error signal of a high metric). ``inf`` where the factorisation failed; ``nan`` without filters.
        unreliable: indices of the sources whose ``error_db`` exceeds :data:`MAX_ERROR_DB`.
        reliable: no source is unreliable (SDR is always exact: it does not depend on the filters).
        copies: per source, the reference channels left out as scaled copies of its other channels (panned-mono or
            bit-identical stems; see :func:`~mss.metrics.bss_eval.projections.copied_channels`).
    """

    cond: float
    error_db: np.ndarray
    copies: list[list[int]]

    def __new__(cls, sdr, isr, sir, sar, cond: float = math.nan, error_db=None, copies=None):
        self = super().__new__(cls, (sdr, isr, sir, sar))
        self.cond = float(cond)
        self.error_db = np.full(sdr.shape[0], math.nan) if error_db is None else np.asarray(error_db, dtype=float)
        self.copies = [[] for _ in range(sdr.shape[0])] if copies is None else copies
        return self

    @property
    def unreliable(self) -> list[int]:
        return [j for j, e in enumerate(self.error_db) if not e <= MAX_ERROR_DB and not math.isnan(e)]

    @property
    def reliable(self) -> bool:
        return not self.unreliable

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


@thread_budget()  # threads from the free cores (see mss.platform.threads)
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
        cond_limit: condition number above which the filters are solved by LU, as museval does.

    Returns:
        :class:`BSSEvalV4` ``(sdr, isr, sir, sar)``, each ``(S, N)`` float64 on ``device``, with ``cond``,
        ``error_db``, ``reliable`` / ``unreliable`` and ``copies``.

    Raises:
        ValueError: on mismatching shapes or an empty signal; :class:`SilentSourceError` (a ``ValueError``) for a
            reference/estimate source that is all zeros over the whole track.
    """
    refs, ests, nwin, wlen, hop, ref_energy, silent, sdr = prepare(references, estimates, win, hop, device, chunk)
    if sdr_only:
        nan = torch.full_like(sdr, math.nan)
        return BSSEvalV4(sdr, nan, nan.clone(), nan.clone())
    # the largest buffer is the Gram matrix's factor
    scratch = Scratch((refs.shape[0] * refs.shape[1] * filters_len) ** 2 * 8 + 8 * CHUNK_BYTES, refs.device)
    c_all, c_own, cond, copies, rel = filters(refs, ests, filters_len, cond_limit, chunk, scratch)
    isr, sir, sar = image_metrics(refs, ests, c_all, c_own, ref_energy, nwin, wlen, hop, chunk, scratch.reset())
    isr, sir, sar = (m.masked_fill(silent, math.nan) for m in (isr, sir, sar))
    result = BSSEvalV4(sdr, isr, sir, sar, cond=cond, error_db=error_estimate(rel, isr, sir, sar), copies=copies)
    warn_unreliable(result, "v4")
    return result


def warn_unreliable(result: BSSEvalV4, version: str) -> None:
    """:class:`IllConditionedWarning` naming the flagged sources of ``result`` and their error bounds."""
    if result.unreliable:
        errors = ", ".join(f"{j}: {result.error_db[j]:.2g} dB" if math.isfinite(result.error_db[j]) else
                           f"{j}: unbounded (not positive definite; solved by LU like museval)"
                           for j in result.unreliable)
        warnings.warn(f"BSS Eval {version}: the reference Gram matrix is ill-conditioned (cond ≈ {result.cond:.3g}); "
                      f"the ISR/SIR/SAR of source(s) {errors} may be off by about that much (estimated rounding "
                      f"error, over {MAX_ERROR_DB} dB). References without a noise floor? Quantise them to 16 bit. "
                      "SDR is unaffected.", IllConditionedWarning, stacklevel=3)


def prepare(references, estimates, win: int, hop: int, device, chunk: int | None):
    """The checks and the frame pass shared by v4 and v3: ``(refs, ests, nwin, wlen, hop, ref_energy, silent,
    sdr)`` with signals ``(S, C, T)`` on the device, the frame count and length, the frames' reference energies
    ``(S, N)``, the silent frames ``(N,)`` and SDR ``(S, N)`` (NaN on silent frames)."""
    refs, ests = _as_stems(references, "references"), _as_stems(estimates, "estimates")
    if device is not None:
        refs, ests = refs.to(device), ests.to(device)
    elif ests.device != refs.device:
        ests = ests.to(refs.device)
    if refs.shape[:2] != ests.shape[:2]:
        raise ValueError(f"references {tuple(references.shape)} and estimates {tuple(estimates.shape)} differ in "
                         "the number of sources or channels")
    length = refs.shape[-1]
    if length == 0:
        raise ValueError(f"references {tuple(references.shape)}: the signals are empty (0 samples); BSS Eval needs at "
                         "least one sample")
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
    return refs, ests, nwin, wlen, hop, ref_energy, silent, sdr


def error_estimate(rel: np.ndarray, *metrics: torch.Tensor) -> np.ndarray:
    """``(S,)`` estimated rounding error in dB of the image metrics from the relative error ``rel (S,)`` of the
    projections (see :attr:`BSSEvalV4.error_db`)."""
    top = torch.stack([m.nan_to_num(nan=-math.inf, posinf=-math.inf) for m in metrics]).amax(dim=(0, 2))
    top = top.cpu().numpy().clip(min=0.0)  # a low metric is not amplified below the projection's own error
    with np.errstate(over="ignore", invalid="ignore"):
        return 20 * math.log10(math.e) * rel * 10 ** (top / 20)
