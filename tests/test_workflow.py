"""Research workflow: sweep configs (Optuna, SLURM launcher, DDP, trackers) compose; ``mss.results`` turns run
directories into tables and plots; a real multirun leaves one complete run directory per job; trackers run offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from PIL import Image

from mss.results import load_runs, main, results_table, track_scores
from mss.run import CONF_DIR
from tests._runs import SOURCES, TRACKS, fake_run, fake_sweep
from tests.conftest import TINY_TRAIN


@pytest.fixture
def hydra_cfg():
    """Compose ``train`` with the ``hydra`` node (what a launched job sees)."""
    def _compose(*overrides: str):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=True)

    yield _compose
    GlobalHydra.instance().clear()


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "hparams_search").glob("optuna_*.yaml")))
def test_optuna_search_configs_maximise_val_nsdr(hydra_cfg, name):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    cfg = hydra_cfg(f"hparams_search={name}")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert str(sweeper.direction) == "maximize" and cfg.optimized_metric == "val/nsdr"
    assert cfg.hydra.mode == RunMode.MULTIRUN and sweeper.n_trials >= 10
    # every searched key exists in the train config, and every search expression parses
    for key, expression in sweeper.params.items():
        override = OverridesParser.create().parse_override(f"{key}={expression}")
        if "/" in key:  # a config group: every choice is an option file
            assert all((CONF_DIR / key / f"{choice}.yaml").is_file() for choice in override.sweep_iterator()), key
        else:
            assert OmegaConf.select(cfg, key, default="MISSING") != "MISSING", key


def test_submitit_slurm_launcher_composes(hydra_cfg):
    launcher = hydra_cfg("hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu").hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.max_num_timeout > 0
    assert launcher.submitit_folder.endswith("/.submitit/%j")
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    assert set(launcher) == set(SlurmQueueConf().__dataclass_fields__)  # no misspelt or missing keys


def test_ddp_cpu_and_logger_configs_instantiate(hydra_cfg, tmp_path):
    from hydra.utils import instantiate

    cfg = hydra_cfg("trainer=ddp_cpu", "logger=many", f"paths.output_dir={tmp_path}")
    strategy = instantiate(cfg.trainer.strategy)
    assert cfg.trainer.devices == 2 and cfg.trainer.accelerator == "cpu"
    assert strategy.process_group_backend == "gloo"
    assert set(cfg.logger) == {"csv", "tensorboard", "wandb"}
    assert cfg.logger.wandb.offline is True and Path(cfg.logger.wandb.save_dir) == tmp_path  # run: the slow test
    loggers = [instantiate(cfg.logger[k]) for k in ("csv", "tensorboard")]
    assert all(Path(lg.save_dir) == tmp_path for lg in loggers)


def test_results_collects_a_sweep_into_tables_and_plots(tmp_path):
    sweep = fake_sweep(tmp_path / "sweep")
    runs = load_runs([sweep])
    assert [r.name for r in runs] == ["0_12-00-00-000001", "1_12-00-00-000002"]
    table = results_table(runs)
    # the one config key that differs, per-source test SDR (median over tracks) + mean, best validation nSDR
    assert list(table.columns[:1]) == ["module.optimizer.lr"] and list(table["module.optimizer.lr"]) == [
        "0.001", "0.0003"]
    sdr = [f"test SDR (median) {s}" for s in SOURCES]
    assert set(sdr + ["test SDR (median) mean", "val nSDR best", "best val epoch"]) <= set(table.columns)
    expected = pd.read_csv(sweep / "0_12-00-00-000001" / "eval" / "results.csv", index_col=0)["SDR (median)"]
    assert table.loc["0_12-00-00-000001", sdr].tolist() == pytest.approx(expected[SOURCES].tolist())
    assert table["val nSDR best"].tolist() == pytest.approx([4.0, 2.0])
    assert table["val nSDR vocals"].tolist() == pytest.approx([7.0, 5.0])  # at the best epoch
    assert results_table(runs, stat="mean")["test SDR (mean) bass"].notna().all()
    scores = track_scores(runs)
    sdr_scores = scores[scores.metric == "SDR"]
    assert len(sdr_scores) == 2 * len(SOURCES) * len(TRACKS) and set(sdr_scores.target) == set(SOURCES)
    assert table["test tracks"].tolist() == [len(TRACKS)] * 2

    written = main([str(sweep), "--out", str(tmp_path / "out")])
    md = written["md"].read_text()
    assert "then median over tracks (SiSEC18)" in md and "mean over validation tracks" in md
    assert md.count("\n|") == 4
    reloaded = pd.read_csv(written["csv"], index_col=0)
    assert reloaded.shape == table.shape
    tex = written["tex"].read_text()
    assert r"\begin{tabular}" in tex and r"module.optimizer.lr" in tex and r"test SDR (median) vocals" in tex
    for key in ("bars", "boxes", "curves"):
        with Image.open(written[key]) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_results_statistics_of_a_two_method_three_seed_sweep(tmp_path):
    """2 learning rates x 3 seeds: CIs per run, every pair's paired difference (Holm over 15 pairs x 5 columns), and
    the seeds of each configuration folded into one row (mean ± std, 3 seeds)."""
    sweep = tmp_path / "sweep"
    for k, (lr, quality) in enumerate((lr, q) for lr, q in ((1e-3, 6.0), (3e-4, 2.0)) for _ in range(3)):
        fake_run(sweep / f"{k}_12-00-00-00000{k}", lr=lr, quality=quality, seed=k, config_seed=k % 3)
    written = main([str(sweep), "--out", str(tmp_path / "out"), "--resamples", "2000"])
    ci = pd.read_csv(tmp_path / "out" / "results_ci.csv", index_col=[0, 1])
    assert len(ci) == 6 * 5 and ((ci["low"] <= ci["estimate"]) & (ci["estimate"] <= ci["high"])).all()
    assert re.search(r"\| 0_12-00-00-000000 \| -?\d+\.\d\d \[-?\d+\.\d\d, -?\d+\.\d\d\]", written["ci"].read_text())
    pairs = pd.read_csv(tmp_path / "out" / "paired.csv", index_col=[0, 1, 2])
    assert len(pairs) == 15 * 5 and "(n.s.)" in written["paired"].read_text()
    across = pairs.xs("vocals", level="source")
    assert (across["difference"].loc[("0_12-00-00-000000", "3_12-00-00-000003")] > 2.0)  # 6 dB vs 2 dB runs
    by_config = written["by_config"].read_text()
    assert by_config.count("| 3 |") == 2 and "±" in by_config and "0.001" in by_config and "0.0003" in by_config
    with Image.open(written["paired_plot"]) as image:
        assert image.format == "PNG"


def test_results_refuse_mixed_protocols_unless_allowed(tmp_path):
    import json

    from mss.results import MixedProtocolError

    sweep = fake_sweep(tmp_path / "sweep")
    stamp = {"metric": "BSS Eval v4", "frames": {"win": 1.0, "hop": 1.0}, "dataset": {"format": "wav"},
             "subset": "test", "tracks": 3, "track_list_sha1": "abc", "audio": {"sample_rate": 44100},
             "inference": {"segment": None, "overlap": 0.25, "shifts": 0}}
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    for run, win in zip(runs, (1.0, 1.0)):
        (run / "eval" / "protocol.json").write_text(json.dumps({**stamp, "frames": {"win": win, "hop": 1.0}}))
    md = main([str(sweep), "--out", str(tmp_path / "same")])["md"].read_text()
    assert "Protocol: BSS Eval v4; 1 s frames; test split, 3 tracks (list abc); 44100 Hz." in md
    (runs[1] / "eval" / "protocol.json").write_text(json.dumps({**stamp, "frames": {"win": 2.0, "hop": 1.0}}))
    with pytest.raises(MixedProtocolError, match=r"different protocols \(frames: .*'win': 2\.0.*--allow-mixed"):
        main([str(sweep), "--out", str(tmp_path / "mixed")])
    md = main([str(sweep), "--out", str(tmp_path / "mixed"), "--allow-mixed"])["md"].read_text()
    assert "Protocols differ: frames: 0_12-00-00-000001={'win': 1.0" in md


def test_results_with_sisec18_submissions(tmp_path):
    """A local folder in sigsep-mus-2018's layout (submissions/<METHOD>/test/<track>.json): its methods become rows,
    boxes and compared methods; a missing folder says where to get it."""
    import shutil

    sweep = fake_sweep(tmp_path / "sweep")
    for method, run in (("TAK1", "0_12-00-00-000001"), ("UHL2", "1_12-00-00-000002")):  # same tracks, other scores
        shutil.copytree(sweep / run / "eval" / "museval" / "test", tmp_path / "s18" / "submissions" / method / "test")
    written = main([str(sweep), "--out", str(tmp_path / "out"), "--with-sisec18", str(tmp_path / "s18"),
                    "--sisec18-methods", "TAK1", "--resamples", "500"])
    table = pd.read_csv(written["csv"], index_col=0)
    assert list(table.index) == ["0_12-00-00-000001", "1_12-00-00-000002", "SiSEC18 TAK1"]
    assert table.loc["SiSEC18 TAK1", "test SDR (median) vocals"] == pytest.approx(
        table.loc["0_12-00-00-000001", "test SDR (median) vocals"])
    pairs = pd.read_csv(tmp_path / "out" / "paired.csv", index_col=[0, 1, 2])
    assert pairs.loc[("0_12-00-00-000001", "SiSEC18 TAK1", "vocals"), "difference"] == 0
    with pytest.raises(FileNotFoundError, match=r"no SiSEC18 submissions.*git clone https://github.com/sigsep"):
        main([str(sweep), "--out", str(tmp_path / "x"), "--with-sisec18", str(tmp_path / "nowhere")])
    with pytest.raises(ValueError, match=r"no SiSEC18 submission \['XYZ'\]; available: \['TAK1', 'UHL2'\]"):
        main([str(sweep), "--out", str(tmp_path / "x"), "--with-sisec18", str(tmp_path / "s18"),
              "--sisec18-methods", "XYZ"])


def test_results_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run or sweep directory"):
        main([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no run directories"):
        main([str(tmp_path / "empty")])


def _train(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_GIT": "true"}
    proc = subprocess.run([sys.executable, "-m", "mss.train", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=1200, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"mss.train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.mark.slow
def test_multirun_jobs_hold_complete_run_dirs_and_collect(synth_root, tmp_path):
    """A real 2-job sweep with test evaluation: one run directory per job with resolved config, git SHA, metrics
    CSV, best checkpoint and its SDR table; `python -m mss.results` makes one table of them."""
    sweep = tmp_path / "sweep"
    _train("-m", f"hydra.sweep.dir={sweep}", f"data.root={synth_root}", "data.synth=null",
           f"paths.cache_dir={tmp_path / 'cache'}", *TINY_TRAIN, "module.optimizer.lr=1e-3,3e-3", cwd=tmp_path)
    jobs = sorted(p for p in sweep.iterdir() if (p / "config.yaml").is_file())
    assert len(jobs) == 2 and len({p.name for p in jobs}) == 2 and all(p.name[:2] in ("0_", "1_") for p in jobs)
    for job in jobs:
        for name in ("config.yaml", "git_sha.txt", "csv/metrics.csv", "checkpoints/best.ckpt",
                     "eval/results.csv", "eval/results.md"):
            assert (job / name).is_file(), (job, name)
    proc = subprocess.run([sys.executable, "-m", "mss.results", str(sweep)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(sweep / "results" / "results.csv", index_col=0)
    assert sorted(table["module.optimizer.lr"]) == [0.001, 0.003]
    assert table["test SDR (median) vocals"].notna().all() and table["val nSDR best"].notna().all()
    assert (sweep / "results" / "sdr_boxes.png").is_file()


@pytest.mark.slow
def test_wandb_offline_and_tensorboard_loggers_with_media(synth_root, tmp_path):
    """`logger=many callbacks=media`: CSV, TensorBoard and an offline W&B run (no account) side by side, with audio
    and spectrogram images of a validation excerpt."""
    run = tmp_path / "run"
    _train(f"hydra.run.dir={run}", f"data.root={synth_root}", "data.synth=null",
           f"paths.cache_dir={tmp_path / 'cache'}", *TINY_TRAIN, "test=false", "logger=many", "callbacks=media",
           "callbacks.validation_media.every_n_epochs=1", "callbacks.validation_media.duration=2.0",
           "callbacks.progress_bar=null", "callbacks.model_summary=null", cwd=tmp_path)
    assert (run / "csv" / "metrics.csv").is_file()
    assert "epoch 1/1 | train/loss " in (run / "train.log").read_text()  # the one-line epoch summary
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"audio": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss_epoch", "val/nsdr", "val/nsdr/vocals", "lr-Adam"} <= set(tags["scalars"])
    for name in ("media/mixture", "media/estimate/vocals", "media/reference/vocals"):  # "<name>[/audio_0]"
        assert any(tag == name or tag.startswith(name + "/") for tag in tags["audio"]), (name, tags["audio"])
    assert "media/spectrograms" in tags["images"]


@pytest.mark.slow
def test_optuna_sweep_maximises_the_returned_val_nsdr(synth_root, tmp_path):
    """Two Optuna trials: each job returns val/nsdr to the sweeper, which records the best trial."""
    import yaml

    sweep = tmp_path / "optuna"
    _train("hparams_search=optuna_lr", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=1",
           f"hydra.sweep.dir={sweep}", f"data.root={synth_root}", "data.synth=null",
           f"paths.cache_dir={tmp_path / 'cache'}",
           *[o for o in TINY_TRAIN if not o.startswith(("data.samples", "data.batch_size"))],  # searched, not fixed
           "data.samples_per_epoch=16", cwd=tmp_path)
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna" and set(best["best_params"]) == {"module.optimizer.lr", "data.batch_size"}
    values = []
    for job in sorted(p for p in sweep.iterdir() if (p / "csv" / "metrics.csv").is_file()):
        values.append(pd.read_csv(job / "csv" / "metrics.csv")["val/nsdr"].dropna().iloc[-1])
    assert len(values) == 2 and best["best_value"] == pytest.approx(max(values), abs=1e-4)


def test_epoch_summary_line_and_spectrogram_figure():
    from types import SimpleNamespace

    import torch

    from mss.lightning.media import EpochSummary, spectrogram_figure

    summary = EpochSummary()
    trainer = SimpleNamespace(callback_metrics={"train/loss_epoch": torch.tensor(0.5), "val/nsdr": torch.tensor(3.0),
                                                "val/nsdr/vocals": torch.tensor(9.0)},
                              current_epoch=0, max_epochs=4, optimizers=[SimpleNamespace(param_groups=[{"lr": 1e-3}])])
    assert summary.line(trainer).startswith(
        "epoch 1/4 | train/loss 0.5000 | val/nsdr 3.0000 (best 3.0000) | lr 1.0e-03 | ")
    trainer.callback_metrics["val/nsdr"], trainer.current_epoch = torch.tensor(2.0), 1
    assert "epoch 2/4 | train/loss 0.5000 | val/nsdr 2.0000 (best 3.0000)" in summary.line(trainer)
    assert summary.state_dict() == {"best": 3.0}
    fig = spectrogram_figure(torch.randn(2, 8000), torch.randn(2, 2, 8000), torch.randn(2, 2, 8000), ["a", "b"],
                             8000, n_fft=256, hop_length=64)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["mixture", "", "a (reference)", "a (estimate)", "b (reference)", "b (estimate)"]
