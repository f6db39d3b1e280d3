"""Partial fine-tuning: freezing network parameters by name and unfreezing them after some epochs.

``module.finetune.freeze=[regex, ...]``: every parameter of the network whose name (in ``net``, e.g.
``blocks.0.time.layers.0.attn.qkv.weight``) matches one of the regexes (``re.search``) gets ``requires_grad=False``
and is left out of the optimiser (:meth:`SeparationModule.parameter_groups` takes trainable parameters only).
``module.finetune.unfreeze_after_epochs=N``: at the start of epoch ``N`` (0-based: after ``N`` epochs) they become
trainable again and join the optimiser as new parameter groups (:class:`Unfreeze`, a Lightning ``BaseFinetuning``
callback the module hands to the trainer through ``configure_callbacks``), with the current learning rate of the
optimiser's first group and the ``module.param_groups`` options their names match; the LR schedulers of the run
then schedule the new groups like the first (:func:`extend_schedulers`). ``BaseFinetuning`` checkpoints the added
groups, so a resumed run rebuilds the optimiser with them and loads its state.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable

import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn

log = logging.getLogger("mss.lightning")

__all__ = ["Unfreeze", "extend_schedulers", "freeze_parameters"]


def freeze_parameters(net: nn.Module, patterns: Iterable[str], key: str = "module.finetune.freeze") -> list[str]:
    """Set ``requires_grad=False`` on the parameters of ``net`` whose name matches a regex; returns their names.
    A regex that matches no parameter is an error naming it (and a few parameter names)."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    try:
        compiled = [re.compile(rx) for rx in patterns]
    except re.error as err:
        raise ValueError(f"{key}: invalid regex ({err})") from err
    names = [n for n, _ in net.named_parameters()]
    unused = [rx.pattern for rx in compiled if not any(rx.search(n) for n in names)]
    if unused:
        raise ValueError(f"{key}: {unused} match(es) no parameter of {type(net).__name__}; its parameters are named "
                         f"e.g. {names[:8]}")
    frozen = []
    for name, param in net.named_parameters():
        if any(rx.search(name) for rx in compiled):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


class Unfreeze(BaseFinetuning):
    """Make the network parameters ``names`` (frozen by :func:`freeze_parameters`) trainable at the start of epoch
    ``epoch`` and add them to every optimiser of the run.

    Args:
        names: parameter names in ``pl_module.net``.
        epoch: first epoch (0-based) in which they train.
        groups: ``[(name, param), ...] -> [param group dict, ...]`` (the module's :meth:`parameter_groups`).
    """

    def __init__(self, names: list[str], epoch: int, groups: Callable[[list[tuple[str, torch.Tensor]]], list[dict]]):
        super().__init__()
        if int(epoch) < 0:
            raise ValueError(f"module.finetune.unfreeze_after_epochs must be >= 0, got {epoch}")
        self.names, self.epoch, self.groups = list(names), int(epoch), groups

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.world_size > 1:
            raise ValueError(
                "module.finetune.unfreeze_after_epochs does not work with several processes: DDP synchronises only "
                "the parameters that were trainable when it wrapped the model. Run the frozen phase, then a second "
                "run with module.init_checkpoint=<its checkpoint> and no freeze (or train on one device).")
        super().setup(trainer, pl_module, stage)

    def freeze_before_training(self, pl_module) -> None:
        """Nothing to do: the module froze the parameters when it was built (so that they stay out of the optimiser
        whatever builds it)."""

    def finetune_function(self, pl_module, epoch: int, optimizer: torch.optim.Optimizer) -> None:
        if epoch < self.epoch:
            return
        wanted = set(self.names)
        named = [(f"net.{n}", p) for n, p in pl_module.net.named_parameters() if n in wanted]
        thawed = [n for n, p in named if not p.requires_grad]
        for _, param in named:
            param.requires_grad_(True)
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        new = [(n, p) for n, p in named if id(p) not in present]  # a resumed run restored its groups already
        if new:
            first = optimizer.param_groups[0]
            for group in self.groups(new):
                optimizer.add_param_group({"lr": first["lr"], **group})
                # what schedulers keep in the groups (initial_lr, max_lr, momenta...): follow the first group
                optimizer.param_groups[-1].update({k: v for k, v in first.items()
                                                   if k not in optimizer.param_groups[-1]})
            log.info("epoch %d: unfroze %d parameter tensor(s) (%d were frozen) and added them to %s", epoch,
                     len(new), len(thawed), type(optimizer).__name__)
        extend_schedulers(optimizer, [c.scheduler for c in pl_module.trainer.lr_scheduler_configs])


def extend_schedulers(optimizer: torch.optim.Optimizer, schedulers: Iterable) -> None:
    """Give the schedulers of ``optimizer`` an entry for each parameter group added after they were built: their
    per-group lists (``base_lrs``, ``lr_lambdas``, ``min_lrs``) repeat the first group's, so the new groups follow
    its schedule (``LambdaLR`` and others refuse to step an optimiser with more groups than they know)."""
    n = len(optimizer.param_groups)
    for scheduler in schedulers:
        if getattr(scheduler, "optimizer", None) is not optimizer:
            continue
        for attr in ("base_lrs", "lr_lambdas", "min_lrs"):
            values = getattr(scheduler, attr, None)
            if isinstance(values, list) and 0 < len(values) < n:
                values.extend([values[0]] * (n - len(values)))
