"""The report of one evaluation (what ``python -m mss.evaluate`` writes beside its per-track files): the results
table (Markdown, CSV, LaTeX), ``per_track.csv``, the box plot and per-track bars, the failure report
(``report.md``: :func:`failure_report`) and the console table."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from mss.metrics import aggregate, track_medians
from mss.report.plots import plot_boxes, plot_track_bars
from mss.report.tables import CONVENTION_NOTE, print_table, results_table, write_results
from mss.utils import atomic_write_text

__all__ = ["failure_report", "write_evaluation"]


def write_evaluation(out: str | os.PathLike, frames: pd.DataFrame, nsdrs: Mapping[str, Sequence[float]],
                     sources: Sequence[str], title: str, console_title: str, plots: bool = True,
                     win: float = 1.0, note: str | None = None,
                     whole_track: Mapping[str, Mapping[str, Sequence[float]]] | None = None) -> pd.DataFrame:
    """Write the report of an evaluation into ``out`` and return its results table (rows: sources + mean).

    Args:
        frames: museval's per-frame scores of every track (the concatenated ``TrackScores.df`` frames).
        nsdrs: per source, the whole-track nSDR of every track.
        title: the tables' title (``"<method> on <dataset>/<subset> (<n> tracks)"``; the method, before " on ",
            labels the plots). console_title: the title of the table printed to the console.
        plots: also write ``boxplot_SDR-v4.png`` and ``per-track_SDR-v4.png``.
        win: frame length in seconds (the failure report's frame times).
        note: a line added under the tables' metric definitions (the evaluation's protocol).
        whole_track: other whole-track metrics (``{label: {source: per-track scores}}``), columns
            ``<label> (mean)`` beside nSDR.
    """
    out = Path(out)
    table = results_table(aggregate([frames]), sources,
                          extra={f"{label} (mean)": {s: _mean(v) for s, v in values.items()}
                                 for label, values in {"nSDR": nsdrs, **(whole_track or {})}.items()})
    write_results(table, out, title=title, note=CONVENTION_NOTE + (f" {note}" if note else ""))
    per_track = track_medians([frames])
    atomic_write_text(out / "per_track.csv", per_track.to_csv(index=False))
    if plots:
        per_track = per_track.assign(method=title.split(" on ")[0])
        plot_boxes(per_track, out / "boxplot_SDR-v4.png", sources=sources)
        plot_track_bars(per_track, out / "per-track_SDR-v4.png", sources=sources)
    atomic_write_text(out / "report.md", failure_report(frames, sources, title=title, win=win,
                                                        estimates=out / "estimates"))
    print_table(table, title=console_title)
    return table


def _mean(values: Sequence[float | None]) -> float:
    """Mean over the tracks that have a score (``None``: the track lacks the source), NaN if none has."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else math.nan


def failure_report(frames: pd.DataFrame, sources: Sequence[str], title: str = "", win: float = 1.0,
                   estimates: str | os.PathLike | None = None, worst: int = 5, metric: str = "SDR") -> str:
    """Markdown: per source the ``worst`` tracks (``metric``'s median over frames) and the ``worst`` frames (track,
    start and end time), the frames where the target is silent (museval leaves them NaN: they count in no
    statistic) and, when the estimates were saved under ``estimates``, the files to listen to."""
    df = frames[frames["metric"] == metric]
    lines = [f"# Failure report{': ' + title if title else ''}", "",
             f"{metric} of BSS Eval v4 per {win:g} s frame; tracks ranked by their median over frames.", ""]
    for source in sources:
        sub = df[df["target"] == source]
        medians = sub.groupby("track")["score"].median().sort_values()
        lines += [f"## {source}", "", f"Worst tracks ({metric} median over frames):", ""]
        lines += [f"- {track}: {score:.2f} dB" + _listen(estimates, track, source)
                  for track, score in medians.dropna().head(worst).items()]
        lines += ["", "Worst frames:", ""]
        lines += [f"- {r.track} {float(r.time):.1f}–{float(r.time) + win:.1f} s: {r.score:.2f} dB"
                  for r in sub.dropna(subset=["score"]).nsmallest(worst, "score").itertuples()]
        silent = sub[sub["score"].isna()]
        if silent.empty:
            lines += ["", "No frame with a silent target.", ""]
        else:
            per_track = silent.groupby("track")["time"].apply(list)
            lines += ["", f"Frames where {source} is silent (NaN, left out of every statistic): {len(silent)}", ""]
            lines += [f"- {track}: " + ", ".join(f"{t:.0f}" for t in times[:10]) + (" …" if len(times) > 10 else "")
                      + " s" for track, times in per_track.items()]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _listen(estimates: str | os.PathLike | None, track: str, source: str) -> str:
    path = Path(estimates) / track / f"{source}.wav" if estimates is not None else None
    return f" (listen: `{path}`)" if path is not None and path.is_file() else ""
