"""State-dict keys of tky823/DNN-based_source_separation (commit 8663d6fc) MMDenseNet / MMDenseLSTM target networks
(``MMDenseNet``, ``MMDenseLSTM`` / ``MMDenseRNN`` with ``rnn_position: after_dense``) -> :mod:`mss.models.mmdensenet`.

tky823 saves one network per target (``model/<target>/best.pth``, the state dict under ``state_dict``); the mss
separator holds them under ``targets.<name>.``. :func:`convert_state_dict` renames one target's keys,
:func:`convert_targets` a ``{target: state_dict}`` mapping into the separator's state dict. Only the keys are renamed;
the configuration (bands, growth rates, ...) must be given by the matching ``conf/model`` file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["convert_d3net_state_dict", "convert_key", "convert_state_dict", "convert_targets"]

# applied in order to one target network's key
_RULES = [
    (r"^(scale|bias)_(in|out)$", r"\2_\1"),
    (r"^norm2d\.", "out_norm."),
    (r"^glu2d\.map_gate\.", "out_gate."),
    (r"^glu2d\.map\.", "out_value."),
    (r"^dense_block\.", "final."),
    (r"^net\.(\w+)\.conv2d\.", r"bands.\1.stem."),
    (r"^net\.", "bands."),
    (r"\.encoder\.net\.(\d+)\.dense_block\.", r".down.\1."),
    (r"\.decoder\.net\.(\d+)\.norm2d\.", r".up.\1.norm."),
    (r"\.decoder\.net\.(\d+)\.upsample2d\.", r".up.\1.upsample."),
    (r"\.decoder\.net\.(\d+)\.dense_rnn_block\.", r".up.\1.block."),
    (r"\.decoder\.net\.(\d+)\.dense_block\.net\.", r".up.\1.block.dense.net."),
    (r"\.block\.bottleneck_conv2d\.", ".block.lstm_in."),  # an up block's LSTM input conv
    (r"\.bottleneck_conv2d\.net\.", ".bottleneck.dense.net."),  # plain dense bottleneck
    (r"\.bottleneck_conv2d\.", ".bottleneck."),
    (r"\.pointwise_conv2d\.", ".project."),
    # inside a dense + LSTM block
    (r"\.(bottleneck|block)\.dense_block\.net\.", r".\1.dense.net."),
    (r"\.(bottleneck|block)\.bottleneck_conv2d\.", r".\1.lstm_in."),
    (r"\.(bottleneck|block)\.rnn\.", r".\1.lstm."),
    (r"\.(bottleneck|block)\.linear\.", r".\1.lstm_out."),
    # dense-block layers
    (r"(^|\.)net\.(\d+)\.norm2d\.", r"\1layers.\2.norm."),
    (r"(^|\.)net\.(\d+)\.conv2d\.", r"\1layers.\2.conv."),
]


def convert_key(key: str) -> str:
    """mss name of one tky823 MMDenseNet / MMDenseLSTM target-network key (``net.low.conv2d.weight`` ->
    ``bands.low.stem.weight``)."""
    for pattern, repl in _RULES:
        key = re.sub(pattern, repl, key)
    return key


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One tky823 target network's state dict (or a checkpoint dict holding it under ``state_dict``) with mss keys
    (for :class:`mss.models.mmdensenet.MMDenseTarget`)."""
    if isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if "scale_in" not in state or "glu2d.map.weight" not in state:
        raise ValueError("not a tky823 MMDenseNet / MMDenseLSTM state dict (no scale_in / glu2d.map.weight)")
    return {convert_key(k): v for k, v in state.items()}


def convert_targets(states: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{target: tky823 state dict}`` -> state dict of :class:`mss.models.mmdensenet.MMDenseNet`
    (``targets.<name>.`` prefixes)."""
    return {f"targets.{name}.{k}": v for name, state in states.items() for k, v in convert_state_dict(state).items()}


_D3_RULES = [
    (r"^(bands\.\d+|full)\.conv2d\.", r"\1.stem."),
    (r"\.encoder\.net\.(\d+)\.d3block\.net\.(\d+)\.", r".down.\1.units.\2."),
    (r"\.bottleneck_conv2d\.net\.(\d+)\.", r".bottleneck.units.\1."),
    (r"\.decoder\.net\.(\d+)\.norm2d\.", r".up_norm.\1."),
    (r"\.decoder\.net\.(\d+)\.upsample2d\.", r".upsample.\1."),
    (r"\.decoder\.net\.(\d+)\.d3block\.net\.(\d+)\.", r".up.\1.units.\2."),
    (r"\.pointwise_conv2d\.", ".project."),
    (r"^d2block\.", "final."),
    (r"^norm2d\.", "out_norm."),
    (r"^glu2d\.map_gate\.", "conv_gate."),
    (r"^glu2d\.map\.", "conv_filt."),
    (r"(^|\.)net\.(\d+)\.norm2d\.", r"\1layers.\2.norm."),
    (r"(^|\.)net\.(\d+)\.conv2d\.", r"\1layers.\2.conv."),
]


def convert_d3net_state_dict(state: Mapping[str, torch.Tensor], n_bins: int,
                             bands: tuple[str, ...] = ("low", "middle")) -> dict[str, torch.Tensor]:
    """One tky823 ``D3Net`` target network (``egs/musdb18/d3net/config/nnabla``, the official configuration ported to
    PyTorch) -> :class:`mss.models.d3net.D3NetTarget` keys and layout.

    tky823 lays spectrograms out ``(C, F, N)``, the official code and mss ``(C, N, F)``: 4-d conv / transposed-conv
    weights are transposed in their last two axes. tky823's input scale / bias cover the modelled bins only
    (``valid_bins``); mss's ``in_scale`` / ``in_offset`` cover all ``n_bins`` as the official ones (bins above
    ``valid_bins`` never use them): they are padded with 1 / 0. ``bands``: tky823's band names in frequency order.
    """
    if isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if "scale_in" not in state or "d2block.net.0.conv2d.weight" not in state:
        raise ValueError("not a tky823 D3Net state dict (no scale_in / d2block.net.0.conv2d.weight)")
    out = {}
    for key, value in state.items():
        if key in ("scale_in", "bias_in"):
            pad = torch.full((n_bins - value.numel(),), 1.0 if key == "scale_in" else 0.0, dtype=value.dtype)
            out["in_scale" if key == "scale_in" else "in_offset"] = torch.cat([value, pad])
            continue
        if key in ("scale_out", "bias_out"):
            out["decode_scale" if key == "scale_out" else "decode_bias"] = value
            continue
        name = key
        for i, band in enumerate(bands):
            name = re.sub(rf"^net\.{band}\.", f"bands.{i}.", name)
        name = re.sub(r"^net\.full\.", "full.", name)
        for pattern, repl in _D3_RULES:
            name = re.sub(pattern, repl, name)
        out[name] = value.transpose(-1, -2).contiguous() if value.dim() == 4 else value
    return out
