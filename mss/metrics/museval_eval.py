"""museval (BSS Eval v4) as the framework's reference evaluation, plus per-track JSON and aggregation.

museval is imported lazily inside the functions: ``import museval`` pulls in musdb and stempeg, which is slow and needs
the ffmpeg/ffprobe binaries on ``PATH``.

Conventions (SiSEC18, museval 0.4.1):

* :func:`evaluate_track` runs ``museval.evaluate`` (v4: one set of 512-tap distortion filters per track, metrics on
  ``win``-second frames every ``hop`` seconds; the trailing partial frame is dropped) on all given sources *jointly*,
  exactly like ``museval.eval_mus_track`` for the same targets (no vocals/accompaniment special case).
* museval's frame rules: if any reference or estimate stem is digitally silent in a frame, all metrics of *all* sources
  are NaN for that frame; ``±inf`` becomes NaN; values are rounded to 5 decimals (``TrackStore``).
* :func:`aggregate`: per track, the median over frames (NaN frames skipped); then over tracks, the ``median``
  (SiSEC18 / Open-Unmix / Demucs ``sdr_med`` convention) and the ``mean`` of those per-track medians. Tracks whose
  frames are all NaN are skipped.

Shape legend: ``S`` sources, ``T`` samples, ``C`` channels (museval's ``(S, T, C)`` layout).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mss.utils import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import museval

__all__ = [
    "METRICS",
    "aggregate",
    "evaluate_track",
    "save_track_json",
    "track_medians",
]

METRICS: tuple[str, ...] = ("SDR", "SIR", "ISR", "SAR")


def _silent(stems: np.ndarray) -> np.ndarray:
    """museval's whole-track silence rule: ``(S, T, C) -> (S,)`` True where every sample's channel sum is 0."""
    return np.all(stems.sum(axis=-1) == 0, axis=-1)


def evaluate_track(
    references: np.ndarray,
    estimates: np.ndarray,
    sources: Sequence[str],
    track_name: str,
    sample_rate: int = 44100,
    win: float = 1.0,
    hop: float = 1.0,
) -> museval.TrackStore:
    """Evaluate one track with museval BSS Eval v4 and return a museval ``TrackStore``.

    Args:
        references: true stems ``(S, T, C)``.
        estimates: estimated stems ``(S, T, C)``, same shape (no silent padding/truncation is done here).
        sources: the ``S`` target names, in stem order.
        track_name: name stored in the ``TrackStore`` (and used in error messages).
        sample_rate: sampling rate in Hz; ``win``/``hop`` are converted with ``int(x * sample_rate)``.
        win: frame length in seconds (SiSEC18: 1.0).
        hop: frame hop in seconds (SiSEC18: 1.0).

    Returns:
        ``museval.TrackStore`` with one target per source holding per-frame SDR/SIR/ISR/SAR; ``store.json`` is
        museval's per-track JSON and ``store.df`` its long DataFrame (``time, target, metric, score, track``).

    Raises:
        ValueError: if shapes differ, are not 3-D, do not match ``sources``, or a reference/estimate stem is silent
            over the whole track (museval itself would raise an unhelpful error for the latter).
    """
    import museval

    references = np.asarray(references)
    estimates = np.asarray(estimates)
    if references.shape != estimates.shape:
        raise ValueError(
            f"track {track_name!r}: references {references.shape} and estimates {estimates.shape} differ in shape"
        )
    if references.ndim != 3:
        raise ValueError(f"track {track_name!r}: expected (S, T, C) arrays, got shape {references.shape}")
    if len(sources) != references.shape[0]:
        raise ValueError(
            f"track {track_name!r}: {len(sources)} source names for {references.shape[0]} stems ({list(sources)})"
        )
    for kind, stems in (("reference", references), ("estimate", estimates)):
        silent = [name for name, s in zip(sources, _silent(stems)) if s]
        if silent:
            raise ValueError(
                f"track {track_name!r}: {kind} stem(s) {silent} are silent (all zeros) over the whole track; "
                "museval cannot evaluate a silent source"
            )

    sdr, isr, sir, sar = museval.evaluate(
        references, estimates, win=int(win * sample_rate), hop=int(hop * sample_rate)
    )
    store = museval.TrackStore(track_name=track_name, win=win, hop=hop)
    for j, name in enumerate(sources):
        values = {
            "SDR": sdr[j].tolist(),
            "SIR": sir[j].tolist(),
            "ISR": isr[j].tolist(),
            "SAR": sar[j].tolist(),
        }
        store.add_target(target_name=name, values=values)
    return store


def save_track_json(store: museval.TrackStore, path: str | os.PathLike) -> Path:
    """Atomically write a ``TrackStore``'s museval JSON (``NaN`` literals included) to ``path``."""
    return atomic_write_text(path, store.json)


def _frames_df(stores: Sequence[museval.TrackStore | pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-track long frames DataFrames (``time, target, metric, score, track``)."""
    if not stores:
        raise ValueError("no tracks to aggregate")
    dfs = [s if isinstance(s, pd.DataFrame) else s.df for s in stores]
    return pd.concat(dfs, ignore_index=True)


def track_medians(stores: Sequence[museval.TrackStore | pd.DataFrame]) -> pd.DataFrame:
    """Per-track median over frames, NaN frames skipped (``museval.EvalStore.agg_frames_scores``).

    Args:
        stores: ``TrackStore`` objects or their long DataFrames (``store.df``), one per track.

    Returns:
        DataFrame with columns ``track, target, metric, score``, one row per (track, target, metric); ``score`` is
        NaN when every frame of that track is NaN.
    """
    import museval

    evalstore = museval.EvalStore(frames_agg="median", tracks_agg="median")
    evalstore.df = _frames_df(stores)  # one concat instead of EvalStore.add_track's repeated ones
    return evalstore.agg_frames_scores().reset_index()


def aggregate(stores: Sequence[museval.TrackStore | pd.DataFrame]) -> pd.DataFrame:
    """Aggregate per-track museval results over tracks.

    Per track the median over frames (NaN-skipping), then over tracks (NaN tracks skipped):

    * ``median``: median of the per-track medians, the SiSEC18 convention (== ``EvalStore.agg_frames_tracks_scores``);
    * ``mean``: mean of the per-track medians;
    * ``n_tracks``: number of tracks with a non-NaN per-track median.

    Args:
        stores: ``TrackStore`` objects or their long DataFrames (``store.df``), one per track.

    Returns:
        DataFrame indexed by ``(target, metric)`` with columns ``median``, ``mean``, ``n_tracks``;
        e.g. ``agg.loc[("vocals", "SDR"), "median"]``.
    """
    per_track = track_medians(stores)
    grouped = per_track.groupby(["target", "metric"])["score"]
    out = pd.DataFrame({"median": grouped.median(), "mean": grouped.mean(), "n_tracks": grouped.count()})
    return out
