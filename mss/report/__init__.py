"""Reporting from metric results: per-run and comparison tables (Markdown, CSV, LaTeX, rich) and figures (SiSEC-style
box plots, per-track bar charts). Every table header / caption and every file name says which SDR is shown."""

from mss.report.plots import load_method, plot_boxes, plot_track_bars
from mss.report.tables import (
    CONVENTION_NOTE,
    SDR_DEFINITIONS,
    comparison_table,
    definition,
    file_stem,
    print_table,
    results_table,
    to_latex,
    to_markdown,
    write_results,
    write_table,
)

__all__ = [
    "CONVENTION_NOTE",
    "SDR_DEFINITIONS",
    "comparison_table",
    "definition",
    "file_stem",
    "load_method",
    "plot_boxes",
    "plot_track_bars",
    "print_table",
    "results_table",
    "to_latex",
    "to_markdown",
    "write_results",
    "write_table",
]
