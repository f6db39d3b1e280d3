"""Notebooks are kept output-free and their code cells run top to bottom against the package API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_output_free_and_runs(path, tmp_path, monkeypatch):
    notebook = json.loads(path.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code), "strip outputs first"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__notebook__"}
    for i, cell in enumerate(code):
        source = "".join(cell["source"])
        try:
            exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
        except Exception as err:  # name the failing cell
            raise AssertionError(f"{path.name}: code cell {i} failed:\n{source}") from err
    if path.name == "quickstart.ipynb":
        assert (tmp_path / "quickstart" / "run" / "eval" / "results.md").is_file()
        assert set(namespace["metrics"]) >= {"val/nsdr", "train/loss"}
