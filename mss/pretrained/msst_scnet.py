"""SCNet checkpoints of ZFTurbo's Music-Source-Separation-Training (MSST ``model_type: scnet``) and of the official
starrytong/SCNet code -> :class:`mss.models.scnet.SCNet`.

Both use the same module tree (MSST's ``models/scnet`` is the official network without the input normalisation), so
one key renaming serves both; :func:`model_config` turns the ``model:`` section of an MSST YAML (the official
``conf/config.yaml`` has the same keys) into an mss model config. MSST checkpoints are plain state dicts; the
official ones keep the weights under ``best_state`` (or ``state``), possibly with a ``module.`` prefix, which
:func:`convert_state_dict` strips.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

__all__ = ["TARGET", "convert_state_dict", "model_config"]

TARGET = "mss.models.scnet.SCNet"
# MSST / official constructor argument -> mss argument, and the reference default
_OPTIONS: dict[str, tuple[str, Any]] = {
    "audio_channels": ("audio_channels", 2),
    "dims": ("dims", [4, 32, 64, 128]),
    "nfft": ("n_fft", 4096),
    "hop_size": ("hop_length", 1024),
    "normalized": ("normalized", True),
    "band_SR": ("band_ratios", [0.175, 0.392, 0.433]),
    "band_stride": ("band_strides", [1, 4, 16]),
    "band_kernel": ("band_kernels", [3, 4, 16]),
    "conv_depths": ("conv_depths", [3, 2, 1]),
    "compress": ("compress", 4),
    "conv_kernel": ("conv_kernel", 3),
    "num_dplayer": ("dual_path_layers", 6),
    "expand": ("expand", 1),
}
_CONV_LAYER = {"0": "norm_in", "1": "expand", "3": "depthwise", "4": "norm_hidden", "6": "project"}
_PATH = {"0": "freq", "1": "time"}
_DUAL_PATH = {"lstm_layers": "rnn", "linear_layers": "proj", "norm_layers": "norm"}


def model_config(msst_model_section: Mapping[str, Any], sources: Sequence[str], sample_rate: int,
                 normalize_input: bool = False) -> dict:
    """mss model config (with ``_target_``) for the ``model:`` section of an MSST ``scnet`` YAML.

    Args:
        msst_model_section: the YAML's ``model:`` mapping (constructor arguments of the reference ``SCNet``).
        sources: stem names in output order (MSST: ``training.instruments``); their number must match the
            section's ``sources`` where it has one.
        sample_rate: the checkpoint's sample rate (MSST: ``audio.sample_rate``).
        normalize_input: False for MSST's copy (no input normalisation); True for the official starrytong weights.

    Raises:
        ValueError: an option mss does not implement (named), e.g. ``win_size`` different from ``nfft``.
    """
    model = dict(msst_model_section)
    sources = [str(s) for s in sources]
    known = set(_OPTIONS) | {"sources", "win_size"}
    unknown = sorted(set(model) - known)
    if unknown:
        raise ValueError(f"SCNet model option(s) {unknown} are not implemented by mss.models.scnet.SCNet")
    if "sources" in model and len(model["sources"]) != len(sources):
        raise ValueError(f"model.sources={list(model['sources'])} has {len(model['sources'])} stems but "
                         f"{len(sources)} source names were given: {sources}")
    n_fft = int(model.get("nfft", 4096))
    win = model.get("win_size", n_fft)
    if win is not None and int(win) != n_fft:
        raise ValueError(f"SCNet option win_size={win} != nfft={n_fft} is not implemented (mss uses a "
                         "rectangular window of n_fft samples)")
    cfg: dict[str, Any] = {"_target_": TARGET, "sources": sources, "sample_rate": int(sample_rate)}
    for key, (name, default) in _OPTIONS.items():
        value = model.get(key, default)
        cfg[name] = [type(default[0])(v) for v in value] if isinstance(default, list) else type(default)(value)
    cfg["normalize_input"] = bool(normalize_input)
    return cfg


def convert_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Official / MSST SCNet state-dict keys -> :class:`mss.models.scnet.SCNet` keys (a ``module.`` prefix is
    dropped). Raises ``ValueError`` on a key that belongs to neither layout."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = None
        if m := re.fullmatch(r"encoder\.(\d+)\.SDlayer\.convs\.(\d+)\.(weight|bias)", key):
            new = f"encoder.{m[1]}.down.{m[2]}.{m[3]}"
        elif m := re.fullmatch(r"encoder\.(\d+)\.conv_modules\.(\d+)\.layers\.(\d+)\.(\d+)\.(weight|bias)", key):
            if m[4] in _CONV_LAYER:
                new = f"encoder.{m[1]}.convs.{m[2]}.layers.{m[3]}.{_CONV_LAYER[m[4]]}.{m[5]}"
        elif m := re.fullmatch(r"encoder\.(\d+)\.globalconv\.(weight|bias)", key):
            new = f"encoder.{m[1]}.global_conv.{m[2]}"
        elif m := re.fullmatch(r"separation_net\.dp_modules\.(\d+)\.(lstm_layers|linear_layers|norm_layers)\.([01])"
                               r"\.(\w+)", key):
            new = f"separation.{m[1]}.{_PATH[m[3]]}.{_DUAL_PATH[m[2]]}.{m[4]}"
        elif m := re.fullmatch(r"decoder\.(\d+)\.0\.conv\.(weight|bias)", key):
            new = f"decoder.{m[1]}.fusion.{m[2]}"
        elif m := re.fullmatch(r"decoder\.(\d+)\.1\.convtrs\.(\d+)\.(weight|bias)", key):
            new = f"decoder.{m[1]}.up.{m[2]}.{m[3]}"
        if new is None:
            raise ValueError(f"unexpected key {key!r}: not an official / MSST SCNet state dict")
        out[new] = value
    return out
