"""Figures from per-track scores and from runs' result tables, all made by :func:`new_figure` (pyplot's figures
where pyplot is in use, else the Agg canvas: no display needed) and written by :func:`save_figure`.

Input everywhere: a long DataFrame ``method, track, target, metric, score`` of per-track medians over frames (what
:func:`load_method` returns, or :func:`mss.metrics.track_medians` plus a ``method`` column).

* :func:`plot_boxes`: SiSEC18-style box plots of the per-track scores, one panel per source, one box per method
  (methods sorted by their median over all sources), individual tracks as dots.
* :func:`plot_track_bars`: per-track bar chart, one panel per source, tracks on the x axis, one bar per method.
* :func:`plot_sdr_bars`: grouped bars of a runs table (:func:`mss.results.results_table`), one bar per run.
* :func:`plot_learning_curves`: per-epoch metrics of runs (anything with ``name`` and an ``epochs`` DataFrame).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from mss.metrics import read_track_json, track_medians
from mss.report.tables import definition, sources_of
from mss.utils import atomic_write

__all__ = ["load_method", "new_figure", "plot_boxes", "plot_learning_curves", "plot_paired", "plot_sdr_bars",
           "plot_track_bars", "save_figure"]


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


def new_figure(n_panels: int, width: float, height: float):
    """mss's one matplotlib set-up: a figure of ``n_panels`` axes side by side (``width`` x ``height`` inches each).

    Where pyplot is in use (a notebook, an interactive session) the figure is pyplot's, so the session's backend shows
    it (inline in Jupyter); elsewhere (the CLIs, training and loader processes) it is a plain ``Figure`` on the Agg
    canvas: no display needed, pyplot's global backend never touched. Returns ``(figure, axes (1, n_panels))``."""
    if "matplotlib.pyplot" in sys.modules:
        fig = sys.modules["matplotlib.pyplot"].figure(figsize=(width * n_panels, height))
    else:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(width * n_panels, height))
        FigureCanvasAgg(fig)
    return fig, fig.subplots(1, n_panels, squeeze=False)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` atomically (format from the suffix: PNG, PDF, SVG; 120 dpi) and release it from pyplot if
    pyplot holds it; returns ``path``."""
    fig.tight_layout()
    written = atomic_write(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png",
                                                         dpi=120))
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    return written


def plot_boxes(per_track: pd.DataFrame, path: str | os.PathLike, metric: str = "SDR",
               sources: Sequence[str] | None = None, methods: Sequence[str] | None = None) -> Path:
    """SiSEC-style box plots of per-track ``metric`` per source and method; writes ``path`` (PNG/PDF/SVG)."""
    df, sources, methods = _prepare(per_track, metric, sources, methods)
    order = df.groupby("method")["score"].median().reindex(methods).sort_values(na_position="first").index.tolist()
    fig, axes = new_figure(len(sources), 3.2, max(2.2, 0.9 + 0.45 * len(order)))
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
    return save_figure(fig, path)


def plot_track_bars(per_track: pd.DataFrame, path: str | os.PathLike, metric: str = "SDR",
                    sources: Sequence[str] | None = None, methods: Sequence[str] | None = None) -> Path:
    """Per-track bar chart of ``metric`` (median over frames), one panel per source, one bar per method."""
    df, sources, methods = _prepare(per_track, metric, sources, methods)
    tracks = sorted(df["track"].unique())
    fig, axes = new_figure(len(sources), max(3.0, 0.35 * len(tracks) * len(methods) + 1.0), 3.4)
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
    return save_figure(fig, path)


def plot_sdr_bars(table: pd.DataFrame, prefix: str | None = None, ax=None):
    """Grouped bars of a runs table: per source (groups) one bar per run. ``prefix``: the column prefix (default: the
    test SDR columns, else the validation nSDR ones). Returns the figure."""
    if prefix is None:
        prefix = next((p for p in (f"test SDR ({s})" for s in ("median", "mean")) if sources_of(table, p)),
                      "val nSDR")
    sources = [c for c in sources_of(table, prefix) if c != "tracks"]
    if not sources:
        raise ValueError(f"no '{prefix} <source>' columns to plot; columns: {list(table.columns)}")
    if ax is None:
        fig, axes = new_figure(1, 1.2 + 1.1 * len(sources) * max(1, len(table)) / 2, 3.5)
        ax = axes[0][0]
    width = 0.8 / len(table)
    for i, (run, row) in enumerate(table.iterrows()):
        xs = [j + (i - (len(table) - 1) / 2) * width for j in range(len(sources))]
        ax.bar(xs, [row[f"{prefix} {s}"] for s in sources], width, label=str(run))
    ax.set_xticks(range(len(sources)), sources)
    ax.set_ylabel(f"{prefix} (dB)")
    ax.axhline(0, color="k", lw=0.5)
    ax.legend(fontsize=7, loc="best")
    ax.grid(axis="y", alpha=0.3)
    return ax.figure


def plot_learning_curves(runs: Sequence, metrics: Sequence[str] = ("train/loss_epoch", "val/nsdr")):
    """One panel per metric (per epoch), one line per run (:class:`mss.results.Run`: ``name``, ``epochs``)."""
    fig, axes = new_figure(len(metrics), 4.5, 3.3)
    for ax, metric in zip(axes[0], metrics):
        for run in runs:
            epochs = run.epochs
            if metric in epochs:
                values = epochs[metric].dropna()
                ax.plot(values.index + 1, values.to_numpy(), marker="o", ms=3, label=run.name)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="best")
    return fig


def plot_paired(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Paired differences between methods (:func:`mss.report.statistics.paired`): one panel per source, per pair
    the difference with its CI; filled markers where the Holm-corrected test is significant. Writes ``path``."""
    sources = list(dict.fromkeys(table.index.get_level_values("source")))
    pairs = list(dict.fromkeys((a, b) for a, b, _ in table.index))
    fig, axes = new_figure(len(sources), 3.0, max(2.0, 0.9 + 0.4 * len(pairs)))
    for ax, source in zip(axes[0], sources):
        for k, (a, b) in enumerate(pairs):
            row = table.loc[(a, b, source)]
            err = [[row["difference"] - row["low"]], [row["high"] - row["difference"]]]
            ax.errorbar([row["difference"]], [k], xerr=err, fmt="o", color="tab:blue",
                        mfc="tab:blue" if row["significant"] else "white", capsize=3)
        ax.axvline(0, color="black", lw=0.6)
        ax.set_title(source)
        ax.set_yticks(range(len(pairs)), [f"{a} − {b}" for a, b in pairs] if ax is axes[0][0] else [""] * len(pairs))
        ax.set_xlabel("difference [dB]")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("paired per-track differences with bootstrap CIs (filled: significant after Holm)", fontsize=9)
    return save_figure(fig, path)
