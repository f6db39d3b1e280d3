"""Tests for mss.report tables (Markdown, CSV, rich)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from rich.console import Console

from mss.report import CONVENTION_NOTE, print_table, results_table, to_markdown, write_results

SOURCES = ["vocals", "drums", "bass", "other"]


def _aggregate_df() -> pd.DataFrame:
    """Fake :func:`mss.metrics.aggregate` output; ``other``/ISR is missing (NaN)."""
    rows = []
    for i, src in enumerate(SOURCES):
        for k, metric in enumerate(("SDR", "SIR", "SAR", "ISR")):
            if (src, metric) == ("other", "ISR"):
                continue
            rows.append(
                {
                    "target": src,
                    "metric": metric,
                    "median": i + k / 10,
                    "mean": i + k / 10 + 0.123456,
                    "n_tracks": 50,
                }
            )
    return pd.DataFrame(rows).set_index(["target", "metric"])


def test_results_table_layout() -> None:
    df = results_table(_aggregate_df(), SOURCES, extra={"nSDR": {"vocals": 1.0, "drums": 2.0, "bass": 3.0}})
    assert list(df.index) == [*SOURCES, "mean"]
    assert list(df.columns[:4]) == ["SDR (median)", "SDR (mean)", "SIR (median)", "SIR (mean)"]
    assert df.columns[-1] == "nSDR"
    assert df.loc["drums", "SIR (median)"] == pytest.approx(1.1)
    assert df.loc["mean", "SDR (median)"] == pytest.approx(1.5)  # mean of 0, 1, 2, 3
    assert df.loc["mean", "SDR (mean)"] == pytest.approx(1.623456)
    assert math.isnan(df.loc["other", "ISR (median)"]) and math.isnan(df.loc["mean", "ISR (median)"])
    assert math.isnan(df.loc["other", "nSDR"])


def test_to_markdown() -> None:
    df = results_table(_aggregate_df(), SOURCES, metrics=("SDR", "ISR"))
    md = to_markdown(df, title="Test", note=CONVENTION_NOTE, decimals=3)
    lines = md.splitlines()
    assert lines[0] == "### Test"
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| source | SDR (median) | SDR (mean) | ISR (median) | ISR (mean) |"
    assert set(table[1]) <= set("|-:")
    assert len(table) == 2 + len(SOURCES) + 1
    assert [row.split("|")[1].strip() for row in table[2:]] == [*SOURCES, "mean"]
    assert "| 1.000 | 1.123 |" in table[3]
    assert "nan" in table[5]
    assert "median over 1 s frames per track, then median (SiSEC18) / mean over tracks" in md
    assert all(line.count("|") == table[0].count("|") for line in table)


def test_write_results_roundtrip(tmp_path) -> None:
    df = results_table(_aggregate_df(), SOURCES, extra={"nSDR": {s: 1 / 3 for s in SOURCES}})
    md_path, csv_path = write_results(df, tmp_path / "run", stem="results", title="Run")
    assert md_path.read_text().startswith("### Run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "results.csv",
        "results.md",
    ]  # no temp files
    back = pd.read_csv(csv_path, index_col=0)
    assert list(back.index) == list(df.index)
    pd.testing.assert_frame_equal(back, df, check_exact=True, check_index_type=False)
    # overwriting is atomic too and leaves nothing behind
    write_results(df, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["results.csv", "results.md"]


def test_print_table() -> None:
    console = Console(record=True, width=200)
    print_table(results_table(_aggregate_df(), SOURCES), title="Scores", console=console)
    text = console.export_text()
    assert "Scores" in text and "vocals" in text and "SDR (median)" in text and "nan" in text
