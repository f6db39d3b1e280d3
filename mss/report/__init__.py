"""Reporting: results tables (DataFrame, Markdown, CSV, rich) built from :mod:`mss.metrics` aggregates."""

from mss.report.tables import CONVENTION_NOTE, print_table, results_table, to_markdown, write_results

__all__ = ["CONVENTION_NOTE", "print_table", "results_table", "to_markdown", "write_results"]
