"""The report of one evaluation (what ``python -m mss.evaluate`` writes beside its per-track files): the results
table (Markdown, CSV, LaTeX), ``per_track.csv``, the box plot and per-track bars, and the console table."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from mss.metrics import aggregate, track_medians
from mss.report.plots import plot_boxes, plot_track_bars
from mss.report.tables import print_table, results_table, write_results
from mss.utils import atomic_write_text

__all__ = ["write_evaluation"]


def write_evaluation(out: str | os.PathLike, frames: pd.DataFrame, nsdrs: Mapping[str, Sequence[float]],
                     sources: Sequence[str], title: str, console_title: str, plots: bool = True) -> pd.DataFrame:
    """Write the report of an evaluation into ``out`` and return its results table (rows: sources + mean).

    Args:
        frames: museval's per-frame scores of every track (the concatenated ``TrackScores.df`` frames).
        nsdrs: per source, the whole-track nSDR of every track.
        title: the tables' title (``"<method> on <dataset>/<subset> (<n> tracks)"``; the method, before " on ",
            labels the plots). console_title: the title of the table printed to the console.
        plots: also write ``boxplot_SDR-v4.png`` and ``per-track_SDR-v4.png``.
    """
    out = Path(out)
    table = results_table(aggregate([frames]), sources,
                          extra={"nSDR (mean)": {s: sum(v) / len(v) for s, v in nsdrs.items()}})
    write_results(table, out, title=title)
    per_track = track_medians([frames])
    atomic_write_text(out / "per_track.csv", per_track.to_csv(index=False))
    if plots:
        per_track = per_track.assign(method=title.split(" on ")[0])
        plot_boxes(per_track, out / "boxplot_SDR-v4.png", sources=sources)
        plot_track_bars(per_track, out / "per-track_SDR-v4.png", sources=sources)
    print_table(table, title=console_title)
    return table
