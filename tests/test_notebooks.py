"""Notebooks are kept output-free in git and executed top to bottom in a Jupyter kernel (nbclient) against the
package API: the quickstart end to end, the ablation notebook on a small sweep, separate-and-listen on a
checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_in_git_is_output_free(path):
    """The nbstripout rule (see docs/workflow.md): no outputs, execution counts or widget state are committed."""
    notebook = json.loads(path.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code, "a notebook without code"
    dirty = [i for i, c in enumerate(code) if c.get("outputs") or c.get("execution_count") is not None]
    assert not dirty, f"{path.name}: code cells {dirty} have outputs; run `nbstripout {path}` before committing"
    assert "widgets" not in notebook.get("metadata", {}), f"{path.name}: widget state in the metadata"


def test_git_attributes_strip_notebook_outputs():
    assert "*.ipynb filter=nbstripout" in (ROOT / ".gitattributes").read_text()


def execute(path: Path, cwd: Path, env: dict[str, str], monkeypatch, timeout: int = 900):
    """Run every cell in a fresh kernel (working directory ``cwd``, extra environment ``env``); returns the
    executed notebook. A failing cell raises ``CellExecutionError`` naming the cell and its traceback."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: figures become outputs
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def outputs_text(notebook) -> str:
    return "\n".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in notebook.cells
                     if c.cell_type == "code" for o in c.outputs)


def test_quickstart_runs_end_to_end(tmp_path, monkeypatch):
    notebook = execute(ROOT / "notebooks" / "quickstart.ipynb", tmp_path, {}, monkeypatch)
    assert (tmp_path / "quickstart" / "run" / "eval" / "results.md").is_file()
    assert "val/nsdr" in outputs_text(notebook)


def test_ablations_notebook_on_a_small_sweep(tmp_path, monkeypatch):
    from tests._runs import fake_sweep

    sweep = fake_sweep(tmp_path / "sweep")
    notebook = execute(ROOT / "notebooks" / "ablations.ipynb", tmp_path, {"MSS_SWEEP_DIR": str(sweep)},
                       monkeypatch)
    text = outputs_text(notebook)
    assert "2 runs under" in text and "best run by test SDR (median) mean: 0_12-00-00-000001" in text
    assert text.count("image/png") >= 3  # bars, box plots, learning curves


@pytest.mark.slow  # ~20 s of kernel start-up and imports; the default run executes the two notebooks above
def test_separate_and_listen_notebook_on_a_checkpoint(synth_root, tmp_path, monkeypatch):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mss.checkpoint import save_checkpoint
    from mss.run import compose
    from tests.conftest import TINY_MODEL

    cfg = compose("train", [f"paths.output_dir={tmp_path}", *TINY_MODEL])
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    ckpt = save_checkpoint(tmp_path / "tiny.ckpt", instantiate(model_cfg), model_cfg)  # untrained weights
    track = sorted((synth_root / "test").iterdir())[0]
    notebook = execute(ROOT / "notebooks" / "separate_and_listen.ipynb", tmp_path,
                       {"MSS_CHECKPOINT": str(ckpt), "MSS_TRACK": str(track)}, monkeypatch)
    text = outputs_text(notebook)
    assert "nSDR (dB)" in text and "<audio" in text and text.count("image/png") >= 2


@pytest.mark.slow
def test_notebooks_on_a_real_tiny_sweep(synth_root, tmp_path, monkeypatch):
    """The real loop: `python -m mss.train -m ...` on the synthetic data, then both notebooks on its output."""
    from tests.conftest import TINY_TRAIN
    from tests.test_workflow import _train

    sweep = tmp_path / "sweep"
    _train("-m", f"hydra.sweep.dir={sweep}", f"data.root={synth_root}", "data.synth=null",
           f"paths.cache_dir={tmp_path / 'cache'}", *TINY_TRAIN, "module.optimizer.lr=1e-3,3e-3", cwd=tmp_path)
    text = outputs_text(execute(ROOT / "notebooks" / "ablations.ipynb", tmp_path, {"MSS_SWEEP_DIR": str(sweep)},
                                monkeypatch))
    assert "2 runs under" in text and "module.optimizer.lr" in text
    best = sorted(sweep.glob("*/checkpoints/best.ckpt"))[0]
    track = sorted((synth_root / "test").iterdir())[0]
    text = outputs_text(execute(ROOT / "notebooks" / "separate_and_listen.ipynb", tmp_path,
                                {"MSS_CHECKPOINT": str(best), "MSS_TRACK": str(track)}, monkeypatch))
    assert "nSDR (dB)" in text and "<audio" in text
