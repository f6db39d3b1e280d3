"""Separation metrics: BSS Eval v4 and v3 (exact, fast re-implementations of museval), whole-signal nSDR / SI-SDR,
per-frame SDR, per-track scores in museval's JSON format and their aggregation.

museval is imported lazily (only by ``evaluate_track(..., backend="museval")``), so importing this package is cheap
and does not need ffmpeg. This package knows nothing about models or Lightning.
"""

from mss.metrics.bss_eval import (
    COND_LIMIT,
    BSSEvalV4,
    IllConditionedWarning,
    SilentSourceError,
    bss_eval_v3,
    bss_eval_v4,
    frame_sdr,
    n_frames,
)
from mss.metrics.sdr import nsdr, si_sdr, si_sir_sar
from mss.metrics.spectral import bleedless_fullness, l1_freq
from mss.metrics.store import METRICS, MUSEVAL_VERSION, TrackScores, read_track_json
from mss.metrics.track import BACKENDS, aggregate, evaluate_track, save_track_json, track_medians

__all__ = [
    "BACKENDS",
    "COND_LIMIT",
    "METRICS",
    "MUSEVAL_VERSION",
    "BSSEvalV4",
    "IllConditionedWarning",
    "SilentSourceError",
    "TrackScores",
    "aggregate",
    "bleedless_fullness",
    "bss_eval_v3",
    "bss_eval_v4",
    "evaluate_track",
    "frame_sdr",
    "l1_freq",
    "n_frames",
    "nsdr",
    "read_track_json",
    "save_track_json",
    "si_sdr",
    "si_sir_sar",
    "track_medians",
]
