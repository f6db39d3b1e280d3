"""mss checkpoints: what they carry, reading, loading and writing them.

An mss checkpoint is Lightning's checkpoint dict (or a minimal one written by :func:`save_checkpoint`) with an
``"mss"`` entry: ``{"model": resolved model config (_target_ + arguments), "data": data config or at least its audio
constants (sources, sample_rate, channels), "mss_version", "git"}``, and the network's weights under ``state_dict``
with the ``net.`` prefix of :class:`mss.lightning.module.SeparationModule`. :func:`load_model` rebuilds the network
from that alone.
"""

from __future__ import annotations

import os
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


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The raw checkpoint dict, checked to be an mss checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot read checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "mss" not in ckpt or "model" not in ckpt.get("mss", {}):
        raise CheckpointError(f"{path}: not an mss checkpoint (no 'mss.model' config entry); expected a file "
                              "written by `python -m mss.train`")
    return ckpt


def _net_state(ckpt: dict) -> dict[str, torch.Tensor]:
    return {k[len(PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(PREFIX)}


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


def load_net_weights(net: nn.Module, path: str | os.PathLike, sources: list[str], key: str = "checkpoint") -> None:
    """Load the network weights of the mss checkpoint ``path`` into ``net`` (same architecture), checking that it
    was trained on ``sources``; ``key`` names the config entry that gave the path, for the errors."""
    ckpt = read_checkpoint(path)
    stored = list(ckpt["mss"].get("data", {}).get("sources", sources))
    if stored != list(sources):
        raise CheckpointError(f"{path}: {key} was trained on sources {stored}, this run separates {list(sources)} "
                              "(set data.sources to match)")
    try:
        net.load_state_dict(_net_state(ckpt))
    except RuntimeError as err:
        raise CheckpointError(f"{path}: {key} weights do not fit model {type(net).__name__} (use the model config "
                              f"stored in the checkpoint): {str(err).splitlines()[0]}") from err


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
