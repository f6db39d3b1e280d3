"""scripts/bench_separate.py: its chunk bookkeeping and table, and ``--quick`` on tiny models: every row is measured,
mss eager reproduces the reference packages' separations (demucs.apply.apply_model with the shift trick, openunmix
Separator) on the same weights, and the table says what it measured. The end-to-end run starts ~8 processes (about
40 CPU-seconds; minutes of wall time on the shared 2-core VM), hence slow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts.bench_separate import COLUMNS, SR, _max_delta, format_table, same_chunks_end
from tests._reference import import_reference

REPO = Path(__file__).resolve().parents[1]


def test_same_chunks_end_is_the_start_of_the_last_mss_chunk():
    # 10 000 samples after a lead of 100: chunks of 1 000 every 750 start at 0, 750, ..., 9 750 (covers 10 100)
    meta = {"max_shift": 200, "offset": 100, "segment": 1000}
    assert same_chunks_end(meta, 10_000) == 9_750 - 100
    assert same_chunks_end({**meta, "offset": 200}, 500) == 0  # one chunk: nothing is cut alike
    assert _max_delta(np.ones((1, 4)), np.array([[1.0, 1.0, 3.0, 1.5]]), upto=2) == 0.0
    with pytest.raises(RuntimeError, match="shapes differ"):
        _max_delta(np.ones((1, 4)), np.ones((1, 5)))


def test_table_rows_ratios_and_skips():
    results = {1: {"htdemucs": {"ref": {"time": 8.0, "peak": 900.0, "first": None},
                                "mss": {"time": 2.0, "peak": 700.4, "first": None, "delta": 3e-2, "delta_same": 2e-7,
                                        "same_end": 3 * SR},
                                "onnx": {"skipped": "computes an STFT"}},
                   "unet2": {"mss": {"time": 0.5, "peak": None, "first": 1.25}}}}
    lines = format_table(results, seconds=10.0).splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |" and lines[1] == "|" + "---|" * len(COLUMNS)
    assert lines[3] == ("| 1 | HT Demucs (released htdemucs config) | mss eager | 2.00 | 5.0 | 700 | – | 2.0e-07 same "
                        "chunks (first 3.0 s), 3.0e-02 all | 4.00× | – |")
    assert lines[4].startswith("| 1 | HT Demucs (released htdemucs config) | mss ONNX (onnxruntime) | skipped: "
                               "computes an STFT |")
    assert lines[5] == "| 1 | Spleeter U-Net 2 stems | mss eager | 0.50 | 20.0 | – | 1.2 | no reference | – | – |"


@pytest.mark.slow
def test_quick_benchmark_on_tiny_models(tmp_path):
    import_reference("demucs.apply")  # skips (or fails under MSS_REQUIRE_REFERENCES) without the packages
    import_reference("openunmix.model")
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_separate.py"), "--quick", "--tiny",
                           "--seconds", "2", "--threads", "1", "--skip", "compile,bf16,chunks,ref-passive", "--json",
                           str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    results = report["results"]["0"]
    assert set(results) == {"htdemucs", "umx", "unet2", "unet4"}
    length = 2 * SR
    for case, methods in results.items():
        for method, r in methods.items():
            assert "skipped" not in r, (case, method, r)  # ONNX too: HT Demucs exports with the real-valued STFT
            sources = 2 if case == "unet2" else 4
            assert r["shape"] == [sources, 2, length] and r["time"] > 0 and r["peak"] > 0, (case, method, r)
    ht, umx = results["htdemucs"]["mss"], results["umx"]["mss"]
    # same weights, same chunks: the implementations agree to float rounding (outputs are O(0.1..1))
    assert ht["delta_same"] < 1e-4 and umx["delta"] < 1e-4 and results["htdemucs"]["onnx"]["delta_same"] < 1e-4
    assert 0 < ht["same_end"] < length
    # after the last mss chunk starts, the reference cuts (and pads) chunks differently: not equal there
    assert ht["delta"] > 1e-3
    # the printed table: a row per measurement, the agreement and the ratios in it
    table = report["table"].splitlines()
    assert table[0] == "| " + " | ".join(COLUMNS) + " |" and table[0] in proc.stdout
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[1:3]): line for line in table[2:]}
    assert len(rows) == len(table) - 2 == 7  # HT Demucs 3, Open-Unmix 2, U-Nets 2
    row = rows[("HT Demucs (released htdemucs config)", "mss eager")]
    assert f"{ht['delta_same']:.1e} same chunks" in row and f"{results['htdemucs']['ref']['time'] / ht['time']:.2f}×" \
        in row
    assert "same chunks" in rows[("HT Demucs (released htdemucs config)", "mss ONNX (onnxruntime)")]
    assert "no reference" in rows[("Spleeter U-Net 2 stems", "mss eager")]
    assert "load average before" in report["title"]
