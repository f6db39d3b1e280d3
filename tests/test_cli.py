"""train -> evaluate -> separate through the real command lines, and evaluate's numbers against museval called
directly on the same files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from tests.conftest import TINY_TRAIN

SOURCES = ["drums", "bass", "other", "vocals"]


def run(module: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """One real `python -m mss.train` run (tiny U-Net, 2 epochs) with its test-set evaluation."""
    base = tmp_path_factory.mktemp("cli")
    run_dir = base / "train"
    run("mss.train", f"hydra.run.dir={run_dir}", f"data.root={synth_root}", "data.synth=null",
        f"paths.cache_dir={base / 'cache'}", *[o for o in TINY_TRAIN if not o.startswith("trainer.max_epochs")],
        "trainer.max_epochs=2", cwd=base)
    return base, run_dir


def test_train_leaves_run_dir_checkpoints_and_table(trained):
    _, run_dir = trained
    for name in ("config.yaml", "git_sha.txt", "config_tree.log", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
                 "csv/metrics.csv", "eval/results.md", "eval/results.csv"):
        assert (run_dir / name).is_file(), name
    metrics = pd.read_csv(run_dir / "csv" / "metrics.csv")
    assert {"train/loss_epoch", "val/nsdr", "val/nsdr/vocals", "val/sdr", "val/sdr/vocals"} <= set(metrics.columns)
    table = pd.read_csv(run_dir / "eval" / "results.csv", index_col=0)
    assert list(table.index) == SOURCES + ["mean"]
    assert {"SDR (median)", "SDR (mean)", "SIR (median)", "SAR (median)", "ISR (median)", "nSDR (mean)"} <= set(
        table.columns)
    assert len(list((run_dir / "eval" / "museval" / "test").glob("*.json"))) == 2


def test_evaluate_cli_equals_museval_on_same_files(trained, synth_root):
    import musdb
    import museval

    base, run_dir = trained
    out = base / "evaluate"
    proc = run("mss.evaluate", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"hydra.run.dir={out}",
               "evaluation.save_estimates=true", "evaluation.workers=2", cwd=base)
    assert "SDR" in proc.stdout
    assert (out / "results.md").read_text().count("|") > 10
    db = musdb.DB(root=str(synth_root), is_wav=True, subsets="test")
    assert len(db.tracks) == 2
    for track in db.tracks:
        estimates = {s: sf.read(out / "estimates" / track.name / f"{s}.wav", dtype="float64")[0] for s in SOURCES}
        direct = json.loads(museval.eval_mus_track(track, estimates).json)
        ours = json.loads((out / "museval" / "test" / f"{track.name}.json").read_text())
        ours = {t["name"]: t["frames"] for t in ours["targets"]}
        nan_frames = 0
        for target in direct["targets"]:
            for f_direct, f_ours in zip(target["frames"], ours[target["name"]], strict=True):
                for metric, value in f_direct["metrics"].items():
                    mine = f_ours["metrics"][metric]
                    if isinstance(value, float) and math.isnan(value):
                        assert math.isnan(mine)
                        nan_frames += 1
                    else:
                        assert mine == pytest.approx(value, abs=2e-4), (track.name, target["name"], metric)
        assert nan_frames > 0  # the synthetic stems have digitally silent sections, as museval expects


def test_separate_cli_writes_stems_as_long_as_input(trained, synth_root, tmp_path):
    base, run_dir = trained
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    # a mono 22.05 kHz file: converted for the model, stems converted back to the input's rate and channels
    track = sorted((synth_root / "test").iterdir())[0]
    data, sr = sf.read(track / "mixture.wav", dtype="float32")
    odd = tmp_path / "in" / "odd song.wav"
    odd.parent.mkdir()
    sf.write(odd, data[: 44100 * 2 + 123, 0][::2], 22050, subtype="PCM_16")
    out = tmp_path / "sep"
    run("mss.separate", f"ckpt={ckpt}", f"input={odd.parent}", f"output_dir={out}", f"hydra.run.dir={tmp_path}/h",
        cwd=base)
    info_in = sf.info(odd)
    for source in SOURCES:
        info = sf.info(out / "odd song" / f"{source}.wav")
        assert (info.samplerate, info.channels, info.frames) == (22050, 1, info_in.frames)
    # a MUSDB18-HQ folder: only the mixtures are separated, named after their track folders
    run("mss.separate", f"ckpt={ckpt}", f"input={synth_root / 'test'}", f"output_dir={out}",
        f"hydra.run.dir={tmp_path}/h2", "format=flac", cwd=base)
    for track in sorted((synth_root / "test").iterdir()):
        for source in SOURCES:
            est, rate = sf.read(out / track.name / f"{source}.flac")
            assert rate == 44100 and est.shape == (sf.info(track / "mixture.wav").frames, 2)
            assert np.isfinite(est).all()


def test_cli_errors_are_clear(trained, tmp_path):
    base, run_dir = trained
    proc = run("mss.separate", f"ckpt={run_dir / 'checkpoints' / 'best.ckpt'}", f"input={tmp_path / 'nothing'}",
               f"hydra.run.dir={tmp_path}/h", cwd=base, check=False)
    assert proc.returncode != 0 and "no such file or folder" in proc.stderr
    proc = run("mss.evaluate", f"ckpt={tmp_path / 'missing.ckpt'}", f"hydra.run.dir={tmp_path}/e", cwd=base,
               check=False)
    assert proc.returncode != 0 and "checkpoint not found" in proc.stderr
    proc = run("mss.train", "trainer.no_such_argument=1", f"hydra.run.dir={tmp_path}/t", cwd=base, check=False)
    assert proc.returncode != 0 and "no_such_argument" in proc.stderr


def test_multirun_sweep_dirs_do_not_collide(synth_root, tmp_path):
    """`-m` sweeps: one run dir per job under hydra.sweep.dir, each with its config and checkpoints; `++trainer.*`
    passes any Lightning Trainer argument."""
    sweep = tmp_path / "sweep"
    run("mss.train", "-m", f"hydra.sweep.dir={sweep}", f"data.root={synth_root}", "data.synth=null",
        f"paths.cache_dir={tmp_path / 'cache'}", *TINY_TRAIN, "test=false", "++trainer.limit_val_batches=1",
        "module.optimizer.lr=1e-3,2e-3", cwd=tmp_path)
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "config.yaml").is_file())
    assert len(jobs) == 2
    lrs = set()
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        cfg = (job / "config.yaml").read_text()
        assert "limit_val_batches: 1" in cfg
        lrs |= {line.split(":")[1].strip() for line in cfg.splitlines() if line.strip().startswith("lr:")}
    assert lrs == {"0.001", "0.002"}
