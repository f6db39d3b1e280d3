"""Per-track BSS Eval v4 scores (mss's exact re-implementation or museval itself), per-track JSON and aggregation.

Conventions (SiSEC18, museval 0.4.1):

* :func:`evaluate_track` scores all given sources *jointly* (v4: one set of 512-tap distortion filters per track,
  metrics on ``win``-second frames every ``hop`` seconds; the trailing partial frame is dropped), exactly like
  ``museval.eval_mus_track`` for the same targets (no vocals/accompaniment special case). ``backend="mss"`` uses
  :func:`mss.metrics.bss_eval_v4` (same numbers, much faster); ``backend="museval"`` calls ``museval.evaluate``.
* museval's frame rules: if any reference or estimate stem is digitally silent in a frame, all metrics of *all* sources
  are NaN for that frame; ``±inf`` becomes NaN; values are rounded to 5 decimals (:class:`TrackScores`).
* :func:`aggregate`: per track, the median over frames (NaN frames skipped); then over tracks, the ``median``
  (SiSEC18 / Open-Unmix / Demucs ``sdr_med`` convention) and the ``mean`` of those per-track medians. Tracks whose
  frames are all NaN are skipped.

Shape legend: ``S`` sources, ``T`` samples, ``C`` channels (museval's ``(S, T, C)`` layout).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mss.metrics.bss_eval import IllConditionedWarning, SilentSourceError, bss_eval_v4
from mss.metrics.store import METRICS, TrackScores
from mss.utils import atomic_write_text

__all__ = [
    "BACKENDS",
    "METRICS",
    "aggregate",
    "evaluate_track",
    "save_track_json",
    "track_medians",
]

BACKENDS = ("mss", "museval")


def _silent(stems: np.ndarray) -> np.ndarray:
    """museval's whole-track silence rule: ``(S, T, C) -> (S,)`` True where every sample's channel sum is 0."""
    return np.all(stems.sum(axis=-1) == 0, axis=-1)


def _silent_stems(track_name: str, kind: str, names: list[str]) -> ValueError:
    return ValueError(f"track {track_name!r}: {kind} stem(s) {names} are silent (all zeros) over the whole track; "
                      "BSS Eval cannot evaluate a silent source")


def evaluate_track(
    references: np.ndarray,
    estimates: np.ndarray,
    sources: Sequence[str],
    track_name: str,
    sample_rate: int = 44100,
    win: float = 1.0,
    hop: float = 1.0,
    backend: str = "mss",
    sdr_only: bool = False,
    device: str | None = None,
    absent: Sequence[str] = (),
) -> TrackScores:
    """Evaluate one track with BSS Eval v4 and return its :class:`TrackScores` (museval's ``TrackStore`` format).

    Args:
        references: true stems ``(S, T, C)``.
        estimates: estimated stems ``(S, T, C)``, same shape (no silent padding/truncation is done here).
        sources: the ``S`` target names, in stem order.
        track_name: name stored in the scores (and used in error messages).
        sample_rate: sampling rate in Hz; ``win``/``hop`` are converted with ``int(x * sample_rate)``.
        win: frame length in seconds (SiSEC18: 1.0).
        hop: frame hop in seconds (SiSEC18: 1.0).
        backend: ``"mss"`` (:func:`mss.metrics.bss_eval_v4`) or ``"museval"`` (``museval.evaluate``).
        sdr_only: ``mss`` backend only: skip the distortion filters; ISR/SIR/SAR are NaN (SDR is unchanged).
        device: ``mss`` backend only: torch device to compute on (default CPU).
        absent: sources the track lacks (missing stems): left out of the evaluation (not projected onto, not
            scored) and stored with NaN frames, which every aggregate skips (museval's rule for silent frames).

    Returns:
        :class:`TrackScores` with one target per source holding per-frame SDR/SIR/ISR/SAR; ``.json`` is museval's
        per-track JSON, ``.df`` its long DataFrame (``time, target, metric, score, track``), ``.reliable`` is
        ``False`` when sources (``.unreliable``) have an estimated ISR/SIR/SAR rounding error (``.error_db``) over
        0.01 dB.

    Raises:
        ValueError: if shapes differ, are not 3-D, do not match ``sources``, or a reference/estimate stem is silent
            over the whole track (museval itself would raise an unhelpful error for the latter).
    """
    references = np.asarray(references)
    estimates = np.asarray(estimates)
    if backend not in BACKENDS:
        raise ValueError(f"evaluation backend {backend!r}: expected one of {BACKENDS}")
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
    unknown = sorted(set(absent) - set(sources))
    if unknown:
        raise ValueError(f"track {track_name!r}: absent source(s) {unknown} are not among {list(sources)}")
    if absent:
        keep = [j for j, name in enumerate(sources) if name not in absent]
        if not keep:
            raise ValueError(f"track {track_name!r}: every source is absent, nothing to evaluate")
        part = evaluate_track(references[keep], estimates[keep], [sources[j] for j in keep], track_name,
                              sample_rate, win, hop, backend, sdr_only, device)
        return part.with_absent(list(sources))
    scores = TrackScores(track_name=track_name, win=win, hop=hop)
    w, h = int(win * sample_rate), int(hop * sample_rate)
    if backend == "museval":
        for kind, stems in (("reference", references), ("estimate", estimates)):
            silent = [name for name, s in zip(sources, _silent(stems)) if s]
            if silent:
                raise _silent_stems(track_name, kind, silent)
        import museval

        sdr, isr, sir, sar = museval.evaluate(references, estimates, win=w, hop=h)
    else:
        # bss_eval_v4 applies the same whole-track silence rule (on its frame pass)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", IllConditionedWarning)
            try:
                result = bss_eval_v4(references, estimates, w, h, sdr_only=sdr_only, device=device)
            except SilentSourceError as err:
                raise _silent_stems(track_name, err.kind, [sources[j] for j in err.sources]) from None
        for warning in caught:
            warnings.warn(f"track {track_name!r}: {warning.message}", IllConditionedWarning, stacklevel=2)
        scores.reliable, scores.cond = result.reliable, result.cond
        scores.error_db = {name: float(e) for name, e in zip(sources, result.error_db)}
        scores.unreliable = [sources[j] for j in result.unreliable]
        sdr, isr, sir, sar = (m.cpu().numpy() for m in result)
    for j, name in enumerate(sources):
        scores.add_target(target_name=name, values={"SDR": sdr[j].tolist(), "SIR": sir[j].tolist(),
                                                    "ISR": isr[j].tolist(), "SAR": sar[j].tolist()})
    return scores


def save_track_json(store, path: str | os.PathLike) -> Path:
    """Atomically write the museval JSON (``NaN`` literals included) of a :class:`TrackScores` or
    ``museval.TrackStore`` to ``path``."""
    return atomic_write_text(path, store.json)


def _frames_df(stores: Sequence) -> pd.DataFrame:
    """Concatenate per-track long frames DataFrames (``time, target, metric, score, track``)."""
    if not stores:
        raise ValueError("no tracks to aggregate")
    dfs = [s if isinstance(s, pd.DataFrame) else s.df for s in stores]
    return pd.concat(dfs, ignore_index=True)


def track_medians(stores: Sequence) -> pd.DataFrame:
    """Per-track median over frames, NaN frames skipped (== ``museval.EvalStore.agg_frames_scores``).

    Args:
        stores: ``TrackScores``/``museval.TrackStore`` objects or their long DataFrames (``store.df``), one per track.

    Returns:
        DataFrame with columns ``track, target, metric, score``, one row per (track, target, metric); ``score`` is
        NaN when every frame of that track is NaN.
    """
    df = _frames_df(stores)
    return df.groupby(["track", "target", "metric"])["score"].median().reset_index()


def aggregate(stores: Sequence) -> pd.DataFrame:
    """Aggregate per-track museval results over tracks.

    Per track the median over frames (NaN-skipping), then over tracks (NaN tracks skipped):

    * ``median``: median of the per-track medians, the SiSEC18 convention (== ``EvalStore.agg_frames_tracks_scores``);
    * ``mean``: mean of the per-track medians;
    * ``n_tracks``: number of tracks with a non-NaN per-track median.

    Args:
        stores: ``TrackScores``/``museval.TrackStore`` objects or their long DataFrames (``store.df``), one per track.

    Returns:
        DataFrame indexed by ``(target, metric)`` with columns ``median``, ``mean``, ``n_tracks``;
        e.g. ``agg.loc[("vocals", "SDR"), "median"]``.
    """
    per_track = track_medians(stores)
    grouped = per_track.groupby(["target", "metric"])["score"]
    out = pd.DataFrame({"median": grouped.median(), "mean": grouped.mean(), "n_tracks": grouped.count()})
    return out
