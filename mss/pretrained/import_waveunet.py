"""Import Wave-U-Net checkpoints of f90/Wave-U-Net-Pytorch (WUP, 86c113da) into mss checkpoints.

Usage::

    python -m mss.pretrained.import_waveunet model.pt out=mss_model.ckpt [sources=bass,drums,other,vocals]
        [features=32] [levels=6] [feature_growth=double] [kernel_size=5] [strides=4] [depth=1] [conv_type=gn]
        [output_size=2.0] [sr=44100] [channels=2]

``model.pt`` is what WUP's ``train.py`` saves (``{model_state_dict, optimizer_state_dict, state}``; a plain state
dict works too). The options are WUP's ``train.py`` arguments with their meaning there (``levels`` counts widths:
``--levels 6`` = 5 down / up blocks = ``model.levels=5`` in mss; ``output_size`` in seconds). Those the weights
determine (sources, channels, features, levels, feature_growth, kernel_size, depth, conv_type) are read from the
weights when not given; ``strides`` from the fixed sinc filters when they are the untouched initial ones, else
WUP's default 4; ``output_size`` and ``sr`` cannot be read from the weights (defaults 2.0 s, 44100 Hz).
``sources=`` picks and orders the per-source networks (``sources=vocals`` imports only the vocals net); for a joint
network (``separate=0``, keys ``waveunets.ALL.…``) it names the outputs (default WUP's bass, drums, other, vocals).
WUP's ``res="learned"`` and ``conv_type="bn"`` are not implemented in mss and are refused by name.

The result is a :class:`mss.models.wave_u_net.WaveUNet` checkpoint that :func:`mss.load_model`,
``mss.evaluate ckpt=...`` and ``mss.separate`` read.
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mss.checkpoint import build_model, save_checkpoint

__all__ = ["TARGET", "WUP_DEFAULTS", "convert_state_dict", "import_waveunet", "infer_options", "main", "model_config",
           "read_checkpoint"]

TARGET = "mss.models.wave_u_net.WaveUNet"
WUP_INSTRUMENTS = ["bass", "drums", "other", "vocals"]
# WUP train.py argument -> default
WUP_DEFAULTS: dict[str, Any] = {
    "features": 32, "levels": 6, "feature_growth": "double", "kernel_size": 5, "strides": 4, "depth": 1,
    "conv_type": "gn", "output_size": 2.0, "sr": 44100, "channels": 2,
}
_INTS = {"features", "levels", "kernel_size", "strides", "depth", "sr", "channels"}
_FLOATS = {"output_size"}
_KEY = re.compile(r"waveunets\.([^.]+)\.(.+)")
_CONV = r"(\d+)\.(filter|norm)\.(\w+)"
_RENAMES = [(re.compile(pattern), template) for pattern, template in [
    (r"downsampling_blocks\.(\d+)\.pre_shortcut_convs\." + _CONV, "down.{0}.skip_convs.{1}.{2}.{3}"),
    (r"downsampling_blocks\.(\d+)\.post_shortcut_convs\." + _CONV, "down.{0}.convs.{1}.{2}.{3}"),
    (r"downsampling_blocks\.(\d+)\.downconv\.filter", "down.{0}.resample.filter"),
    (r"upsampling_blocks\.(\d+)\.upconv\.filter", "up.{0}.resample.filter"),
    (r"upsampling_blocks\.(\d+)\.pre_shortcut_convs\." + _CONV, "up.{0}.convs.{1}.{2}.{3}"),
    (r"upsampling_blocks\.(\d+)\.post_shortcut_convs\." + _CONV, "up.{0}.merge_convs.{1}.{2}.{3}"),
    (r"bottlenecks\." + _CONV, "bottleneck.{0}.{1}.{2}"),
    (r"output_conv\.(weight|bias)", "output.{0}"),
]]


def _refuse_unsupported(key: str) -> None:
    if re.search(r"(downconv|upconv)\.filter\.(weight|bias)$", key):
        raise ValueError(f"{key}: WUP res='learned' (strided / transposed conv resampling) is not implemented in mss; "
                         "only res='fixed' (sinc resampling)")
    if re.search(r"norm\.(running_mean|running_var|num_batches_tracked)$", key):
        raise ValueError(f"{key}: WUP conv_type='bn' (BatchNorm) is not implemented in mss; only 'gn' and 'normal'")


def convert_state_dict(state: Mapping[str, Tensor], sources: Sequence[str] | None = None) -> dict[str, Tensor]:
    """WUP ``waveunets.<instrument>.…`` keys -> :class:`~mss.models.wave_u_net.WaveUNet` ``nets.<source>.…`` keys
    (``ALL`` -> ``all``), keeping only the networks of ``sources`` when given. A ``module.`` prefix is stripped."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise ValueError(f"{key}: not a Wave-U-Net-Pytorch key (expected waveunets.<instrument>.…)")
        net, rest = match.groups()
        if sources is not None and net != "ALL" and net not in sources:
            continue
        _refuse_unsupported(rest)
        for pattern, template in _RENAMES:
            found = pattern.fullmatch(rest)
            if found:
                parts = ["conv" if p == "filter" else p for p in found.groups()]
                out[f"nets.{'all' if net == 'ALL' else net}.{template.format(*parts)}"] = value
                break
        else:
            raise ValueError(f"{key}: unknown Wave-U-Net-Pytorch parameter {rest!r}")
    return out


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """The WUP state dict of a ``train.py`` checkpoint (``model_state_dict``) or of a plain state dict, and the
    checkpoint's ``state`` entry (training progress; ``{}`` if absent)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a Wave-U-Net-Pytorch checkpoint ({{model_state_dict, ...}}) or a "
                         "state dict")
    progress = ckpt.get("state") if isinstance(ckpt.get("state"), dict) else {}
    return state, dict(progress)


def _strides_from_filter(filt: Tensor) -> int | None:
    from mss.models.wave_u_net import sinc_filter

    taps = filt.reshape(-1, filt.shape[-1])[0].float()
    for stride in range(2, 65):
        if torch.allclose(taps, sinc_filter(taps.numel(), 0.5 / stride), atol=1e-6):
            return stride
    return None


def infer_options(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """WUP ``train.py`` options read from a WUP state dict: ``instruments`` (``["ALL"]`` for a joint net), channels,
    features, levels, feature_growth, kernel_size, depth, conv_type and (when the sinc filters are the initial
    ones) strides."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    for key in state:
        _refuse_unsupported(key)
    instruments = list(dict.fromkeys(m.group(1) for m in map(_KEY.fullmatch, state) if m))
    if not instruments:
        raise ValueError("not a Wave-U-Net-Pytorch state dict: no waveunets.<instrument>.… keys")
    first = f"waveunets.{instruments[0]}."
    blocks = sorted({int(m.group(1)) for k in state
                     if (m := re.match(re.escape(first) + r"downsampling_blocks\.(\d+)\.", k))})
    conv0 = state[first + "downsampling_blocks.0.pre_shortcut_convs.0.filter.weight"]
    depth = len({k for k in state if re.match(re.escape(first) + r"downsampling_blocks\.0\.pre_shortcut_convs\.\d+"
                                              r"\.filter\.weight$", k)})
    widths = [int(state[f"{first}downsampling_blocks.{i}.pre_shortcut_convs.0.filter.weight"].shape[0]) for i in blocks]
    widths.append(int(state[f"{first}bottlenecks.0.filter.weight"].shape[0]))
    features = widths[0]
    growth = "double" if widths == [features * 2 ** i for i in range(len(widths))] else "add"
    options: dict[str, Any] = {
        "instruments": instruments, "channels": int(conv0.shape[1]), "features": features,
        "levels": len(widths), "feature_growth": growth, "kernel_size": int(conv0.shape[-1]), "depth": depth,
        "conv_type": "gn" if first + "downsampling_blocks.0.pre_shortcut_convs.0.norm.weight" in state else "normal",
    }
    filt = state.get(first + "downsampling_blocks.0.downconv.filter")
    strides = None if filt is None else _strides_from_filter(filt)
    if strides is not None:
        options["strides"] = strides
    return options


def model_config(sources: Sequence[str], *, separate: bool = True, features: int = 32, levels: int = 6,
                 feature_growth: str = "double", kernel_size: int = 5, strides: int = 4, depth: int = 1,
                 conv_type: str = "gn", output_size: float = 2.0, sr: int = 44100, channels: int = 2) -> dict:
    """mss model config (with ``_target_``) of a WUP model built with these ``train.py`` options (WUP meaning:
    ``levels`` widths, ``output_size`` seconds)."""
    if conv_type not in ("gn", "normal"):
        raise ValueError(f"conv_type={conv_type!r}: mss implements WUP's 'gn' and 'normal', not {conv_type!r}")
    if feature_growth not in ("double", "add"):
        raise ValueError(f"feature_growth={feature_growth!r}: expected 'double' or 'add'")
    if int(levels) < 2:
        raise ValueError(f"levels={levels}: WUP levels counts widths and needs at least 2 (one down / up block)")
    gn = conv_type == "gn"
    return {"_target_": TARGET, "sources": [str(s) for s in sources], "audio_channels": int(channels),
            "sample_rate": int(sr), "model_rate": int(sr), "levels": int(levels) - 1, "features": int(features),
            "growth": feature_growth, "block": "double", "depth": int(depth), "kernel_size": int(kernel_size),
            "up_kernel_size": int(kernel_size), "stride": int(strides), "resampling": "sinc", "resampling_kernel": 15,
            "norm": "group" if gn else None, "norm_channels": 8, "activation": "relu" if gn else "leaky_relu",
            "negative_slope": 0.01, "mix_skip": False, "output": "direct", "difference_source": None,
            "output_activation": "linear", "per_source": bool(separate),
            "output_size": int(float(output_size) * int(sr)), "segment": 10.0, "window_batch": 16}


def import_waveunet(checkpoint: str | os.PathLike, out: str | os.PathLike, sources: Sequence[str] | None = None,
                    **options: Any) -> Path:
    """Convert a WUP checkpoint into an mss checkpoint at ``out``; ``options`` are WUP ``train.py`` options
    (see the module docstring) overriding what is read from the weights."""
    unknown = sorted(set(options) - set(WUP_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; expected some of {sorted(WUP_DEFAULTS)} and sources")
    state, progress = read_checkpoint(checkpoint)
    inferred = infer_options(state)
    instruments = inferred.pop("instruments")
    if "strides" not in inferred and "strides" not in options:
        warnings.warn(f"{checkpoint}: the sinc filters are not WUP's initial ones; assuming strides="
                      f"{WUP_DEFAULTS['strides']} (pass strides=...)", stacklevel=2)
    given = {k: v for k, v in options.items() if v is not None}
    settings = {**WUP_DEFAULTS, **inferred, **given}
    separate = instruments != ["ALL"]
    if separate:
        names = list(instruments) if sources is None else [str(s) for s in sources]
        missing = [s for s in names if s not in instruments]
        if missing:
            raise ValueError(f"sources={names}: {missing} not in the checkpoint, which has networks for {instruments}")
    else:
        names = list(WUP_INSTRUMENTS if sources is None else sources)
        outputs = int(state["waveunets.ALL.output_conv.weight"].shape[0])
        if outputs != len(names) * int(settings["channels"]):
            raise ValueError(f"the joint network has {outputs} output channels = {outputs // int(settings['channels'])}"
                             f" sources x {settings['channels']} channels; sources={names} does not fit, pass "
                             f"sources=a,b,... in the order WUP's --instruments had")
    cfg = model_config(names, separate=separate, **settings)
    try:
        net = build_model(cfg)
    except Exception as err:  # Hydra wraps the model's ValueError
        raise ValueError(f"cannot build the Wave-U-Net these options describe ({given}): {err}") from err
    try:
        net.load_state_dict(convert_state_dict(state, names if separate else None), strict=True)
    except RuntimeError as err:
        raise ValueError(f"{checkpoint}: weights do not fit the Wave-U-Net described by {settings} (options given: "
                         f"{given}): {err}") from err
    return save_checkpoint(out, net, cfg, extra={"imported_from": {
        "checkpoint": str(checkpoint), "reference": "f90/Wave-U-Net-Pytorch", "options": settings,
        "state": {k: v for k, v in progress.items() if isinstance(v, (int, float, str, type(None)))}}})


def main(argv: list[str] | None = None) -> Path:
    positional, options = [], {}
    for arg in list(sys.argv[1:] if argv is None else argv):
        key, sep, value = arg.partition("=")
        if sep and (key in WUP_DEFAULTS or key in ("out", "sources")):
            options[key] = value
        elif sep:
            names = ", ".join(f"{k}=" for k in WUP_DEFAULTS)
            raise SystemExit(f"unknown option {key!r}; expected out=, sources=, {names}")
        else:
            positional.append(arg)
    if len(positional) != 1 or "out" not in options:
        raise SystemExit("usage: python -m mss.pretrained.import_waveunet model.pt out=mss_model.ckpt "
                         "[sources=a,b] [features=32] [levels=6] [strides=4] [output_size=2.0] ...")
    out, sources = options.pop("out"), options.pop("sources", None)
    typed = {k: int(v) if k in _INTS else float(v) if k in _FLOATS else v for k, v in options.items()}
    path = import_waveunet(positional[0], out, sources.split(",") if sources else None, **typed)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
