"""Results tables from aggregated metrics: a per-source DataFrame, Markdown/CSV files and a rich console table."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mss.utils import atomic_write_text

__all__ = ["CONVENTION_NOTE", "print_table", "results_table", "to_markdown", "write_results"]

CONVENTION_NOTE = (
    "museval BSS Eval v4 (dB): median over 1 s frames per track, then median (SiSEC18) / mean over tracks; "
    "the `mean` row is the mean over sources."
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
) -> tuple[Path, Path]:
    """Atomically write ``<out_dir>/<stem>.md`` (Markdown table) and ``<out_dir>/<stem>.csv`` (full precision).

    The CSV reloads with ``pd.read_csv(path, index_col=0)`` to the same numbers.

    Returns:
        ``(md_path, csv_path)``.
    """
    out = Path(out_dir)
    md_path = atomic_write_text(
        out / f"{stem}.md", to_markdown(df, title=title, note=note, decimals=decimals)
    )
    csv_path = atomic_write_text(out / f"{stem}.csv", df.to_csv())
    return md_path, csv_path


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
