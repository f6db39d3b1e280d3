"""Train a separator: ``python -m mss.train [model=...] [data=...] [trainer=...] [experiment=...] [key=value ...]``.

With no arguments it trains the Spleeter U-Net on the embedded synthetic dataset (generated on first use), then
evaluates the best checkpoint on the test split. The run directory holds ``config.yaml``, ``git_sha.txt``,
``checkpoints/{best,last}.ckpt``, the metrics CSV and ``eval/results.{md,csv}``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import mss
from mss.models import build_model
from mss.run import save_run_info
from mss.utils import git_revision

log = logging.getLogger("mss.train")


def checkpoint_config(cfg: DictConfig) -> dict:
    """What every checkpoint carries: the resolved model config and the data constants it was trained with."""
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "data": OmegaConf.to_container(cfg.data, resolve=True),
        "mss_version": mss.__version__,
        "git": git_revision(),
    }


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate datamodule, module, callbacks, loggers and trainer from a composed config."""
    datamodule = instantiate(cfg.data, _convert_="all")
    augment = instantiate(cfg.augment) if cfg.get("augment") else None
    module = instantiate(cfg.module, net=build_model(cfg.model), augment=augment, _convert_="partial")
    module.mss_config = checkpoint_config(cfg)  # set after instantiate: Hydra would build its nested _target_s
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    return {"datamodule": datamodule, "module": module, "trainer": trainer}


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit (and optionally test-evaluate) a model; returns ``(metrics, objects)``."""
    L.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    save_run_info(cfg, out)
    objects = build(cfg)
    trainer: L.Trainer = objects["trainer"]
    trainer.fit(objects["module"], datamodule=objects["datamodule"], ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    ckpt = best_checkpoint(trainer)
    if cfg.get("test") and ckpt is not None and not trainer.fast_dev_run:
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


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics, _ = train(cfg)
    value = metrics.get(cfg.get("optimized_metric") or "")
    return None if value is None or math.isnan(value) else value


if __name__ == "__main__":
    main()
