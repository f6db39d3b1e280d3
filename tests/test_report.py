"""Tests for mss.report tables (Markdown, CSV, rich)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from rich.console import Console

from mss.report import (
    CONVENTION_NOTE,
    comparison_table,
    definition,
    file_stem,
    load_method,
    plot_boxes,
    plot_track_bars,
    print_table,
    results_table,
    to_latex,
    to_markdown,
    write_results,
    write_table,
)

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
    md_path, csv_path, tex_path = write_results(df, tmp_path / "run", stem="results", title="Run")
    assert md_path.read_text().startswith("### Run")
    assert tex_path.read_text().startswith(r"\begin{table}")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "results.csv",
        "results.md",
        "results.tex",
    ]  # no temp files
    back = pd.read_csv(csv_path, index_col=0)
    assert list(back.index) == list(df.index)
    pd.testing.assert_frame_equal(back, df, check_exact=True, check_index_type=False)
    # overwriting is atomic too and leaves nothing behind
    write_results(df, tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["results.csv", "results.md", "results.tex"]


def test_print_table() -> None:
    console = Console(record=True, width=200)
    print_table(results_table(_aggregate_df(), SOURCES), title="Scores", console=console)
    text = console.export_text()
    assert "Scores" in text and "vocals" in text and "SDR (median)" in text and "nan" in text


def _per_track() -> pd.DataFrame:
    """Per-track medians of three methods on five tracks (method B is 1 dB better than A; C lacks ``bass``)."""
    rows = []
    for m, offset in (("A", 0.0), ("B", 1.0), ("C", 2.0)):
        for t in range(5):
            for k, src in enumerate(SOURCES):
                if m == "C" and src == "bass":
                    continue
                for metric in ("SDR", "SIR"):
                    rows.append({"method": m, "track": f"track {t}", "target": src, "metric": metric,
                                 "score": offset + k + t + (metric == "SIR")})
    return pd.DataFrame(rows)


def test_comparison_table_and_definitions(tmp_path) -> None:
    table = comparison_table(_per_track(), SOURCES, metric="SDR", stat="median")
    assert list(table.index) == ["A", "B", "C"] and list(table.columns) == [*SOURCES, "mean", "tracks"]
    assert table.loc["A", "drums"] == 1.0 + 2  # median over tracks 0..4 of k + t with k = 1
    assert table.loc["B", "mean"] == pytest.approx(table.loc["A", "mean"] + 1)
    assert math.isnan(table.loc["C", "bass"]) and math.isnan(table.loc["C", "mean"])
    assert table.loc["A", "tracks"] == 5
    assert "median over tracks (SiSEC18)" in table.attrs["definition"]
    mean = comparison_table(_per_track(), SOURCES, metric="SIR", stat="mean", methods=["B", "A"])
    assert list(mean.index) == ["B", "A"] and mean.loc["A", "vocals"] == pytest.approx(0 + 2 + 1)  # k=0, t̄=2, SIR +1
    assert file_stem("SDR", "median") == "SDR-v4_median-of-medians" and file_stem("nSDR", "mean") == "nSDR_mean"
    assert definition("SDR", "mean").startswith("BSS Eval v4 SDR")
    with pytest.raises(ValueError, match="unknown metric"):
        definition("PESQ")
    stem = file_stem("SDR", "median")
    paths = write_table(table, tmp_path, f"comparison_{stem}", title=f"Comparison: {table.attrs['definition']}",
                        bold_best=True)
    assert [p.name for p in paths] == [f"comparison_{stem}.{x}" for x in ("md", "csv", "tex")]
    tex = paths[2].read_text()
    assert r"\textbf{" in tex and "--" in tex and r"\caption{Comparison: BSS Eval v4 SDR" in tex
    assert tex.count(r" \\") == 1 + 3  # header + 3 methods
    pd.testing.assert_frame_equal(pd.read_csv(paths[1], index_col=0), table, check_dtype=False)


def test_to_latex_escapes() -> None:
    df = pd.DataFrame({"SDR_v4 (%)": [1.234, math.nan]}, index=pd.Index(["a&b", "c"], name="method"))
    tex = to_latex(df, caption="x_y", note="50% of #1")
    assert r"a\&b" in tex and r"SDR\_v4 (\%)" in tex and "1.23" in tex and r"x\_y" in tex and r"50\% of \#1" in tex


def test_plots_render(tmp_path) -> None:
    from PIL import Image

    per_track = _per_track()
    box = plot_boxes(per_track, tmp_path / "boxplot_SDR-v4.png", sources=SOURCES)
    bars = plot_track_bars(per_track, tmp_path / "per-track_SDR-v4.png", metric="SIR")
    for path in (box, bars):
        with Image.open(path) as img:
            assert img.size[0] > 400 and img.size[1] > 150
    assert sorted(p.name for p in tmp_path.iterdir()) == ["boxplot_SDR-v4.png", "per-track_SDR-v4.png"]
    with pytest.raises(ValueError, match="no ISR scores"):
        plot_boxes(per_track, tmp_path / "x.png", metric="ISR")


def test_load_method_reads_museval_json(tmp_path) -> None:
    from mss.metrics import TrackScores, save_track_json

    for t in range(3):
        store = TrackScores(f"song {t}")
        for k, src in enumerate(SOURCES):
            values = [k + t, k + t + 2, math.nan]
            store.add_target(src, {m: values for m in ("SDR", "SIR", "ISR", "SAR")})
        save_track_json(store, tmp_path / "run" / "museval" / "test" / f"song {t}.json")
    per_track = load_method(tmp_path / "run", "mine")
    assert set(per_track["method"]) == {"mine"} and per_track["track"].nunique() == 3
    table = comparison_table(per_track, SOURCES)
    assert table.loc["mine", "vocals"] == pytest.approx(2.0)  # per-track median t + 1, median over t = 0, 1, 2
    with pytest.raises(FileNotFoundError, match="no museval per-track JSON"):
        load_method(tmp_path / "empty")


def test_failure_report_names_worst_tracks_frames_silent_frames_and_estimates(tmp_path) -> None:
    from mss.report.evaluation import failure_report

    rows = [{"time": float(t), "target": src, "metric": "SDR", "track": track,
             "score": base + t + (0.0 if src == "vocals" else 5.0)}
            for track, base in (("good", 10.0), ("bad", -3.0)) for src in ("vocals", "drums") for t in range(4)]
    rows[1]["score"] = float("nan")  # good/vocals at 1 s: silent target
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "vocals.wav").write_bytes(b"RIFF")
    text = failure_report(pd.DataFrame(rows), ["vocals", "drums"], title="net on data", estimates=tmp_path, worst=2)
    vocals = text.split("## vocals")[1].split("## drums")[0]
    assert vocals.index("- bad: -1.50 dB") < vocals.index("- good: 12.00 dB")  # worst first (median over frames)
    assert f"(listen: `{tmp_path / 'bad' / 'vocals.wav'}`)" in vocals
    assert "- bad 0.0–1.0 s: -3.00 dB" in vocals and "- bad 1.0–2.0 s: -2.00 dB" in vocals
    assert "vocals is silent (NaN, left out of every statistic): 1" in vocals and "- good: 1 s" in vocals
    assert "No frame with a silent target." in text.split("## drums")[1]
