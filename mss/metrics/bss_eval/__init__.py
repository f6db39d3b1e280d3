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
  track (reference or estimate) raises :class:`SilentSourceError` (a ``ValueError``), as museval raises.

How it is faster (same algorithm, same numbers): the auto/cross-correlations come from block FFTs that accumulate
cross-spectra (one short inverse FFT per channel pair instead of museval's full-length ones); the Gram matrix is
factorised **once** for all estimates: on CPU without forming it, by the block Schur recursion for its block Toeplitz
structure (``O(L²X²)`` instead of the ``(L·X)³/3`` of dense Cholesky, which stays the path on CUDA and the fallback);
frames are projected in the frequency domain, a cache-sized chunk at a time, and the energies are taken by Parseval (no
inverse FFTs). SDR alone is one streaming pass. Memory is bounded by chunking blocks and frames into reused buffers.
Everything runs on the device of the inputs (CPU or CUDA).

BSS Eval v3 (:func:`bss_eval_v3`, ``museval.evaluate(..., mode='v3')``) solves the same projection in every frame.

Modules: :mod:`~mss.metrics.bss_eval.v4` (the driver, :func:`bss_eval_v4`), :mod:`~mss.metrics.bss_eval.v3`,
:mod:`~mss.metrics.bss_eval.framing`
(museval's framing, frame energies, silence rule, :func:`frame_sdr`), :mod:`~mss.metrics.bss_eval.correlations` (the
block FFT correlation pass), :mod:`~mss.metrics.bss_eval.toeplitz` (the Gram matrix: assembly, block Toeplitz
product, Schur factor, solves, eigenvalue estimates), :mod:`~mss.metrics.bss_eval.projections` (distortion filters,
ISR/SIR/SAR), :mod:`~mss.metrics.bss_eval.scratch` (working memory and every machine-specific choice: page faults,
BLAS threads, direct LAPACK calls).

Conditioning: with references that have no noise floor (float / 24-bit band-limited synthetic audio) the Gram matrix is
singular to working precision and museval's ISR/SIR/SAR are implementation-dependent garbage. We estimate
``cond(G)``; when the Cholesky factorisation fails or the estimate exceeds ``cond_limit`` the result is flagged
(``result.reliable = False``, :class:`IllConditionedWarning`) and the filters are obtained by LU like museval.

Shape legend: ``S`` sources, ``T`` samples, ``C`` channels, ``L`` filter taps, ``F`` frequency bins, ``N`` frames.
Inputs follow museval's ``(S, T, C)`` layout; internally signals are ``(S, C, T)``.
"""

from mss.metrics.bss_eval.framing import frame_sdr, n_frames
from mss.metrics.bss_eval.toeplitz import EPS
from mss.metrics.bss_eval.v3 import bss_eval_v3
from mss.metrics.bss_eval.v4 import COND_LIMIT, BSSEvalV4, IllConditionedWarning, SilentSourceError, bss_eval_v4

__all__ = [
    "COND_LIMIT",
    "EPS",
    "BSSEvalV4",
    "IllConditionedWarning",
    "SilentSourceError",
    "bss_eval_v3",
    "bss_eval_v4",
    "frame_sdr",
    "n_frames",
]
