"""``trainer=ddp_cpu``: two gloo processes on the CPU train like one process with the same global batch (the sampler
splits every global batch across ranks), validation is split across ranks and reduced over all tracks, and only
rank 0 writes run files. Launched as a one-job multirun; a two-job sweep runs each job once on two processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from tests.conftest import TINY_TRAIN

# two validation tracks (one per rank): the session dataset's validation track and one of its training tracks
COMMON = ["data.valid_tracks=[synth-valid-000,synth-train-000]", "data.samples_per_epoch=8", "trainer.max_epochs=3",
          "test=false", "model.dropout=0.0",
          "++trainer.deterministic=true", "++trainer.log_every_n_steps=1"]


def _train(*args: str, cwd) -> None:
    proc = subprocess.run([sys.executable, "-m", "mss.train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=1500)
    if proc.returncode != 0:
        raise AssertionError(f"mss.train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def _curves(run_dir) -> tuple[pd.Series, pd.Series]:
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")
    steps = metrics.dropna(subset=["train/loss_step"]).set_index("step")["train/loss_step"]
    val = metrics.dropna(subset=["val/nsdr"]).set_index("epoch")["val/nsdr"]
    return steps, val


@pytest.mark.slow
def test_two_cpu_processes_match_one_process_with_the_same_global_batch(synth_root, tmp_path):
    base = [f"data.root={synth_root}", "data.synth=null", f"paths.cache_dir={tmp_path / 'cache'}",
            *[o for o in TINY_TRAIN if not o.startswith(("data.batch_size", "data.samples_per_epoch",
                                                          "trainer.max_epochs"))], *COMMON]
    single = tmp_path / "single"
    _train(f"hydra.run.dir={single}", *base, "data.batch_size=4", cwd=tmp_path)
    sweep = tmp_path / "ddp"
    _train("-m", f"hydra.sweep.dir={sweep}", *base, "trainer=ddp_cpu", "data.batch_size=2", cwd=tmp_path)
    (job,) = [p for p in sweep.iterdir() if (p / "config.yaml").is_file()]
    loss_1, val_1 = _curves(single)
    loss_2, val_2 = _curves(job)
    assert list(loss_1.index) == list(loss_2.index) == list(range(6)) and list(val_1.index) == [0, 1, 2]
    diff = np.abs(loss_1.to_numpy() - loss_2.to_numpy())
    print(f"\nDDP vs 1 process, train/loss per step:\n1 proc {np.round(loss_1.to_numpy(), 5)}"
          f"\n2 proc {np.round(loss_2.to_numpy(), 5)}\nmax abs diff {diff.max():.2e}, max rel "
          f"{(diff / loss_1.abs().to_numpy()).max():.2e}\nval/nsdr 1 proc {val_1.round(4).tolist()} "
          f"2 proc {val_2.round(4).tolist()}")
    # rank 0 alone wrote the run files: one resolved config per run, no per-rank Hydra folders, one CSV row per step
    assert len([p for p in tmp_path.glob("**/config.yaml") if ".hydra" not in p.parts]) == 2
    assert not list(job.glob("**/.pl_hydra_rank_*")) and loss_2.index.is_unique
    # step 0 has identical weights and data: only BatchNorm's per-process batch statistics (SyncBatchNorm needs
    # GPUs) and the order of float reductions differ
    assert diff[0] <= 2e-3 * abs(loss_1.iloc[0])
    assert np.allclose(loss_2.to_numpy(), loss_1.to_numpy(), rtol=0.02, atol=0)
    assert np.allclose(val_2.to_numpy(), val_1.to_numpy(), atol=0.1)


@pytest.mark.slow
def test_a_two_job_sweep_runs_each_job_once_on_two_processes(synth_root, tmp_path):
    """``-m trainer=ddp_cpu lr=a,b``: two jobs, each of two processes into its own run directory; the children run
    their job, not the sweep again (which would add job directories), and the second job starts its own rank 1."""
    sweep = tmp_path / "sweep"
    _train("-m", f"hydra.sweep.dir={sweep}", f"data.root={synth_root}", "data.synth=null",
           f"paths.cache_dir={tmp_path / 'cache'}", *[o for o in TINY_TRAIN if not o.startswith("data.samples")],
           "data.valid_tracks=[synth-valid-000,synth-train-000]", "data.samples_per_epoch=8", "test=false",
           "++trainer.log_every_n_steps=1", "trainer=ddp_cpu", "module.optimizer.lr=1e-3,3e-4", cwd=tmp_path)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"], [p.name for p in jobs]
    assert {p.name for p in tmp_path.iterdir()} <= {"sweep", "cache"}  # no run directory outside the sweep
    assert [p.relative_to(tmp_path) for p in tmp_path.glob("**/multirun.yaml")] == [Path("sweep/multirun.yaml")]
    for job, lr in zip(jobs, (1e-3, 3e-4)):
        assert OmegaConf.load(job / "config.yaml").module.optimizer.lr == lr
        assert sorted(p.name for p in job.glob("*.log") if p.name != "config_tree.log") == ["train.log",
                                                                                          "train_rank1.log"]
        for rank_log in ("train.log", "train_rank1.log"):
            assert f"run directory: {job}\n" in (job / rank_log).read_text(), rank_log
        steps, _ = _curves(job)
        assert list(steps.index) == [0, 1]  # 8 examples per epoch in global batches of 2 x 2: two processes
