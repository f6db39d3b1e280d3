"""BSS Eval v3 (the mir_eval / SiSEC 2016 definition): ``museval.evaluate(..., mode='v3')``, images variant.

The only difference from v4 (:mod:`~mss.metrics.bss_eval.v4`) is where the distortion filters come from: v3 solves
the least-squares projection **in every frame** from that frame's references and estimate (time-varying filters,
what mir_eval's ``bss_eval_images_framewise`` and the SiSEC 2016 tables use), v4 once per track from the whole
signals. SDR is the same number in both (it does not depend on the filters); ISR/SIR/SAR differ, v3's being higher
on the whole because every frame gets its own best filters. Framing, the silence rule (a frame where any reference or
estimate source is digitally silent is NaN), padding and the whole-track silent-source error are v4's.

Each non-silent frame is one v4 problem on the frame's samples (correlations, the block Toeplitz / dense Cholesky
solve with scaled-copy channels left out, frequency-domain projection), so a track costs about ``N`` times v4's
filter stage; museval's v3 does the same per frame with dense solves.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from mss.metrics.bss_eval.projections import filters, image_metrics
from mss.metrics.bss_eval.scratch import CHUNK_BYTES, Scratch
from mss.metrics.bss_eval.v4 import COND_LIMIT, BSSEvalV4, error_estimate, prepare, warn_unreliable
from mss.platform.threads import thread_budget

__all__ = ["bss_eval_v3"]


@thread_budget()  # threads from the free cores (see mss.platform.threads)
def bss_eval_v3(references, estimates, win: int = 44100, hop: int = 44100, *, filters_len: int = 512,
                device: str | torch.device | None = None, chunk: int | None = None,
                cond_limit: float = COND_LIMIT) -> BSSEvalV4:
    """BSS Eval v3 exactly as ``museval.evaluate(references, estimates, win, hop, mode='v3')``.

    Arguments, result and errors as :func:`~mss.metrics.bss_eval.v4.bss_eval_v4` (no ``sdr_only``: v4's SDR is the
    same number). ``cond`` is the largest over the frames, ``error_db`` each source's worst frame, ``copies`` the
    channels left out in any frame.
    """
    refs, ests, nwin, wlen, hop, ref_energy, silent, sdr = prepare(references, estimates, win, hop, device, chunk)
    n_src = refs.shape[0]
    isr, sir, sar = (torch.full_like(sdr, math.nan) for _ in range(3))
    scratch = Scratch((n_src * refs.shape[1] * filters_len) ** 2 * 8 + 8 * CHUNK_BYTES, refs.device)
    cond, error_db = math.nan, np.zeros(n_src)
    copies: list[set[int]] = [set() for _ in range(n_src)]
    for t in (~silent).nonzero().flatten().tolist():
        frame_refs, frame_ests = (x[..., t * hop:t * hop + wlen] for x in (refs, ests))
        c_all, c_own, frame_cond, frame_copies, rel = filters(frame_refs, frame_ests, filters_len, cond_limit,
                                                              chunk, scratch)
        metrics = image_metrics(frame_refs, frame_ests, c_all, c_own, ref_energy[:, t:t + 1], 1, wlen, hop, chunk,
                                scratch.reset())
        isr[:, t], sir[:, t], sar[:, t] = metrics[:, :, 0]
        cond = frame_cond if math.isnan(cond) else max(cond, frame_cond)
        error_db = np.fmax(error_db, error_estimate(rel, *metrics))
        for j, channels in enumerate(frame_copies):
            copies[j].update(channels)
    if math.isnan(cond):  # every frame silent
        error_db[:] = math.nan
    result = BSSEvalV4(sdr, isr, sir, sar, cond=cond, error_db=error_db, copies=[sorted(c) for c in copies])
    warn_unreliable(result, "v3")
    return result
