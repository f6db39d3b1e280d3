"""Import BS-RoFormer / Mel-Band RoFormer checkpoints in the lucidrains (``bs-roformer`` package) or ZFTurbo MSST
layout into an mss checkpoint.

Usage::

    python -m mss.pretrained.import_roformer model.ckpt config=config.yaml out=mss_model.ckpt [type=bs|mel]
        [sources=vocals,other]

``model.ckpt`` is the reference state dict (``torch.save(model.state_dict())``, optionally wrapped in
``{"state_dict": ...}``); ``config.yaml`` is the MSST YAML (``model:`` with the constructor arguments, ``audio:``,
``training: {instruments, target_instrument}``). Structural sizes (width, depth, Transformer layers per block, mask
MLP depth and width, attention gates, linear-attention layers) are read from the state dict itself, so the different
``mask_estimator_depth`` conventions of the BS and Mel code and their constructor defaults cannot mislead the
import; the YAML gives what the weights do not (heads, STFT, bands, sample rate, dropout, ``zero_dc``,
``skip_connection``, chunk size, stem names). The result loads with :func:`mss.load_model` and evaluates with
``python -m mss.evaluate ckpt=mss_model.ckpt``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mss.checkpoint import build_model, save_checkpoint
from mss.pretrained.import_msst import load_msst_yaml, read_state_dict, run_cli

__all__ = ["convert_state_dict", "import_roformer", "main", "model_config"]

BS_TARGET = "mss.models.bs_roformer.BSRoformer"
MEL_TARGET = "mss.models.mel_roformer.MelRoformer"
# constructor options of newer reference versions that change the network; importing them would be silently wrong
_UNSUPPORTED = {"num_residual_streams": 1, "use_pope": False, "add_value_residual": False, "freq_range": None,
                "stft_normalized": False, "use_shared_bias": False}


def _load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    state = read_state_dict(path)
    if not any(k.startswith("band_split.to_features.") for k in state):
        raise ValueError(f"{path}: no 'band_split.to_features.*' keys: not a lucidrains / MSST RoFormer state dict")
    return state


def _roles(state: Mapping[str, torch.Tensor]) -> dict[int, str]:
    """Position of the linear / time / band Transformers inside each reference block (``layers.<i>.<j>``)."""
    slots = sorted({int(m.group(1)) for k in state if (m := re.match(r"layers\.0\.(\d+)\.", k))})
    if len(slots) == 3:
        return dict(zip(slots, ("linear", "time", "band")))
    if len(slots) == 2:  # MSST without linear attention: 0, 1; lucidrains Mel with linear_transformer_depth=0: 1, 2
        return dict(zip(slots, ("time", "band")))
    raise ValueError(f"cannot identify the Transformers of a RoFormer block from slots {slots}")


_ATTN = {"norm.gamma": "norm.weight", "to_qkv.weight": "qkv.weight", "to_qkv.0.weight": "qkv.weight",
         "to_gates.weight": "gate.weight", "to_gates.bias": "gate.bias", "to_out.0.weight": "out.weight",
         "to_out.1.weight": "out.weight", "temperature": "temperature"}
_FF = {"net.0.gamma": "norm.weight", "net.1.weight": "fc1.weight", "net.1.bias": "fc1.bias",
       "net.4.weight": "fc2.weight", "net.4.bias": "fc2.bias"}


def convert_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lucidrains / MSST RoFormer state-dict keys -> :class:`~mss.models.roformer.BandRoformer` keys.

    The RoPE frequency tables, stored once per attention layer in the reference layout (one shared module per
    direction), become mss's two tables ``time_rope.freqs`` and ``band_rope.freqs``.
    """
    roles = _roles(state)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = None
        if m := re.fullmatch(r"band_split\.to_features\.(\d+)\.0\.gamma", key):
            new = f"band_split.bands.{m[1]}.norm.weight"
        elif m := re.fullmatch(r"band_split\.to_features\.(\d+)\.1\.(weight|bias)", key):
            new = f"band_split.bands.{m[1]}.proj.{m[2]}"
        elif key == "final_norm.gamma":
            new = "final_norm.weight"
        elif m := re.fullmatch(r"mask_estimators\.(\d+)\.to_freqs\.(\d+)\.0\.(\d+)\.(weight|bias)", key):
            new = f"mask_heads.{m[1]}.bands.{m[2]}.layers.{int(m[3]) // 2}.{m[4]}"
        elif m := re.fullmatch(r"layers\.(\d+)\.(\d+)\.norm\.gamma", key):
            new = f"blocks.{m[1]}.{roles[int(m[2])]}.norm.weight"
        elif m := re.fullmatch(r"layers\.(\d+)\.(\d+)\.layers\.(\d+)\.([01])\.(.+)", key):
            if m[5] == "rotary_embed.freqs":
                out[f"{roles[int(m[2])]}_rope.freqs"] = value  # the same shared table in every layer
                continue
            table, part = (_ATTN, "attn") if m[4] == "0" else (_FF, "ff")
            if m[5] in table:
                new = f"blocks.{m[1]}.{roles[int(m[2])]}.layers.{m[3]}.{part}.{table[m[5]]}"
        if new is None:
            raise ValueError(f"unexpected key {key!r} in a RoFormer state dict (unsupported reference version?)")
        out[new] = value
    return out


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    return len({m.group(1) for k in state if (m := re.match(pattern, k))})


def model_config(msst: Mapping[str, Any], state: Mapping[str, torch.Tensor], kind: str | None = None,
                 sources: list[str] | None = None) -> dict:
    """mss model config (with ``_target_``) for a reference state dict and its MSST YAML."""
    if not isinstance(msst["model"], Mapping):
        raise ValueError(f"expected the YAML's 'model:' section to hold the RoFormer's arguments, got "
                         f"model: {msst['model']!r}")
    model = dict(msst["model"])
    bad = {k: model[k] for k, ok in _UNSUPPORTED.items() if k in model and model[k] not in (ok, None)}
    if bad:
        raise ValueError(f"model options {bad} are not supported by the mss RoFormers")
    win = model.get("stft_win_length")
    n_fft = int(model.get("stft_n_fft", 2048))
    if win is not None and int(win) != n_fft:
        raise ValueError(f"model.stft_win_length={win} != stft_n_fft={n_fft} is not supported")
    kind = kind or ("mel" if "num_bands" in model else "bs")
    if kind not in ("bs", "mel"):
        raise ValueError(f"type must be 'bs' or 'mel', got {kind!r}")

    audio, training = msst.get("audio") or {}, msst.get("training") or {}
    num_stems = int(model.get("num_stems", 1))
    if sources is None:
        target, instruments = training.get("target_instrument"), list(training.get("instruments") or [])
        if target:
            sources = [target]
        elif len(instruments) == num_stems:
            sources = instruments
        else:
            raise ValueError(f"cannot name the {num_stems} stem(s) from training.instruments={instruments} and "
                             f"training.target_instrument={target}; pass sources=a,b,...")
    if len(sources) != num_stems:
        raise ValueError(f"{len(sources)} source names {sources} for model.num_stems={num_stems}")

    roles = _roles(state)
    slot = {role: j for j, role in roles.items()}
    qkv = state[f"layers.0.{slot['time']}.layers.0.0.to_qkv.weight"]
    heads = int(model.get("heads", 8))
    dim = int(state["band_split.to_features.0.1.weight"].shape[0])
    mask_linears = _count(state, r"mask_estimators\.0\.to_freqs\.0\.0\.(\d+)\.weight")
    hidden = state["mask_estimators.0.to_freqs.0.0.0.weight"].shape[0]
    cfg = {
        "_target_": BS_TARGET if kind == "bs" else MEL_TARGET,
        "sources": list(sources),
        "audio_channels": 2 if model.get("stereo", False) else 1,
        "sample_rate": int(model.get("sample_rate", audio.get("sample_rate", 44100))),
        "dim": dim,
        "depth": _count(state, r"layers\.(\d+)\."),
        "heads": heads,
        "head_dim": qkv.shape[0] // (3 * heads),
        "time_depth": _count(state, rf"layers\.0\.{slot['time']}\.layers\.(\d+)\."),
        "band_depth": _count(state, rf"layers\.0\.{slot['band']}\.layers\.(\d+)\."),
        "linear_depth": _count(state, rf"layers\.0\.{slot['linear']}\.layers\.(\d+)\.") if "linear" in slot else 0,
        "attn_dropout": float(model.get("attn_dropout", 0.1 if kind == "mel" else 0.0)),
        "ff_dropout": float(model.get("ff_dropout", 0.1 if kind == "mel" else 0.0)),
        "gates": any(".to_gates." in k for k in state),
        "final_norm": "final_norm.gamma" in state,
        "mask_norm": False,
        "transformer_norm": any(re.fullmatch(r"layers\.\d+\.\d+\.norm\.gamma", k) for k in state),
        "mask_hidden_layers": mask_linears - 1,
        "mlp_expansion": hidden // dim if mask_linears > 1 else int(model.get("mlp_expansion_factor", 4)),
        "skip_connection": bool(model.get("skip_connection", False)),
        "n_fft": n_fft,
        "hop_length": int(model.get("stft_hop_length", 512)),
        "zero_dc": bool(model.get("zero_dc", kind == "bs")),
        "segment_length": int(audio.get("chunk_size", 131_584)),
    }
    if kind == "bs":
        bands = model.get("freqs_per_bands")
        cfg["freqs_per_bands"] = None if bands is None else [int(b) for b in bands]
    else:
        cfg["num_bands"] = int(model.get("num_bands", 60))
    return cfg


def import_roformer(checkpoint: str | os.PathLike, config: str | os.PathLike, out: str | os.PathLike,
                    kind: str | None = None, sources: list[str] | None = None) -> Path:
    """Convert a lucidrains / MSST RoFormer checkpoint + MSST YAML into an mss checkpoint at ``out``."""
    state = _load_state(checkpoint)
    cfg = model_config(load_msst_yaml(config), state, kind, sources)
    try:
        net = build_model(cfg)
    except Exception as err:  # Hydra wraps the model's ValueError in an InstantiationException
        raise ValueError(f"{config}: cannot build the model it describes: {err}") from err
    try:
        net.load_state_dict(convert_state_dict(state), strict=True)
    except RuntimeError as err:
        raise ValueError(f"{checkpoint}: weights do not fit the model described by {config}: {err}") from err
    return save_checkpoint(out, net, cfg, extra={"imported_from": {"checkpoint": str(checkpoint),
                                                                   "config": str(config)}})


def main(argv: list[str] | None = None) -> Path:
    return run_cli(argv, import_roformer, "mss.pretrained.import_roformer", "bs|mel")


if __name__ == "__main__":
    main()
