"""Reporting from metric results: per-run and comparison tables (Markdown, CSV, LaTeX, rich), figures (SiSEC-style
box plots, per-track bar charts, runs' SDR bars and learning curves) and the report of an evaluation directory. Every
table header / caption and every file name says which SDR is shown."""

from mss.report.evaluation import write_evaluation
from mss.report.plots import (
    load_method,
    new_figure,
    plot_boxes,
    plot_learning_curves,
    plot_paired,
    plot_sdr_bars,
    plot_track_bars,
    save_figure,
)
from mss.report.tables import (
    CONVENTION_NOTE,
    SDR_DEFINITIONS,
    comparison_table,
    definition,
    file_stem,
    print_table,
    results_table,
    sources_of,
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
    "new_figure",
    "plot_boxes",
    "plot_learning_curves",
    "plot_paired",
    "plot_sdr_bars",
    "plot_track_bars",
    "print_table",
    "results_table",
    "save_figure",
    "sources_of",
    "to_latex",
    "to_markdown",
    "write_evaluation",
    "write_results",
    "write_table",
]
