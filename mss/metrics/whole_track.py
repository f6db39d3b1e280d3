"""Per-track scores selectable beside BSS Eval v4 (``evaluation.metrics``): name -> label and function of
``(references (S, C, T), estimates (S, C, T), sample_rate) -> (S,)``, and ``bss_eval_v3`` (SDR-v3, ISR-v3, SIR-v3,
SAR-v3: the median over the track's frames, like v4's per-track value). ``bss_eval_v4`` (the per-frame museval
metrics) and ``nsdr`` (MDX whole-track SDR) are always computed: the report is built on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from mss.metrics.bss_eval import bss_eval_v3
from mss.metrics.sdr import si_sdr, si_sir_sar
from mss.metrics.spectral import bleedless_fullness, l1_freq

__all__ = ["ALWAYS", "FRAMEWISE", "WHOLE_TRACK", "check_metrics", "whole_track_scores"]

ALWAYS = ("bss_eval_v4", "nsdr")
WHOLE_TRACK: dict[str, tuple[str, Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]]] = {
    "si_sdr": ("SI-SDR", lambda r, e, sr: si_sdr(r, e)),
    "si_sir": ("SI-SIR", lambda r, e, sr: si_sir_sar(r, e)[0]),
    "si_sar": ("SI-SAR", lambda r, e, sr: si_sir_sar(r, e)[1]),
    "bleedless": ("bleedless", lambda r, e, sr: bleedless_fullness(r, e, sr)[0]),
    "fullness": ("fullness", lambda r, e, sr: bleedless_fullness(r, e, sr)[1]),
    "l1_freq": ("L1-freq", lambda r, e, sr: l1_freq(r, e)),
}

# framewise metrics reported per track as the median over frames: name -> labels of (SDR, ISR, SIR, SAR)
FRAMEWISE = {"bss_eval_v3": ("SDR-v3", "ISR-v3", "SIR-v3", "SAR-v3")}


def check_metrics(names: Sequence[str]) -> list[str]:
    """The whole-track metrics of an ``evaluation.metrics`` list (validated; ``ALWAYS`` must be in it)."""
    names = list(names)
    unknown = [n for n in names if n not in WHOLE_TRACK and n not in FRAMEWISE and n not in ALWAYS]
    if unknown:
        raise ValueError(f"evaluation.metrics: unknown {unknown}; available: {[*ALWAYS, *FRAMEWISE, *WHOLE_TRACK]}")
    missing = [n for n in ALWAYS if n not in names]
    if missing:
        raise ValueError(f"evaluation.metrics must include {list(ALWAYS)} (the report is built on them); "
                         f"missing {missing}")
    return [n for n in names if n in WHOLE_TRACK or n in FRAMEWISE]


def whole_track_scores(names: Sequence[str], references: torch.Tensor, estimates: torch.Tensor,
                       sources: Sequence[str], sample_rate: int, win: float = 1.0,
                       hop: float = 1.0) -> dict[str, dict[str, float]]:
    """``{label: {source: score}}`` of the per-track metrics ``names`` on one track's ``(S, C, T)`` stems
    (``win`` / ``hop`` in seconds: the frames of the framewise ones)."""
    out = {}
    for name in names:
        if name in FRAMEWISE:
            result = bss_eval_v3(references.transpose(1, 2), estimates.transpose(1, 2), round(win * sample_rate),
                                 round(hop * sample_rate))
            for label, values in zip(FRAMEWISE[name], result):
                # numpy's median (the mean of the middle two), as museval's per-track medians; torch's takes the lower
                out[label] = dict(zip(sources, np.nanmedian(values.cpu().numpy(), axis=1).tolist()))
        else:
            label, fn = WHOLE_TRACK[name]
            out[label] = dict(zip(sources, fn(references, estimates, sample_rate).tolist()))
    return out
