"""``SeparationModule``: one LightningModule for every separator with the ``(B, C, T) -> (B, S, C, T)`` contract.

It owns what is not the network's business: augmentation on the training device, forming the mixture, the loss and
per-source weights, optimiser/scheduler (Hydra ``_partial_`` factories), whole-track validation with overlap-add
inference reporting ``val/nsdr`` (mean) and ``val/nsdr/<source>``, ``val/loss``, the museval-v4 ``val/sdr[/<source>]``
(median of track medians) and the other ``module.val_metrics`` (:mod:`mss.lightning.validation`), and the resolved
config stored in every
checkpoint so :func:`mss.load_model` can rebuild the network with no other input. EMA of the weights is Lightning's
``EMAWeightAveraging`` callback (``callbacks=ema``): it is validated and checkpointed in place of the raw weights.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from mss.inference.overlap_add import apply_model
from mss.lightning.validation import aggregate, check_val_metrics, track_scores

log = logging.getLogger("mss.lightning")


class TrainingDiverged(FloatingPointError):
    """Training produced a non-finite loss or non-finite weights; the run stops without writing them."""


class SeparationModule(L.LightningModule):
    """Args:
        net: the separator (pure ``nn.Module``).
        loss: per-source loss ``(est, ref) -> (S,)`` from :mod:`mss.losses`.
        optimizer: ``functools.partial`` of a torch optimiser (Hydra ``_partial_: true``), completed with params.
        scheduler: optional partial of an LR scheduler, completed with the optimiser.
        scheduler_interval: ``epoch`` or ``step``; ``scheduler_monitor``: metric for plateau schedulers.
        sources: source names (``${data.sources}``), order of the net's S axis.
        source_weights: per-source loss weights by name (missing names weigh 1), or one source name for one-hot
            weights (per-source fine-tuning: ``module.source_weights=vocals``).
        augment: optional module applied to the ``(B, S, C, T)`` stem batch before mixing.
        valid_segment: overlap-add chunk in seconds for validation (default: the net's ``segment_length``).
        valid_overlap, valid_batch_size: overlap-add settings for validation.
        mss_config: resolved config (model, data, ...) saved in checkpoints under ``"mss"``.
        init_checkpoint: mss checkpoint whose network weights initialise ``net`` (fine-tuning); its model config
            and sources must match.
        init_checkpoint_strict: ``False``: load only the tensors of ``init_checkpoint`` whose name and shape match
            ``net`` (e.g. a different number of sources); the others are logged by name and keep their initial
            values. ``True`` (default): any mismatch is an error listing the tensors.
        finetune: partial / parameter-efficient fine-tuning ``{freeze, unfreeze_after_epochs, lora}``:
            ``freeze``: regexes on ``net`` parameter names to freeze (``requires_grad=False``, out of the optimiser);
            ``unfreeze_after_epochs``: epoch at whose start they train again (:mod:`mss.lightning.finetune`);
            ``lora``: ``{target, rank, alpha, dropout}``: LoRA adapters on the ``nn.Linear``/``Conv1d``/``Conv2d``
            layers whose module name matches a ``target`` regex, everything else frozen (:mod:`mss.models.lora`);
            checkpoints keep the adapters and store this config under ``mss.lora``; :func:`mss.load_model` folds
            them into the weights.
        param_groups: ``{regex: optimiser options}``: parameters whose name (in ``net``) matches a regex get those
            options (first match wins), e.g. ``{transformer: {weight_decay: 0.05}}``; the rest use the defaults.
        unlabeled: the unlabeled-remixing extra step (Demucs 2019): ``{dataset, proba, weight, lr_scale,
            batch_size, num_workers, gradient_clip_val, seed}`` with ``dataset`` yielding ``{"source": i,
            "excerpt": (C, T)}`` (see :mod:`mss.unlabeled`). Turns on manual optimisation: after each regular
            step, with probability ``proba``, the isolated stem ``s_i`` of a batch example is added to an excerpt
            ``m_i`` where source ``i`` is silent and a second optimiser (same class, lr x ``lr_scale``) steps on
            ``|est_i - s_i|_1 + weight * |sum_{j != i} est_j - m_i|_1``, logged as ``train/unlabeled_loss``.
    """

    def __init__(self, net: nn.Module, loss: nn.Module, optimizer: Callable[..., torch.optim.Optimizer], *,
                 sources: list[str], sample_rate: int, scheduler: Callable | None = None,
                 scheduler_interval: str = "epoch", scheduler_monitor: str | None = None,
                 source_weights: dict[str, float] | None = None, augment: nn.Module | None = None,
                 valid_segment: float | None = None, valid_overlap: float = 0.25, valid_batch_size: int = 4,
                 mss_config: dict | None = None, init_checkpoint: str | None = None,
                 init_checkpoint_strict: bool = True, param_groups: dict[str, dict] | None = None,
                 unlabeled: dict | None = None, finetune: dict | None = None,
                 val_metrics: list[str] | tuple[str, ...] | None = ("sdr",), missing_stems: str = "ignore"):
        super().__init__()
        self.val_metrics = check_val_metrics(val_metrics)
        if missing_stems not in ("ignore", "silence"):
            raise ValueError(f"module.missing_stems={missing_stems!r}: expected 'ignore' (absent targets are left out "
                             "of the loss) or 'silence' (trained toward silence)")
        self.missing_stems = missing_stems
        self.net, self.loss, self.augment = net, loss, augment
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval, self.scheduler_monitor = scheduler_interval, scheduler_monitor
        self.sources, self.sample_rate = list(sources), int(sample_rate)
        if isinstance(source_weights, str):
            source_weights = {s: float(s == source_weights) for s in self.sources} | {source_weights: 1.0}
        unknown = set(source_weights or {}) - set(self.sources)
        if unknown:
            raise ValueError(f"module.source_weights: unknown source(s) {sorted(unknown)}; sources are {self.sources}")
        weights = torch.tensor([float((source_weights or {}).get(s, 1.0)) for s in self.sources])
        if weights.sum() <= 0:
            raise ValueError("module.source_weights: at least one source needs a positive weight")
        self.register_buffer("source_weights", weights, persistent=False)
        self.valid_segment, self.valid_overlap, self.valid_batch_size = valid_segment, valid_overlap, valid_batch_size
        self.mss_config = mss_config or {}
        self.param_groups = dict(param_groups or {})
        self.unlabeled = dict(unlabeled) if unlabeled else None
        self.automatic_optimization = self.unlabeled is None
        if init_checkpoint:
            self._init_from_checkpoint(init_checkpoint, strict=bool(init_checkpoint_strict))
        self._setup_finetune(dict(finetune or {}))

    def _init_from_checkpoint(self, path: str, strict: bool = True) -> None:
        """Load the network weights of an mss checkpoint (same model config and sources, unless not ``strict``)
        into ``net``."""
        from mss.checkpoint import load_net_weights

        report = load_net_weights(self.net, path, self.sources, key="module.init_checkpoint", strict=strict)
        log.info("initialised %s from %s (%d of %d tensors)", type(self.net).__name__, path, len(report["loaded"]),
                 len(self.net.state_dict()))

    def _setup_finetune(self, cfg: dict) -> None:
        """``module.finetune``: freeze parameters by name, or wrap layers in LoRA adapters (see the class doc)."""
        from mss.lightning.finetune import freeze_parameters
        from mss.models.lora import apply_lora

        unknown = set(cfg) - {"freeze", "unfreeze_after_epochs", "lora"}
        if unknown:
            raise ValueError(f"module.finetune: unknown key(s) {sorted(unknown)}; expected freeze, "
                             "unfreeze_after_epochs, lora")
        freeze, self.unfreeze_after_epochs = list(cfg.get("freeze") or []), cfg.get("unfreeze_after_epochs")
        self.lora = dict(cfg["lora"]) if cfg.get("lora") else None
        if self.lora and (freeze or self.unfreeze_after_epochs is not None):
            raise ValueError("module.finetune.lora trains the adapters only (every other parameter is frozen): "
                             "leave module.finetune.freeze and unfreeze_after_epochs unset with it")
        if self.unfreeze_after_epochs is not None and not freeze:
            raise ValueError("module.finetune.unfreeze_after_epochs is set but module.finetune.freeze is empty: "
                             "nothing to unfreeze")
        self.frozen = freeze_parameters(self.net, freeze) if freeze else []
        if self.frozen:
            log.info("froze %d parameter tensor(s) of %s matching %s", len(self.frozen), type(self.net).__name__,
                     freeze)
        if self.lora:
            expected = {"target", "rank", "alpha", "dropout"}
            if set(self.lora) - expected or "target" not in self.lora:
                raise ValueError(f"module.finetune.lora: got keys {sorted(self.lora)}, expected {sorted(expected)} "
                                 "(target required)")
            self.lora = {"target": list(self.lora["target"]) if not isinstance(self.lora["target"], str)
                         else [self.lora["target"]], "rank": int(self.lora.get("rank", 8)),
                         "alpha": float(self.lora.get("alpha", 16)), "dropout": float(self.lora.get("dropout", 0.0))}
            wrapped = apply_lora(self.net, **self.lora)
            trainable = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
            log.info("LoRA rank %d on %d layer(s) of %s: %d trainable of %d parameters", self.lora["rank"],
                     len(wrapped), type(self.net).__name__, trainable, sum(p.numel() for p in self.net.parameters()))

    def configure_callbacks(self):
        """The :class:`~mss.lightning.finetune.Unfreeze` callback when ``module.finetune.unfreeze_after_epochs``
        is set."""
        if not self.frozen or self.unfreeze_after_epochs is None:
            return []
        from mss.lightning.finetune import Unfreeze

        return [Unfreeze(self.frozen, self.unfreeze_after_epochs, self.parameter_groups)]

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        """``(B, C, T)`` mixture → ``(B, S, C, T)`` estimates."""
        return self.net(mix)

    # -- training ---------------------------------------------------------------------------------------------
    def training_step(self, batch: torch.Tensor | dict, batch_idx: int) -> torch.Tensor:
        """``batch``: stems ``(B, S, C, T)``, or ``{"stems", "present": (B, S) bool}`` from a dataset whose tracks
        lack some sources (``data.missing_stems=allow``)."""
        stems, present = (batch["stems"], batch["present"]) if isinstance(batch, dict) else (batch, None)
        if self.augment is not None:
            if present is None:
                stems = self.augment(stems)
            else:  # augmentations that move stems between examples move their presence along
                stems, present = self.augment(stems, present=present)
        loss = self._supervised_loss(stems, present)
        self._check_finite(loss, batch_idx)
        if self.automatic_optimization:
            return loss
        optimizer, extra = self.optimizers()
        self._manual_step(optimizer, loss)
        if self.lr_schedulers() is not None and self.scheduler_interval == "step":
            self.lr_schedulers().step()
        if torch.rand((), generator=self._unlabeled_rng).item() < float(self.unlabeled.get("proba", 0.25)):
            self._manual_step(extra, self._unlabeled_loss(stems.detach()))
        return loss.detach()

    def _supervised_loss(self, stems: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """The weighted per-source loss. With ``present`` (``(B, S)`` bool) and ``missing_stems="ignore"`` each
        source's loss is the mean over the examples that have it (the loss is evaluated per example; an absent
        target contributes neither value nor gradient) and a source absent from the whole batch drops out of the
        weighted mean; ``missing_stems="silence"`` trains absent targets toward silence like any silent stem."""
        estimates = self.net(stems.sum(dim=1))
        weights = self.source_weights
        count = [stems.shape[0]] * len(self.sources)  # examples behind each source's value (its logging weight)
        if present is None or self.missing_stems == "silence" or bool(present.all()):
            per_source = self.loss(estimates, stems)
        else:
            per_example = torch.stack([self.loss(estimates[b:b + 1], stems[b:b + 1]) for b in range(len(stems))])
            mask = present.to(per_example.dtype)
            count = mask.sum(0)
            per_source = (per_example * mask).sum(0) / count.clamp(min=1)
            weights = weights * (count > 0)
            count = [int(c) for c in count]
        loss = (per_source * weights).sum() / weights.sum().clamp(min=1e-12)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=stems.shape[0],
                 sync_dist=True)  # the global batch's loss under DDP
        for name, value, n in zip(self.sources, per_source.detach(), count):  # absent from the batch: weight 0
            self.log(f"train/loss/{name}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def _check_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop the run, before the backward pass and so before any checkpoint of the weights it would break, when
        ``loss`` is NaN/Inf on any rank; the error names the batch's tracks and offsets (from the datamodule's
        ``describe_train_batch``, when it has one)."""
        bad = not bool(torch.isfinite(loss))
        trainer = None
        with contextlib.suppress(RuntimeError):  # not attached to a Trainer: a plain loop calling training_step
            trainer = self.trainer
        if not (trainer.strategy.reduce_boolean_decision(bad, all=False) if trainer is not None else bad):
            return
        epoch = self.current_epoch
        describe = getattr(trainer.datamodule if trainer is not None else None, "describe_train_batch", None)
        examples = describe(epoch, batch_idx) if describe is not None else []
        where = ("; its examples (before augmentation): " + "; ".join(examples)) if examples else ""
        what = f"train/loss is {float(loss)}" if bad else "train/loss is non-finite on another rank"
        raise TrainingDiverged(
            f"{what} at epoch {epoch}, batch {batch_idx} (global step {self.global_step}){where}. The run stops "
            "before this batch's update; the checkpoints already written are left as they were (checkpoints/"
            "last.ckpt: the last good state). Lower module.optimizer.lr, clip gradients (trainer.gradient_clip_val="
            "...), or check the audio of these excerpts.")

    # -- unlabeled remixing (manual optimisation) ------------------------------------------------------------------
    def _manual_step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad()
        self.manual_backward(loss)
        clip = self.unlabeled.get("gradient_clip_val")
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=float(clip), gradient_clip_algorithm="norm")
        optimizer.step()

    def setup(self, stage: str) -> None:
        if self.unlabeled is None or stage != "fit":
            return
        import torch.distributed as dist

        from mss.data.sampling import BatchStream

        cfg, seed = self.unlabeled, int(self.unlabeled.get("seed", 0))
        # random streams held here are checkpointed (mss.lightning.resume.RNGState): a resumed run draws the same
        self._unlabeled_rng = torch.Generator().manual_seed(seed)  # same draws on every rank
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self._unlabeled_batches = BatchStream(cfg["dataset"], int(cfg.get("batch_size", 4)), seed=seed,
                                              rank=self.global_rank, world_size=world,
                                              num_workers=int(cfg.get("num_workers", 0)))

    def _unlabeled_loss(self, stems: torch.Tensor) -> torch.Tensor:
        """``|est_i - s_i|_1 + weight * |sum_{j != i} est_j - m_i|_1`` on ``s' = s_i + m_i``: ``s_i`` the stem of source
        ``i`` of regular batch examples ``(n, C, T)``, ``m_i`` unlabeled excerpts with source ``i`` silent."""
        batch = next(self._unlabeled_batches)
        source = batch["source"].to(self.device).long()
        excerpt = batch["excerpt"].to(self.device, stems.dtype)
        n, length = min(len(source), stems.shape[0]), min(excerpt.shape[-1], stems.shape[-1])
        source, excerpt = source[:n], excerpt[:n, :, :length]
        rows = torch.arange(n, device=self.device)
        isolated = stems[rows, source, :, :length]
        estimates = self.net(isolated + excerpt)
        target_est = estimates[rows, source]
        rest = estimates.sum(dim=1) - target_est
        strong = (target_est - isolated).abs().mean()
        weak = (rest - excerpt).abs().mean()
        loss = strong + float(self.unlabeled.get("weight", 1e-6)) * weak
        self.log("train/unlabeled_loss", loss, on_step=True, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("train/unlabeled_loss/weak", weak, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def on_train_epoch_end(self) -> None:
        scheduler = None if self.automatic_optimization else self.lr_schedulers()
        if scheduler is None or self.scheduler_interval != "epoch":
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            value = self.trainer.callback_metrics.get(self.scheduler_monitor or "")
            if value is not None:
                scheduler.step(value)
        else:
            scheduler.step()

    # -- whole-track validation -------------------------------------------------------------------------------
    def separate(self, mix: torch.Tensor, **kw: Any) -> torch.Tensor:
        """Overlap-add inference of ``(B, C, T)`` → ``(B, S, C, T)`` with the validation settings."""
        segment = None if self.valid_segment is None else round(self.valid_segment * self.sample_rate)
        if segment is None and not hasattr(self.net, "segment_length"):
            raise ValueError("module.valid_segment is not set and the network has no segment_length")
        kw = {"segment": segment, "overlap": self.valid_overlap, "batch_size": self.valid_batch_size, **kw}
        return apply_model(self.net, mix, **kw)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # tracks are split across DDP ranks: per-track scores are gathered at the epoch's end and aggregated over all
        # tracks of all ranks (median or mean, see aggregate); a source the track lacks (batch["present"]) scores
        # NaN there, which every aggregate skips (museval's rule for a silent reference)
        estimates = self.separate(batch["mixture"])[0]
        stems = batch["stems"][0]
        present = batch["present"][0].to(stems.device) if "present" in batch else None
        if present is not None and not bool(present.all()):  # scored on the sources the track has
            stems, estimates = stems[present], estimates[present]
        for key, value in self.track_scores(stems, estimates).items():
            if key == "loss":
                self.log("val/loss", value, batch_size=1, sync_dist=True)
                continue
            if present is not None and not bool(present.all()):
                value = value.new_full((len(self.sources),), math.nan).masked_scatter(present, value)
            self._val_tracks.setdefault(key, []).append(value)

    def track_scores(self, stems: torch.Tensor, estimates: torch.Tensor) -> dict[str, torch.Tensor]:
        """``module.val_metrics`` of one track's ``(S, C, T)`` stems and estimates (``{key: (S,)}``)."""
        return track_scores(self.val_metrics, stems, estimates, self.sample_rate)

    def on_validation_epoch_start(self) -> None:
        self._val_tracks: dict[str, list[torch.Tensor]] = {}

    def on_validation_epoch_end(self) -> None:
        """``val/<key>[/<source>]`` over all validation tracks of all ranks: for ``val/sdr`` and the other museval
        frame metrics the median of the track medians (the SiSEC18 headline numbers of ``mss.evaluate``), for
        ``val/nsdr`` and the whole-track metrics the mean over tracks; then the mean over sources. Tracks lacking a
        source are skipped for it."""
        for key, values in getattr(self, "_val_tracks", {}).items():
            tracks = self.all_gather(torch.stack(values)).reshape(-1, len(self.sources))
            medians = aggregate(key, tracks)
            for name, value in zip(self.sources, medians):
                self.log(f"val/{key}/{name}", value.float(), batch_size=1)
            self.log(f"val/{key}", medians.nanmean().float(), prog_bar=key == "nsdr", batch_size=1)
        self._val_tracks = {}

    # -- optimisation and checkpoints ---------------------------------------------------------------------------
    def parameter_groups(self, named: list[tuple[str, torch.Tensor]] | None = None) -> list[dict]:
        """Trainable parameters (or the ``(name, parameter)`` pairs ``named``) grouped by :attr:`param_groups`
        regexes on their ``net`` names (plus everything else in a default group: the loss or augmentations may have
        parameters too)."""
        if named is None:
            named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        patterns = [(re.compile(rx), dict(opts)) for rx, opts in self.param_groups.items()]
        groups = [{"params": [], **opts} for _, opts in patterns] + [{"params": []}]
        for name, param in named:
            local = name[4:] if name.startswith("net.") else name
            hit = next((i for i, (rx, _) in enumerate(patterns) if rx.search(local)), len(patterns))
            groups[hit]["params"].append(param)
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(params=self.parameter_groups())
        if self.unlabeled is not None:
            extra = self.optimizer_factory(params=self.parameter_groups())
            for group in extra.param_groups:
                group["lr"] *= float(self.unlabeled.get("lr_scale", 0.1))
            optimizer = [optimizer, extra]
            if self.scheduler_factory is None:
                return optimizer
            return optimizer, [self.scheduler_factory(optimizer=optimizer[0])]
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": self.scheduler_interval}
        if self.scheduler_monitor:
            scheduler["monitor"] = self.scheduler_monitor
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Store the config; refuse (before anything is written) to checkpoint NaN/Inf weights."""
        params = [(n, p) for n, p in self.named_parameters() if p.is_floating_point()]
        finite = torch.stack([p.detach().isfinite().all() for _, p in params]) if params else torch.ones(1).bool()
        if not bool(finite.all()):
            names = [n for (n, _), ok in zip(params, finite.tolist()) if not ok]
            raise TrainingDiverged(
                f"not writing a checkpoint at epoch {self.current_epoch} (global step {self.global_step}): "
                f"{len(names)} parameter tensor(s) hold NaN/Inf ({', '.join(names[:5])}"
                f"{' ...' if len(names) > 5 else ''}); the optimisation diverged. The checkpoints already written are "
                "left as they were. Lower module.optimizer.lr or clip gradients (trainer.gradient_clip_val=...).")
        checkpoint["mss"] = {**self.mss_config, **({"lora": self.lora} if self.lora else {})}

    # -- optimisers with a train / eval mode (schedule-free) ------------------------------------------------------
    def _optimizer_mode(self, mode: str) -> None:
        """Call ``optimizer.train()`` / ``.eval()`` on optimisers that have them (``schedulefree``: the parameters
        are the training iterate in train mode, the averaged weights to evaluate and checkpoint in eval mode)."""
        trainer = None
        with contextlib.suppress(RuntimeError):
            trainer = self.trainer
        for optimizer in (trainer.optimizers if trainer is not None else []):
            switch = getattr(optimizer, mode, None)
            if callable(switch):
                switch()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._optimizer_mode("train")

    def on_validation_start(self) -> None:
        self._optimizer_mode("eval")

    def on_train_end(self) -> None:
        self._optimizer_mode("eval")
