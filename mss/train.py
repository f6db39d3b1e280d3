"""Train a separator: ``python -m mss.train [model=...] [data=...] [trainer=...] [experiment=...] [key=value ...]``.

With no arguments it trains the Spleeter U-Net on the embedded synthetic dataset (generated on first use), then
evaluates the best checkpoint on the test split. The run directory holds ``config.yaml``, ``git_sha.txt``,
``checkpoints/{best,last}.ckpt``, the metrics CSV and ``eval/results.{md,csv}``.

Resume (see ``docs/workflow.md``): ``ckpt_path=last`` (this run directory's ``checkpoints/last.ckpt``), a run
directory, or a checkpoint file; with ``auto_resume: true`` a run directory that already holds a last checkpoint
(a re-queued job re-running its command) resumes by itself. Model, EMA, optimiser, scheduler, epoch/step, the random
generators and the data sampler position are restored. Under DDP only rank 0 writes run files and evaluates.
Sweeps read the value of ``optimized_metric`` that :func:`main` returns.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mss import ddp
from mss.checkpoint import build_model, checkpoint_config
from mss.lightning.resume import AtomicCheckpointIO, RNGState
from mss.lightning.validation import logged_keys
from mss.run import CONF_DIR, save_run_info

log = logging.getLogger("mss.train")


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate datamodule, module, callbacks, loggers and trainer from a composed config."""
    datamodule = instantiate(cfg.data, _convert_="all")
    augment = instantiate(cfg.augment) if cfg.get("augment") else None
    check_monitor(cfg)
    module = instantiate(cfg.module, net=build_model(cfg.model), augment=augment, _convert_="partial")
    # set after instantiate: Hydra would build its nested _target_s
    module.mss_config = checkpoint_config(OmegaConf.to_container(cfg.model, resolve=True),
                                          OmegaConf.to_container(cfg.data, resolve=True))
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    # exact resume (RNG state), crash-safe checkpoint files; the datamodule shards data across ranks itself
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks + [RNGState()], logger=loggers or False,
                                     plugins=[AtomicCheckpointIO()], use_distributed_sampler=False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return {"datamodule": datamodule, "module": module, "trainer": trainer}


def check_monitor(cfg: DictConfig) -> None:
    """``monitor.metric`` must be a key the validation logs (``module.val_metrics``) or an EMA's ``val/best``."""
    metric = OmegaConf.select(cfg, "monitor.metric")
    if metric is None:
        return
    keys = logged_keys(cfg.module.get("val_metrics") or [], list(cfg.data.sources))
    if metric not in keys and not metric.startswith("val/best"):
        raise ValueError(f"monitor.metric={metric!r} is not logged by the validation; with module.val_metrics="
                         f"{list(cfg.module.get('val_metrics') or [])} the choices are {keys} (add the metric to "
                         "module.val_metrics)")
    if OmegaConf.select(cfg, "monitor.mode") not in ("max", "min"):
        raise ValueError(f"monitor.mode={OmegaConf.select(cfg, 'monitor.mode')!r}: expected max or min")


def resume_checkpoint(cfg: DictConfig, out: Path) -> str | None:
    """The checkpoint to resume from: ``ckpt_path`` = ``last`` (``<run dir>/checkpoints/last.ckpt``; a fresh start
    when there is none, as in Lightning), a run directory (its last checkpoint), or a checkpoint file; unset, the
    run directory's newest last/SLURM checkpoint when ``auto_resume`` is true."""
    spec, own_last = cfg.get("ckpt_path"), out / "checkpoints" / "last.ckpt"
    if spec is None:
        # the newest of last.ckpt and Lightning's SLURM pre-emption checkpoints (hpc_ckpt_<n>.ckpt)
        candidates = [p for p in [own_last, *out.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
        if cfg.get("auto_resume") and candidates:
            newest = max(candidates, key=lambda p: p.stat().st_mtime)
            log.info("auto_resume: resuming from %s", newest)
            return str(newest)
        return None
    if str(spec) == "last":
        if own_last.is_file():
            return str(own_last)
        log.warning("ckpt_path=last: %s does not exist, starting from scratch", own_last)
        return None
    path = Path(str(spec)).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={spec}: checkpoint not found ({path}); expected `last`, a run directory "
                                "with checkpoints/last.ckpt, or a .ckpt file")
    return str(path)


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit (and optionally test-evaluate) a model; returns ``(metrics, objects)``."""
    L.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    if rank_zero_only.rank == 0:  # DDP ranks > 0 share rank 0's run directory and write nothing of their own
        save_run_info(cfg, out)
    ckpt_path = resume_checkpoint(cfg, out)
    objects = build(cfg)
    trainer: L.Trainer = objects["trainer"]
    trainer.fit(objects["module"], datamodule=objects["datamodule"], ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    ckpt = best_checkpoint(trainer)
    if cfg.get("test") and ckpt is not None and not trainer.fast_dev_run and trainer.is_global_zero:
        from mss.evaluate import evaluate

        table = evaluate(ckpt, cfg.data, cfg.evaluation, out / "eval")
        metrics.update({f"test/{col}/{src}": float(v) for src, row in table.iterrows() for col, v in row.items()
                        if isinstance(v, (int, float))})
    log.info("run directory: %s", out)
    return metrics, {**objects, "checkpoint": ckpt}


def best_checkpoint(trainer: L.Trainer) -> str | None:
    """Best checkpoint on the monitored metric, else the last one written."""
    cb = trainer.checkpoint_callback
    if cb is None:
        return None
    return cb.best_model_path or cb.last_model_path or None


def metric_value(metrics: dict[str, float], name: str | None, strict: bool = True) -> float | None:
    """The value a sweep optimises (``optimized_metric``); ``None`` when unset, or missing and not ``strict``."""
    if not name:
        return None
    if name not in metrics:
        message = f"optimized_metric={name!r} was not logged; logged metrics: {sorted(metrics)}"
        if strict:
            raise KeyError(message)
        log.warning(message)
        return None
    value = metrics[name]
    return None if math.isnan(value) else value


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        with ddp.job():  # DDP ranks > 0 run this job, also inside a sweep
            metrics, _ = train(cfg)
    finally:
        if "wandb" in sys.modules:  # close the run so the next job of a sweep starts its own
            sys.modules["wandb"].finish()
    return metric_value(metrics, cfg.get("optimized_metric"), strict=HydraConfig.get().mode == RunMode.MULTIRUN)


def main() -> None:
    """Entry point of ``python -m mss.train``; a DDP child of an mss job runs that job (:mod:`mss.ddp`)."""
    argv = ddp.child_argv()
    if argv is not None:
        sys.argv[1:] = argv
    _main()


if __name__ == "__main__":
    main()
