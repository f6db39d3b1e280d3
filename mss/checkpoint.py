"""mss checkpoints: what they carry, reading, loading and writing them.

An mss checkpoint is Lightning's checkpoint dict (or a minimal one written by :func:`save_checkpoint`) with an
``"mss"`` entry: ``{"model": resolved model config (_target_ + arguments), "data": data config or at least its audio
constants (sources, sample_rate, channels), "mss_version", "git"}``, and the network's weights under ``state_dict``
with the ``net.`` prefix of :class:`mss.lightning.module.SeparationModule`. :func:`load_model` rebuilds the network
from that alone. A LoRA fine-tune (``module/finetune=lora``) stores the weights of the network with its adapters
(base weights + ``lora_A``/``lora_B``, so that the run can resume) and its adapter config under ``mss.lora``
(``{target, rank, alpha, dropout}``); reading such a checkpoint folds the adapters into the weights
(:func:`mss.models.lora.merge_lora_state`): the network comes back with its plain architecture.
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mss.utils import atomic_write, git_revision

__all__ = ["CheckpointError", "audio_constants", "build_model", "checkpoint_config", "load_model", "load_net_weights",
           "model_from_checkpoint", "read_checkpoint", "save_checkpoint"]

PREFIX = "net."  # the SeparationModule attribute holding the network


class CheckpointError(ValueError):
    """A file is not a readable mss checkpoint, or does not fit the network it is loaded into."""


def build_model(config: Any) -> nn.Module:
    """Instantiate a network from a (resolved) model config with a ``_target_`` (what checkpoints store)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    if not OmegaConf.is_config(config):
        config = OmegaConf.create(config)
    if "_target_" not in config:
        raise ValueError(f"model config has no _target_: {OmegaConf.to_yaml(config)}")
    net = instantiate(config, _convert_="all")
    if not isinstance(net, nn.Module):
        raise TypeError(f"model config {config._target_} built a {type(net).__name__}, expected an nn.Module")
    return net


def checkpoint_config(model: Mapping, data: Mapping) -> dict:
    """The ``"mss"`` entry of a checkpoint: resolved model and data configs, mss version and git revision."""
    import mss

    return {"model": dict(model), "data": dict(data), "mss_version": mss.__version__, "git": git_revision()}


def audio_constants(net: nn.Module) -> dict:
    """``{"sources", "sample_rate", "channels"}`` of a separator (its contract attributes)."""
    return {"sources": list(net.sources), "sample_rate": int(net.sample_rate), "channels": int(net.audio_channels)}


STATE_PACKAGES = ("torchao.optim",)  # optimisers whose checkpointed states are tensor subclasses


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict, checked to be an mss checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        try:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:
            # optimiser states that are tensor subclasses (torchao's 8-bit AdamW: module/optimizer=adamw8bit) load
            # once their package, whose import allowlists them for weights_only loading, is imported
            package = next((p for p in STATE_PACKAGES if f"GLOBAL {p}." in str(err)), None)
            if package is None:
                raise
            importlib.import_module(package)
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "mss" not in ckpt or "model" not in ckpt.get("mss", {}):
        raise CheckpointError(f"{path}: not an mss checkpoint (no 'mss.model' config entry); expected a file "
                              "written by `python -m mss.train`")
    return ckpt


def _net_state(ckpt: dict) -> dict[str, torch.Tensor]:
    """The network's weights of a checkpoint (``net.`` prefix removed), LoRA adapters folded in."""
    state = {k[len(PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}
    lora = ckpt["mss"].get("lora")
    if lora:
        from mss.models.lora import merge_lora_state

        state = merge_lora_state(state, float(lora["alpha"]))
    return state


def model_from_checkpoint(ckpt: dict, source: str | os.PathLike = "checkpoint",
                          map_location: str | torch.device = "cpu") -> nn.Module:
    """Network of a checkpoint dict already read (:func:`read_checkpoint`), in eval mode on ``map_location``."""
    net = build_model(ckpt["mss"]["model"])
    missing, unexpected = net.load_state_dict(_net_state(ckpt), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not match the stored model config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return net.to(map_location).eval()


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Network of an mss checkpoint, in eval mode, with the weights that were validated (EMA when it was on)."""
    return model_from_checkpoint(read_checkpoint(path, map_location), path, map_location)


def load_net_weights(net: nn.Module, path: str | os.PathLike, sources: list[str], key: str = "checkpoint",
                     strict: bool = True) -> dict[str, list[str]]:
    """Load the network weights of the mss checkpoint ``path`` into ``net``; ``key`` names the config entry that gave
    the path, for the errors.

    ``strict`` (default): same architecture and sources, else a :class:`CheckpointError` listing the mismatching
    tensors by name (with both shapes). Not strict: every tensor present in both with the same shape is loaded, the
    rest keep their current (random) values and are returned as ``{"loaded", "shape_mismatch", "missing",
    "unexpected"}`` (names; ``shape_mismatch`` entries as ``name: checkpoint shape -> model shape``) and logged,
    e.g. to start a 2-source model from a 4-source checkpoint (a differing ``data.sources`` is then a warning)."""
    import logging

    log = logging.getLogger("mss.checkpoint")
    ckpt = read_checkpoint(path)
    stored = list(ckpt["mss"].get("data", {}).get("sources", sources))
    if stored != list(sources):
        message = (f"{path}: {key} was trained on sources {stored}, this run separates {list(sources)}")
        if strict:
            raise CheckpointError(f"{message} (set data.sources to match, or load the compatible tensors only with "
                                  f"{key}_strict=false)")
        log.warning(message)
    state, own = _net_state(ckpt), net.state_dict()
    report = {
        "loaded": [k for k in own if k in state and state[k].shape == own[k].shape],
        "shape_mismatch": [f"{k}: {tuple(state[k].shape)} -> {tuple(own[k].shape)}" for k in own
                           if k in state and state[k].shape != own[k].shape],
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
    }
    problems = {kind: names for kind, names in report.items() if kind != "loaded" and names}
    if strict and problems:
        listed = "; ".join(f"{kind.replace('_', ' ')} ({len(names)}): {', '.join(names[:8])}"
                           f"{' ...' if len(names) > 8 else ''}" for kind, names in problems.items())
        raise CheckpointError(f"{path}: {key} weights do not fit model {type(net).__name__} (use the model config "
                              f"stored in the checkpoint, or load the compatible tensors only with {key}_strict="
                              f"false): {listed}")
    net.load_state_dict({k: state[k] for k in report["loaded"]}, strict=False)
    for kind, names in problems.items():
        log.warning("%s: %s: %d tensor(s) not loaded (%s): %s", path, key, len(names), kind.replace("_", " "),
                    ", ".join(names))
    if problems:
        log.warning("%s: %s: loaded %d of %d tensors of %s", path, key, len(report["loaded"]), len(own),
                    type(net).__name__)
    return report


def save_checkpoint(path: str | os.PathLike, net: nn.Module, model_config: Mapping, *, data: Mapping | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Write a minimal mss checkpoint of ``net`` (atomically) that :func:`load_model` and ``mss.evaluate`` read.

    Args:
        net: the network; its weights are stored under ``state_dict`` with the ``net.`` prefix used by training.
        model_config: resolved model config with a ``_target_`` that rebuilds ``net``.
        data: data config to store (a bag passes its first member's); default: no dataset (``root: None``) and the
            network's audio constants (:func:`audio_constants`): ``mss.evaluate ckpt=... data.root=DIR`` then reads
            a MUSDB18-HQ layout.
        extra: more top-level entries (e.g. ``{"imported_from": ...}``).
    """
    if "_target_" not in model_config:
        raise ValueError("save_checkpoint: model_config needs a _target_")
    ckpt = {
        "state_dict": {f"{PREFIX}{k}": v.detach().cpu() for k, v in net.state_dict().items()},
        "mss": checkpoint_config(model_config, {"root": None, **audio_constants(net)} if data is None else data),
        **(extra or {}),
    }
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
