"""Figures from per-track scores (matplotlib ``Figure`` on the Agg canvas: no display, pyplot's backend untouched).

Input everywhere: a long DataFrame ``method, track, target, metric, score`` of per-track medians over frames (what
:func:`load_method` returns, or :func:`mss.metrics.track_medians` plus a ``method`` column).

* :func:`plot_boxes`: SiSEC18-style box plots of the per-track scores, one panel per source, one box per method
  (methods sorted by their median over all sources), individual tracks as dots.
* :func:`plot_track_bars`: per-track bar chart, one panel per source, tracks on the x axis, one bar per method.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mss.metrics import read_track_json, track_medians
from mss.report.tables import definition
from mss.utils import atomic_write

__all__ = ["load_method", "plot_boxes", "plot_track_bars"]


def load_method(eval_dir: str | os.PathLike, method: str | None = None, subset: str = "test") -> pd.DataFrame:
    """Per-track medians of an evaluation directory.

    Args:
        eval_dir: a ``mss.evaluate`` run directory (holding ``museval/<subset>/*.json``), or a folder of museval
            per-track JSON files laid out as museval writes them (``<dir>/<subset>/*.json``).
        method: name for the ``method`` column (default: the directory name).
        subset: the subset folder.

    Returns:
        DataFrame ``method, track, target, metric, score``.
    """
    root = Path(eval_dir)
    folder = root / "museval" / subset if (root / "museval" / subset).is_dir() else root / subset
    files = sorted(folder.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"{folder}: no museval per-track JSON files")
    per_track = track_medians([read_track_json(f).df for f in files])
    return per_track.assign(method=method or root.name)[["method", "track", "target", "metric", "score"]]


def _prepare(per_track: pd.DataFrame, metric: str, sources, methods):
    if not {"method", "track", "target", "metric", "score"} <= set(per_track.columns):
        raise ValueError(f"per_track needs columns method, track, target, metric, score; got {list(per_track.columns)}")
    df = per_track[per_track["metric"] == metric]
    if df.empty:
        raise ValueError(f"no {metric} scores to plot")
    sources = list(sources) if sources is not None else list(dict.fromkeys(df["target"]))
    methods = list(methods) if methods is not None else list(dict.fromkeys(df["method"]))
    return df, sources, methods


def _save(fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120))


def _figure(n_panels: int, width: float, height: float):
    """A figure with ``n_panels`` side by side, drawn by the Agg canvas without touching pyplot's global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_panels, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n_panels, squeeze=False)


def plot_boxes(per_track: pd.DataFrame, path: str | os.PathLike, metric: str = "SDR",
               sources: Sequence[str] | None = None, methods: Sequence[str] | None = None) -> Path:
    """SiSEC-style box plots of per-track ``metric`` per source and method; writes ``path`` (PNG/PDF/SVG)."""
    df, sources, methods = _prepare(per_track, metric, sources, methods)
    order = df.groupby("method")["score"].median().reindex(methods).sort_values(na_position="first").index.tolist()
    fig, axes = _figure(len(sources), 3.2, max(2.2, 0.9 + 0.45 * len(order)))
    for ax, source in zip(axes[0], sources):
        sub = df[df["target"] == source]
        data = [sub.loc[sub["method"] == m, "score"].dropna().to_numpy() for m in order]
        ax.boxplot(data, vert=False, widths=0.6, showfliers=False, medianprops={"color": "tab:red"})
        for k, values in enumerate(data, start=1):
            ax.plot(values, [k] * len(values), "o", ms=2.5, alpha=0.5, color="tab:blue")
        ax.set_title(source)
        ax.set_xlabel(f"{metric} [dB]")
        ax.set_yticks(range(1, len(order) + 1), order if ax is axes[0][0] else [""] * len(order))
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"per-track {definition(metric, 'median').split(' [dB]')[0]}, median over frames", fontsize=9)
    return _save(fig, path)


def plot_track_bars(per_track: pd.DataFrame, path: str | os.PathLike, metric: str = "SDR",
                    sources: Sequence[str] | None = None, methods: Sequence[str] | None = None) -> Path:
    """Per-track bar chart of ``metric`` (median over frames), one panel per source, one bar per method."""
    df, sources, methods = _prepare(per_track, metric, sources, methods)
    tracks = sorted(df["track"].unique())
    fig, axes = _figure(len(sources), max(3.0, 0.35 * len(tracks) * len(methods) + 1.0), 3.4)
    width = 0.8 / len(methods)
    for ax, source in zip(axes[0], sources):
        sub = df[df["target"] == source].pivot_table(index="track", columns="method", values="score",
                                                     aggfunc="first", dropna=False)
        sub = sub.reindex(index=tracks, columns=methods)
        for k, method in enumerate(methods):
            ax.bar([i + (k - (len(methods) - 1) / 2) * width for i in range(len(tracks))], sub[method].to_numpy(),
                   width=width, label=method)
        ax.set_title(source)
        ax.set_xticks(range(len(tracks)), tracks, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(f"{metric} [dB]")
        ax.axhline(0, color="black", lw=0.5)
        ax.grid(axis="y", alpha=0.3)
    if len(methods) > 1:
        axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"{definition(metric, 'median').split(' [dB]')[0]}: median over frames per track", fontsize=9)
    return _save(fig, path)
