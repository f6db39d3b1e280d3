"""Training callbacks.

:class:`MultiEMA`: several exponential moving averages of the network weights (Demucs keeps batch EMAs with decays
0.9995 / 0.9999 on the device and epoch EMAs 0.9 / 0.95 on the CPU, unbiased), every one validated on the
validation tracks at each validation. The best candidate of that validation (the raw weights or an EMA) is
published as ``val/best`` and ``val/best/<metric>`` (``val/best/nsdr`` for the default ``monitor.metric``) and its
weights are what the checkpoints written then hold in ``state_dict`` (the raw weights travel as
``current_model_state`` for resuming). ``ModelCheckpoint`` monitoring ``val/best`` (``callbacks=ema_multi``)
therefore keeps the best state over all epochs and all averages, and
``mss.load_model`` / ``mss.evaluate`` read it like any checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from mss.lightning.validation import aggregate

log = logging.getLogger("mss.lightning")


class _EMA:
    """One average of the floating-point entries of a state dict (``count``-based unbiasing as in Demucs)."""

    def __init__(self, state: dict[str, torch.Tensor], decay: float, device, unbias: bool):
        self.decay, self.unbias, self.count = float(decay), unbias, 0.0
        self.state = {k: v.detach().to(device, copy=True) for k, v in state.items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, state: dict[str, torch.Tensor]) -> None:
        if self.unbias:
            self.count = self.count * self.decay + 1
            w = 1.0 / self.count
        else:
            w = 1.0 - self.decay
        for k, v in self.state.items():
            v.mul_(1 - w).add_(state[k].detach().to(v.device), alpha=w)


class MultiEMA(L.Callback):
    """Args:
        batch_decays: EMAs updated after every training batch (kept on the training device).
        epoch_decays: EMAs updated once per epoch, before its validation (kept on the CPU).
        monitor: the ``val/<key>[/<source>]`` that ranks the candidates (any key of ``module.val_metrics``, see
            :mod:`mss.lightning.validation`); ``mode``: ``max`` or ``min``. The best score is logged as ``val/best``
            and ``val/best/<key>[/<source>]``.
        unbias: Demucs' warm-up (average of the weights seen so far while ``count`` is small).
    """

    def __init__(self, batch_decays: Sequence[float] = (0.9995, 0.9999), epoch_decays: Sequence[float] = (0.9, 0.95),
                 monitor: str = "val/nsdr", mode: str = "max", unbias: bool = True):
        if not monitor.startswith("val/") or mode not in ("max", "min"):
            raise ValueError(f"callbacks.ema: monitor={monitor!r}, mode={mode!r}: expected a val/<key> metric and "
                             "mode max or min")
        self.batch_decays, self.epoch_decays = [float(d) for d in batch_decays], [float(d) for d in epoch_decays]
        self.monitor, self.mode, self.unbias = monitor, mode, unbias
        self.best_key = "val/best/" + monitor.split("/", 1)[1]
        self.emas: dict[str, _EMA] = {}
        self.selected: str = "raw"
        self._epoch_updated = -1

    # -- averages ---------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.emas:
            return
        state = pl_module.net.state_dict()
        for d in self.batch_decays:
            self.emas[f"batch_{d:g}"] = _EMA(state, d, pl_module.device, self.unbias)
        for d in self.epoch_decays:
            self.emas[f"epoch_{d:g}"] = _EMA(state, d, "cpu", self.unbias)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        state = pl_module.net.state_dict()
        for name, ema in self.emas.items():
            if name.startswith("batch_"):
                ema.update(state)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self._epoch_updated == trainer.current_epoch:
            return
        self._epoch_updated = trainer.current_epoch
        state = pl_module.net.state_dict()
        for name, ema in self.emas.items():
            if name.startswith("epoch_"):
                ema.update(state)

    # -- validation of every average ------------------------------------------------------------------------------
    @torch.no_grad()
    def _validate(self, trainer, pl_module) -> dict[str, float]:
        """``val/nsdr``, ``val/loss`` and the monitored metric over the validation tracks (all ranks), aggregated as
        the module aggregates them, with the weights currently in ``net``."""
        loaders = trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        limits = trainer.num_val_batches if isinstance(trainer.num_val_batches, list) else [trainer.num_val_batches]
        tracks: dict[str, list[torch.Tensor]] = {}
        for loader, limit in zip(loaders, limits):
            for i, batch in enumerate(loader):
                if i >= limit:
                    break
                mix, stems = batch["mixture"].to(pl_module.device), batch["stems"].to(pl_module.device)
                for key, value in pl_module.track_scores(stems[0], pl_module.separate(mix)[0]).items():
                    tracks.setdefault(key, []).append(value.double().reshape(-1))
        out = {}
        for key, values in tracks.items():
            gathered = pl_module.all_gather(torch.stack(values))
            per_source = aggregate(key, gathered.reshape(-1, gathered.shape[-1]))
            out[f"val/{key}"] = float(per_source.nanmean())
            if key != "loss":
                out |= {f"val/{key}/{s}": float(v) for s, v in zip(pl_module.sources, per_source)}
        return out

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not self.emas:
            return
        if self.monitor not in trainer.callback_metrics:
            raise KeyError(f"callbacks.ema.monitor={self.monitor!r} was not logged by the validation; logged: "
                           f"{sorted(k for k in trainer.callback_metrics if k.startswith('val/'))} (module.val_metrics "
                           "adds metrics)")
        net = pl_module.net
        was_training = net.training
        net.eval()
        raw = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}
        scores = {"raw": float(trainer.callback_metrics[self.monitor])}
        metrics = {}
        try:
            for name, ema in self.emas.items():
                self._load(net, ema.state)
                result = self._validate(trainer, pl_module)
                scores[name] = result[self.monitor]
                metrics |= {f"val/ema/{name}/{k.split('/', 1)[1]}": v for k, v in result.items()}
        finally:
            self._load(net, raw)
            net.train(was_training)
        better = max if self.mode == "max" else min
        self.selected = better(scores, key=scores.get)
        metrics[self.best_key] = metrics["val/best"] = scores[self.selected]
        for key, value in metrics.items():  # what ModelCheckpoint and the loggers read
            trainer.callback_metrics[key] = torch.tensor(value)
        for logger in trainer.loggers:
            logger.log_metrics(metrics | {"epoch": trainer.current_epoch}, step=trainer.global_step)
        log.info("validation: %s; keeping %s", ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), self.selected)

    @staticmethod
    def _load(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        current = net.state_dict()
        for k, v in state.items():
            current[k].copy_(v)

    # -- checkpoints: the selected weights in state_dict, the raw ones to resume ----------------------------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["mss_ema_selected"] = self.selected
        if self.selected == "raw" or self.selected not in self.emas:
            return
        checkpoint["current_model_state"] = dict(checkpoint["state_dict"])
        state = dict(checkpoint["state_dict"])
        for k, v in self.emas[self.selected].state.items():
            state[f"net.{k}"] = v.detach().cpu().clone()
        checkpoint["state_dict"] = state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if "current_model_state" in checkpoint:
            pl_module.load_state_dict(checkpoint["current_model_state"])

    def state_dict(self) -> dict[str, Any]:
        return {"selected": self.selected, "epoch_updated": self._epoch_updated,
                "emas": {n: {"count": e.count, "state": {k: v.cpu() for k, v in e.state.items()}}
                         for n, e in self.emas.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.selected, self._epoch_updated = state_dict["selected"], state_dict["epoch_updated"]
        for name, saved in state_dict["emas"].items():
            if name in self.emas:
                self.emas[name].count = saved["count"]
                for k, v in saved["state"].items():
                    self.emas[name].state[k].copy_(v)
