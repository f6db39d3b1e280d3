"""``SeparationModule``: one LightningModule for every separator with the ``(B, C, T) -> (B, S, C, T)`` contract.

It owns what is not the network's business: augmentation on the training device, forming the mixture, the loss and
per-source weights, optimiser/scheduler (Hydra ``_partial_`` factories), whole-track validation with overlap-add
inference reporting ``val/nsdr`` (mean) and ``val/nsdr/<source>``, and the resolved config stored in every
checkpoint so :func:`mss.load_model` can rebuild the network with no other input. EMA of the weights is Lightning's
``EMAWeightAveraging`` callback (``callbacks=ema``): it is validated and checkpointed in place of the raw weights.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from mss.metrics import nsdr
from mss.separation.apply import apply_model


class SeparationModule(L.LightningModule):
    """Args:
        net: the separator (pure ``nn.Module``).
        loss: per-source loss ``(est, ref) -> (S,)`` from :mod:`mss.losses`.
        optimizer: ``functools.partial`` of a torch optimiser (Hydra ``_partial_: true``), completed with params.
        scheduler: optional partial of an LR scheduler, completed with the optimiser.
        scheduler_interval: ``epoch`` or ``step``; ``scheduler_monitor``: metric for plateau schedulers.
        sources: source names (``${data.sources}``), order of the net's S axis.
        source_weights: per-source loss weights by name (missing names weigh 1; one-hot = per-source fine-tuning).
        augment: optional module applied to the ``(B, S, C, T)`` stem batch before mixing.
        valid_segment: overlap-add chunk in seconds for validation (default: the net's ``segment_length``).
        valid_overlap, valid_batch_size: overlap-add settings for validation.
        mss_config: resolved config (model, data, ...) saved in checkpoints under ``"mss"``.
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable[..., torch.optim.Optimizer], *,
                 sources: list[str], sample_rate: int, scheduler: Callable | None = None,
                 scheduler_interval: str = "epoch", scheduler_monitor: str | None = None,
                 source_weights: dict[str, float] | None = None, augment: nn.Module | None = None,
                 valid_segment: float | None = None, valid_overlap: float = 0.25, valid_batch_size: int = 4,
                 mss_config: dict | None = None):
        super().__init__()
        self.net, self.loss, self.augment = net, loss, augment
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval, self.scheduler_monitor = scheduler_interval, scheduler_monitor
        self.sources, self.sample_rate = list(sources), int(sample_rate)
        unknown = set(source_weights or {}) - set(self.sources)
        if unknown:
            raise ValueError(f"module.source_weights: unknown source(s) {sorted(unknown)}; sources are {self.sources}")
        weights = torch.tensor([float((source_weights or {}).get(s, 1.0)) for s in self.sources])
        if weights.sum() <= 0:
            raise ValueError("module.source_weights: at least one source needs a positive weight")
        self.register_buffer("source_weights", weights, persistent=False)
        self.valid_segment, self.valid_overlap, self.valid_batch_size = valid_segment, valid_overlap, valid_batch_size
        self.mss_config = mss_config or {}

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` mixture → ``(B, S, C, T)`` estimates."""
        return self.net(mix)

    # -- training ---------------------------------------------------------------------------------------------
    def training_step(self, stems: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.augment is not None:
            stems = self.augment(stems)
        estimates = self.net(stems.sum(dim=1))
        per_source = self.loss(estimates, stems)
        loss = (per_source * self.source_weights).sum() / self.source_weights.sum()
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=stems.shape[0])
        for name, value in zip(self.sources, per_source.detach()):
            self.log(f"train/loss/{name}", value, on_step=False, on_epoch=True, batch_size=stems.shape[0])
        return loss

    # -- whole-track validation -------------------------------------------------------------------------------
    def separate(self, mix: torch.Tensor, **kw: Any) -> torch.Tensor:
        """Overlap-add inference of ``(B, C, T)`` → ``(B, S, C, T)`` with the validation settings."""
        segment = None if self.valid_segment is None else round(self.valid_segment * self.sample_rate)
        if segment is None and not hasattr(self.net, "segment_length"):
            raise ValueError("module.valid_segment is not set and the network has no segment_length")
        kw = {"segment": segment, "overlap": self.valid_overlap, "batch_size": self.valid_batch_size, **kw}
        return apply_model(self.net, mix, **kw)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        estimates = self.separate(batch["mixture"])
        stems = batch["stems"]
        scores = nsdr(stems, estimates)[0]
        for name, value in zip(self.sources, scores):
            self.log(f"val/nsdr/{name}", value, batch_size=1)
        self.log("val/nsdr", scores.mean(), prog_bar=True, batch_size=1)
        self.log("val/loss", (estimates - stems).abs().mean(), batch_size=1)

    # -- optimisation and checkpoints ---------------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=[p for p in self.parameters() if p.requires_grad])
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": self.scheduler_interval}
        if self.scheduler_monitor:
            scheduler["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mss"] = self.mss_config
