"""Loading trained networks: :func:`load_model` rebuilds the network of any mss checkpoint from the resolved model
config stored in it (``checkpoint["mss"]["model"]``), with no other input."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mss.models import build_model


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
