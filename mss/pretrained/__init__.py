"""Loading trained networks: :func:`load_model` rebuilds the network of any mss checkpoint from the resolved model
config stored in it (``checkpoint["mss"]["model"]``), with no other input."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mss.models import build_model
from mss.utils import atomic_write, git_revision


class CheckpointError(ValueError):
    """A file is not a readable mss checkpoint."""


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


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Network of an mss checkpoint, in eval mode, with the weights that were validated (EMA when it was on)."""
    ckpt = read_checkpoint(path, map_location)
    net = build_model(ckpt["mss"]["model"])
    prefix = "net."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the stored model config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return net.to(map_location).eval()


def default_data_config(sources: list[str], sample_rate: int, channels: int) -> dict:
    """A MUSDB18-HQ data config (root unset) with the given audio constants, stored in checkpoints that were not
    written by training (imports, bags): ``mss.evaluate ckpt=... data=checkpoint data.root=DIR`` then works."""
    from omegaconf import OmegaConf

    from mss.run import compose

    cfg = compose("train", ["data=musdbhq", "data.root=null", f"data.sample_rate={int(sample_rate)}",
                            f"data.channels={int(channels)}", "paths.output_dir=unused"])
    data = OmegaConf.to_container(cfg.data, resolve=True)
    data["sources"] = list(sources)
    return data


def save_checkpoint(path: str | os.PathLike, net: nn.Module, model_config: dict, *, data: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Write a minimal mss checkpoint of ``net`` (atomically) that :func:`load_model` and ``mss.evaluate`` read.

    Args:
        net: the network; its weights are stored under ``state_dict`` with the ``net.`` prefix used by training.
        model_config: resolved model config with a ``_target_`` that rebuilds ``net``.
        data: data config to store; default: :func:`default_data_config` from ``net.sources``, ``net.sample_rate``
            and ``net.audio_channels``.
        extra: more top-level entries (e.g. ``{"imported_from": ...}``).
    """
    import mss

    if "_target_" not in model_config:
        raise ValueError("save_checkpoint: model_config needs a _target_")
    if data is None:
        data = default_data_config(list(net.sources), net.sample_rate, net.audio_channels)
    ckpt = {
        "state_dict": {f"net.{k}": v.detach().cpu() for k, v in net.state_dict().items()},
        "mss": {"model": dict(model_config), "data": data, "mss_version": mss.__version__, "git": git_revision()},
        **(extra or {}),
    }
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
