"""Separators: pure ``nn.Module``s with ``forward(mix: (B, C, T)) -> (B, S, C, T)``, built from Hydra configs."""

from __future__ import annotations

from typing import Any

from torch import nn


def build_model(config: Any) -> nn.Module:
    """Instantiate a network from a (resolved) model config with a ``_target_``."""
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
