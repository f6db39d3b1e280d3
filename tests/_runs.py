"""Run directories as ``mss.train`` leaves them (resolved config, git SHA, Lightning CSV log, evaluation table and
museval per-track JSON), written without training: fast inputs for ``mss.results`` and the ablations notebook."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from mss.metrics import aggregate
from mss.report import results_table, write_results
from mss.run import compose

SOURCES = ["drums", "bass", "other", "vocals"]
TRACKS = ["track-a", "track-b", "track-c"]


def fake_run(run_dir: Path, lr: float, quality: float, epochs: int = 3, seed: int = 0,
             config_seed: int | None = None) -> Path:
    """A run whose scores grow with ``quality`` (dB); ``lr`` (and ``config_seed`` as ``seed``) end up in its resolved
    config; ``seed`` draws its scores."""
    rng = np.random.default_rng(seed)
    cfg = compose("train", [f"paths.output_dir={run_dir}", f"paths.cache_dir={run_dir.parent / 'cache'}",
                            "data.root=/data/musdb", "data.synth=null", f"module.optimizer.lr={lr}",
                            *([f"seed={config_seed}"] if config_seed is not None else [])])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    (run_dir / "git_sha.txt").write_text("0123abcd\n")
    rows, step = [], 0
    for epoch in range(epochs):
        for _ in range(2):  # step-level rows
            step += 1
            rows.append({"epoch": epoch, "step": step, "train/loss_step": 1.0 / (step + 1)})
        val = {"val/nsdr": quality * (epoch + 1) / epochs, "val/loss": 0.1 / (epoch + 1)}
        val.update({f"val/nsdr/{s}": val["val/nsdr"] + i for i, s in enumerate(SOURCES)})
        rows.append({"epoch": epoch, "step": step, **val})
        rows.append({"epoch": epoch, "step": step, "train/loss_epoch": 1.0 / (epoch + 2), "lr-Adam": lr})
    (run_dir / "csv").mkdir()
    pd.DataFrame(rows).to_csv(run_dir / "csv" / "metrics.csv", index=False)
    frames = []
    museval_dir = run_dir / "eval" / "museval" / "test"
    museval_dir.mkdir(parents=True)
    for track in TRACKS:
        targets = []
        for i, source in enumerate(SOURCES):
            scores = quality + i + rng.normal(0, 1, 5)
            targets.append({"name": source, "frames": [
                {"time": float(t), "duration": 1.0,
                 "metrics": {"SDR": float(v), "SIR": float(v) + 5, "ISR": float(v) + 3, "SAR": float(v) + 1}}
                for t, v in enumerate(scores)]})
        targets[0]["frames"][0]["metrics"]["SDR"] = math.nan  # museval's silent-frame rule
        frames += [{"time": f["time"], "target": t["name"], "metric": m, "score": v, "track": track}
                   for t in targets for f in t["frames"] for m, v in f["metrics"].items()]
        (museval_dir / f"{track}.json").write_text(json.dumps({"targets": targets}))
    table = results_table(aggregate([pd.DataFrame(frames)]), SOURCES,
                          extra={"nSDR (mean)": {s: quality + i for i, s in enumerate(SOURCES)}})
    write_results(table, run_dir / "eval")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "best.ckpt").write_bytes(b"")
    return run_dir


def fake_sweep(root: Path) -> Path:
    """A two-job multirun directory (``0_*``, ``1_*``) plus Hydra's ``multirun.yaml``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    fake_run(root / "0_12-00-00-000001", lr=1e-3, quality=4.0, seed=0)
    fake_run(root / "1_12-00-00-000002", lr=3e-4, quality=2.0, seed=1)
    return root
