"""Separation metrics: whole-signal nSDR / SI-SDR (torch) and museval BSS Eval v4 helpers.

museval is imported lazily (inside the functions of :mod:`mss.metrics.museval_eval`), so importing this package is
cheap and does not need ffmpeg. This package knows nothing about models or Lightning.
"""

from mss.metrics.museval_eval import (
    METRICS,
    aggregate,
    evaluate_track,
    save_track_json,
    track_medians,
)
from mss.metrics.sdr import nsdr, si_sdr

__all__ = [
    "METRICS",
    "aggregate",
    "evaluate_track",
    "nsdr",
    "save_track_json",
    "si_sdr",
    "track_medians",
]
