"""Results tables from aggregated metrics: a per-source DataFrame, Markdown/CSV files and a rich console table."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mss.utils import atomic_write_text

__all__ = [
    "CONVENTION_NOTE", "SDR_DEFINITIONS", "comparison_table", "definition", "file_stem", "print_table",
    "results_table", "sources_of", "to_latex", "to_markdown", "write_results", "write_table",
]

CONVENTION_NOTE = (
    "SDR/SIR/SAR/ISR: BSS Eval v4 (museval images variant, dB): median over 1 s frames per track, then median "
    "(SiSEC18) / mean over tracks; nSDR: MDX whole-track SDR, mean over tracks; the `mean` row is the mean over "
    "sources."
)


def results_table(
    aggregate_df: pd.DataFrame,
    sources: Sequence[str],
    metrics: Sequence[str] = ("SDR", "SIR", "SAR", "ISR"),
    extra: Mapping[str, Mapping[str, float]] | None = None,
) -> pd.DataFrame:
    """Per-source results table.

    Args:
        aggregate_df: output of :func:`mss.metrics.aggregate`, indexed by ``(target, metric)`` with columns
            ``median`` and ``mean``.
        sources: row order; a source missing from ``aggregate_df`` gets NaN.
        metrics: metrics to show; each gives two columns ``"<metric> (median)"`` and ``"<metric> (mean)"``.
        extra: extra columns, ``{column: {source: value}}`` (e.g. ``{"nSDR": {"vocals": 7.1, ...}}``); missing
            sources get NaN.

    Returns:
        DataFrame indexed by ``source`` with one row per source plus a final ``mean`` row (mean over the sources,
        NaN if any source is NaN).
    """
    rows: dict[str, dict[str, float]] = {}
    for src in sources:
        row: dict[str, float] = {}
        for metric in metrics:
            for stat in ("median", "mean"):
                key = (src, metric)
                row[f"{metric} ({stat})"] = (
                    float(aggregate_df.loc[key, stat]) if key in aggregate_df.index else math.nan
                )
        for column, values in (extra or {}).items():
            row[column] = float(values.get(src, math.nan))
        rows[src] = row
    df = pd.DataFrame.from_dict(rows, orient="index", dtype=float)
    df.loc["mean"] = df.mean(axis=0, skipna=False)
    df.index.name = "source"
    return df


def _fmt(value: object, decimals: int) -> str:
    """Floats with ``decimals`` digits (NaN as ``nan``), anything else via ``str``."""
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{float(value):.{decimals}f}"
    return str(value)


def to_markdown(
    df: pd.DataFrame, title: str | None = None, note: str | None = None, decimals: int = 2
) -> str:
    """Render ``df`` (index included as the first column) as a GitHub pipe table.

    Args:
        df: table, e.g. from :func:`results_table`.
        title: optional ``###`` heading above the table.
        note: optional line below the table (e.g. :data:`CONVENTION_NOTE`).
        decimals: digits after the decimal point for floats; NaN is written ``nan``.

    Returns:
        Markdown text ending with a newline.
    """
    header = [str(df.index.name or "")] + [str(c) for c in df.columns]
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * len(df.columns)) + "|")
    for idx, row in zip(df.index, df.itertuples(index=False)):
        cells = [str(idx)] + [_fmt(v, decimals) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def write_results(
    df: pd.DataFrame,
    out_dir: str | os.PathLike,
    stem: str = "results",
    title: str | None = None,
    note: str | None = CONVENTION_NOTE,
    decimals: int = 2,
    formats: Sequence[str] = ("md", "csv", "tex"),
) -> list[Path]:
    """Atomically write a per-run results table as ``<out_dir>/<stem>.md`` (Markdown), ``.csv`` (full precision) and
    ``.tex`` (LaTeX); the note (default: the metric definitions) goes under the Markdown/LaTeX tables.

    The CSV reloads with ``pd.read_csv(path, index_col=0)`` to the same numbers.

    Returns:
        the written paths, in ``formats`` order.
    """
    return write_table(df, out_dir, stem, title=title, note=note, decimals=decimals, formats=formats)


def print_table(
    df: pd.DataFrame, title: str | None = None, decimals: int = 2, console: object | None = None
) -> None:
    """Pretty-print ``df`` with rich (index as the first column, numbers right-aligned)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column(str(df.index.name or ""), style="bold", no_wrap=True)
    for column in df.columns:
        table.add_column(str(column), justify="right", no_wrap=True)
    for idx, row in zip(df.index, df.itertuples(index=False)):
        table.add_row(str(idx), *[_fmt(v, decimals) for v in row])
    # never squeeze the table into a narrow (or non-terminal, 80-column) console: headers would be cut
    (console if console is not None else Console(width=max(Console().width, 160))).print(table)  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------------- definitions

#: What each metric name means in mss tables and plots (every header and file name says which one is shown).
SDR_DEFINITIONS = {
    "SDR": "BSS Eval v4 SDR (museval images variant, 1 s frames)",
    "SIR": "BSS Eval v4 SIR (museval, 512-tap time-invariant filters, 1 s frames)",
    "SAR": "BSS Eval v4 SAR (museval, 512-tap time-invariant filters, 1 s frames)",
    "ISR": "BSS Eval v4 ISR (museval, 512-tap time-invariant filters, 1 s frames)",
    "nSDR": "MDX new SDR (whole track, 1e-7 terms)",
}
_STATS = {
    "median": "median over frames per track, then median over tracks (SiSEC18)",
    "mean": "median over frames per track, then mean over tracks",
}


def definition(metric: str = "SDR", stat: str = "median") -> str:
    """Human-readable definition of ``metric`` aggregated with ``stat`` (for table headers, captions, plot titles)."""
    if metric not in SDR_DEFINITIONS or stat not in _STATS:
        raise ValueError(f"unknown metric/stat {metric!r}/{stat!r}: metrics {list(SDR_DEFINITIONS)}, stats "
                         f"{list(_STATS)}")
    if metric == "nSDR":
        return f"{SDR_DEFINITIONS[metric]} [dB], {stat} over tracks"
    return f"{SDR_DEFINITIONS[metric]} [dB], {_STATS[stat]}"


def file_stem(metric: str = "SDR", stat: str = "median") -> str:
    """File-name form of :func:`definition`: ``SDR-v4_median-of-medians``, ``SDR-v4_mean-of-medians``, ``nSDR_mean``."""
    definition(metric, stat)
    if metric == "nSDR":
        return f"nSDR_{stat}"
    return f"{metric}-v4_{stat}-of-medians"


# ----------------------------------------------------------------------------------------------- LaTeX, comparison


def _tex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(a, b)
    return text


def to_latex(df: pd.DataFrame, caption: str | None = None, note: str | None = None, decimals: int = 2,
             bold_best: bool = False) -> str:
    """Render ``df`` as a ``booktabs`` LaTeX table (index as the first column; NaN as ``--``).

    Args:
        caption: ``\\caption`` text (name the SDR definition here).
        note: small text below the table.
        bold_best: bold the largest value of every numeric column.
    """
    best = {c: df[c].max(skipna=True) for c in df.columns if pd.api.types.is_numeric_dtype(df[c])} if bold_best else {}
    cols = "l" + "r" * len(df.columns)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{_tex_escape(caption)}}}")
    lines += [rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
              " & ".join(_tex_escape(str(c)) for c in [df.index.name or "", *df.columns]) + r" \\", r"\midrule"]
    for idx, row in zip(df.index, df.itertuples(index=False)):
        cells = [_tex_escape(str(idx))]
        for column, value in zip(df.columns, row):
            text = "--" if isinstance(value, (float, np.floating)) and math.isnan(value) else _fmt(value, decimals)
            if column in best and not (isinstance(value, float) and math.isnan(value)) and value == best[column]:
                text = rf"\textbf{{{text}}}"
            cells.append(_tex_escape(text) if not text.startswith("\\") else text)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if note:
        lines.append(rf"\par\smallskip{{\footnotesize {_tex_escape(note)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, out_dir: str | os.PathLike, stem: str, title: str | None = None,
                note: str | None = None, decimals: int = 2, formats: Sequence[str] = ("md", "csv", "tex"),
                bold_best: bool = False) -> list[Path]:
    """Atomically write ``df`` as ``<out_dir>/<stem>.{md,csv,tex}`` (CSV at full precision); returns the paths."""
    out, paths = Path(out_dir), []
    for fmt in formats:
        if fmt == "md":
            text = to_markdown(df, title=title, note=note, decimals=decimals)
        elif fmt == "csv":
            text = df.to_csv()
        elif fmt == "tex":
            text = to_latex(df, caption=title, note=note, decimals=decimals, bold_best=bold_best)
        else:
            raise ValueError(f"table format {fmt!r}: expected md, csv or tex")
        paths.append(atomic_write_text(out / f"{stem}.{fmt}", text))
    return paths


def comparison_table(per_track: pd.DataFrame, sources: Sequence[str] | None = None, metric: str = "SDR",
                     stat: str = "median", methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Several runs / checkpoints / oracles side by side.

    Args:
        per_track: long DataFrame with columns ``method, track, target, metric, score`` where ``score`` is the
            per-track median over frames (:func:`mss.metrics.track_medians` plus a ``method`` column; see
            :func:`mss.report.load_method`).
        sources: column order (default: targets in order of appearance).
        metric: ``SDR``, ``SIR``, ``SAR`` or ``ISR``.
        stat: ``median`` (SiSEC18 median over tracks) or ``mean`` over tracks (NaN tracks skipped).
        methods: row order (default: order of appearance).

    Returns:
        DataFrame indexed by ``method`` with one column per source, a ``mean`` column (mean over the sources) and a
        ``tracks`` column (number of tracks); ``df.attrs["definition"]`` holds :func:`definition`.
    """
    if not {"method", "track", "target", "metric", "score"} <= set(per_track.columns):
        raise ValueError(f"per_track needs columns method, track, target, metric, score; got {list(per_track.columns)}")
    df = per_track[per_track["metric"] == metric]
    sources = list(sources) if sources is not None else list(dict.fromkeys(df["target"]))
    methods = list(methods) if methods is not None else list(dict.fromkeys(df["method"]))
    agg = df.groupby(["method", "target"])["score"].agg(stat).unstack("target")
    table = agg.reindex(index=methods, columns=sources).astype(float)
    table["mean"] = table[sources].mean(axis=1, skipna=False)
    table["tracks"] = df.groupby("method")["track"].nunique().reindex(methods).fillna(0).astype(int)
    table.index.name = "method"
    table.columns.name = None
    table.attrs["definition"] = definition(metric, stat)
    return table


def sources_of(table: pd.DataFrame, prefix: str) -> list[str]:
    """Source names of a runs table's columns ``<prefix> <source>`` (``mean`` excluded)."""
    return [c[len(prefix) + 1:] for c in table.columns if c.startswith(prefix + " ") and not c.endswith(" mean")]
