"""Validation metrics of :class:`~mss.lightning.module.SeparationModule` (``module.val_metrics``), per track and
aggregated over the validation tracks as ``mss.evaluate`` aggregates them.

Every name yields logged keys ``val/<key>`` (over sources) and ``val/<key>/<source>``:

* always: ``nsdr`` (MDX whole-track SDR) and ``loss`` (L1 of the estimates, mean over sources) — the mean over tracks;
* ``sdr`` (default on): museval v4 SDR of 1-s frames, median over frames per track, **median over tracks** (the SiSEC18
  headline number; no distortion filters, ~1 ms per minute of audio);
* ``bss_eval_v4``: ``sdr``, ``isr``, ``sir``, ``sar`` of :func:`mss.metrics.bss_eval_v4` (filters solved per track on
  the CPU: seconds per track), aggregated like ``sdr``; ``bss_eval_v3``: ``sdr_v3`` … ``sar_v3`` likewise (one
  solve per frame);
* the whole-track metrics of :data:`mss.metrics.whole_track.WHOLE_TRACK` (``si_sdr``, ``si_sir``, ``si_sar``,
  ``bleedless``, ``fullness``, ``l1_freq``): the mean over tracks.

Any of these keys can be the checkpoint / early-stopping / scheduler monitor (``monitor.metric=val/si_sdr``,
``monitor.mode``): :func:`logged_keys` lists them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from mss.metrics import IllConditionedWarning, bss_eval_v3, bss_eval_v4, frame_sdr, nsdr
from mss.metrics.whole_track import WHOLE_TRACK

__all__ = ["ALWAYS", "MEDIAN_KEYS", "VAL_METRICS", "aggregate", "check_val_metrics", "logged_keys", "track_scores"]

ALWAYS = ("nsdr", "loss")
# name -> the keys it yields
VAL_METRICS: dict[str, tuple[str, ...]] = {
    "nsdr": ("nsdr",), "loss": ("loss",), "sdr": ("sdr",),
    "bss_eval_v4": ("sdr", "isr", "sir", "sar"), "bss_eval_v3": ("sdr_v3", "isr_v3", "sir_v3", "sar_v3"),
    **{name: (name,) for name in WHOLE_TRACK},
}
# keys aggregated as the median over tracks of the per-track medians over frames (the others: mean over tracks)
MEDIAN_KEYS = frozenset({"sdr", "isr", "sir", "sar", "sdr_v3", "isr_v3", "sir_v3", "sar_v3"})


def check_val_metrics(names: Sequence[str] | None) -> list[str]:
    """``module.val_metrics`` validated, with :data:`ALWAYS` added (order kept, no duplicates)."""
    names = list(names or [])
    unknown = [n for n in names if n not in VAL_METRICS]
    if unknown:
        raise ValueError(f"module.val_metrics: unknown {unknown}; available: {list(VAL_METRICS)}")
    return list(dict.fromkeys([*ALWAYS, *names]))


def logged_keys(names: Sequence[str], sources: Sequence[str]) -> list[str]:
    """Every ``val/...`` key the module logs for ``module.val_metrics=names``."""
    keys = dict.fromkeys(k for n in check_val_metrics(names) for k in VAL_METRICS[n])
    return [f"val/{k}" for k in keys] + [f"val/{k}/{s}" for k in keys if k != "loss" for s in sources]


def track_scores(names: Sequence[str], stems: torch.Tensor, estimates: torch.Tensor,
                 sample_rate: int) -> dict[str, torch.Tensor]:
    """``{key: (S,) per-source score}`` of one validation track (``stems``, ``estimates``: ``(S, C, T)``); ``loss`` is
    a scalar. Frame metrics are the median over the track's frames (NaN frames skipped, as museval)."""
    out: dict[str, torch.Tensor] = {}
    for name in check_val_metrics(names):
        if name == "nsdr":
            out["nsdr"] = nsdr(stems[None], estimates[None])[0]
        elif name == "loss":
            out["loss"] = (estimates - stems).abs().mean()
        elif name == "sdr":
            frames = frame_sdr(stems[None], estimates[None], sample_rate, sample_rate)[0]
            out["sdr"] = _median(frames)
        elif name in ("bss_eval_v4", "bss_eval_v3"):
            fn = bss_eval_v4 if name == "bss_eval_v4" else bss_eval_v3
            refs, ests = (x.detach().double().cpu().transpose(1, 2) for x in (stems, estimates))
            with warnings.catch_warnings():  # a validation excerpt's conditioning is not the user's concern
                warnings.simplefilter("ignore", IllConditionedWarning)
                result = fn(refs, ests, sample_rate, sample_rate)
            for key, values in zip(VAL_METRICS[name], result):
                out[key] = _median(values).to(stems.device)
        else:
            out[name] = WHOLE_TRACK[name][1](stems, estimates, sample_rate).to(stems.device)
    return out


def aggregate(key: str, tracks: torch.Tensor) -> torch.Tensor:
    """``(N, S)`` per-track scores of ``key`` -> ``(S,)`` over the tracks: the median for :data:`MEDIAN_KEYS`, else
    the mean (NaN tracks skipped by both)."""
    if key in MEDIAN_KEYS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a source no validation track has: NaN
            return torch.from_numpy(np.nanmedian(tracks.double().cpu().numpy(), axis=0)).to(tracks.device)
    return tracks.nanmean(0)


def _median(frames: torch.Tensor) -> torch.Tensor:
    """``(S, N)`` frame scores -> ``(S,)`` medians over frames, ``±inf`` and NaN frames skipped (numpy's median)."""
    values = frames.masked_fill(frames.isinf(), math.nan).double().cpu().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN source: NaN
        return torch.from_numpy(np.nanmedian(values, axis=-1)).to(frames.device)
