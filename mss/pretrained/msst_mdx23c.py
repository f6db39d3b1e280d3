"""MSST ``mdx23c`` (TFC-TDF-U-Net v3, ZFTurbo Music-Source-Separation-Training ``models/mdx23c_tfc_tdf_v3.py``)
checkpoints -> :class:`mss.models.tfc_tdf.MDX23C`.

Two functions for the ``import_msst`` command: :func:`model_config` turns an MSST YAML (as read by
:func:`mss.pretrained.import_roformer.load_msst_yaml`; the network sizes are under ``model:``, the STFT sizes
``n_fft``, ``hop_length``, ``dim_f``, ``num_channels`` and ``chunk_size`` under ``audio:``) into an mss model config,
and :func:`convert_state_dict` maps the reference weights (the mss parameter names are the reference's, so this
unwraps and checks rather than renames).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["TARGET", "convert_state_dict", "model_config"]

TARGET = "mss.models.tfc_tdf.MDX23C"
_MODEL_KEYS = ("act", "bottleneck_factor", "growth", "norm", "num_blocks_per_scale", "num_channels", "num_scales",
               "num_subbands", "scale")
# audio options the network does not depend on (data loading / inference settings of MSST)
_AUDIO_IGNORED = ("dim_t", "min_mean_abs", "sample_rate")
_AUDIO_KEYS = ("n_fft", "hop_length", "dim_f", "num_channels", "chunk_size")
_NORMS = ("InstanceNorm", "BatchNorm")


def _sources(msst: Mapping[str, Any]) -> list[str] | None:
    training = msst.get("training") or {}
    if training.get("target_instrument"):
        return [str(training["target_instrument"])]
    instruments = training.get("instruments")
    return [str(s) for s in instruments] if instruments else None


def model_config(msst: Mapping[str, Any], sources: Sequence[str], sample_rate: int) -> dict:
    """mss model config (with ``_target_``) for an MSST ``mdx23c`` YAML ``msst`` (the whole file: ``model:``,
    ``audio:``, optional ``training:``), separating ``sources`` at ``sample_rate``.

    Raises ``ValueError`` naming the option for what mss does not implement: unknown ``model.*`` / ``audio.*``
    options, a norm other than ``InstanceNorm`` / ``BatchNorm`` / ``GroupNorm<g>`` / ``none`` (MSST silently turns
    any other string into no normalisation), an activation other than ``gelu`` / ``relu`` / ``elu<alpha>``, and
    ``sources`` that disagree in number with MSST's ``training.target_instrument`` / ``instruments``.
    """
    model, audio = dict(msst.get("model") or {}), dict(msst.get("audio") or {})
    if not model:
        raise ValueError("MSST config has no 'model:' section")
    unknown = sorted(set(model) - set(_MODEL_KEYS))
    if unknown:
        raise ValueError(f"MSST mdx23c option(s) model.{', model.'.join(unknown)} not supported by mss MDX23C")
    unknown = sorted(set(audio) - set(_AUDIO_KEYS) - set(_AUDIO_IGNORED))
    if unknown:
        raise ValueError(f"MSST mdx23c option(s) audio.{', audio.'.join(unknown)} not supported by mss MDX23C")
    missing = [f"model.{k}" for k in _MODEL_KEYS if k not in model] + [
        f"audio.{k}" for k in ("n_fft", "hop_length", "dim_f") if k not in audio]
    if missing:
        raise ValueError(f"MSST mdx23c config lacks {', '.join(missing)} (the reference has no defaults)")
    norm = str(model["norm"])
    if norm not in _NORMS and not (norm.startswith("GroupNorm") and norm[9:].isdigit()) and norm.lower() != "none":
        raise ValueError(f"MSST mdx23c option model.norm={norm!r} not supported (InstanceNorm, BatchNorm, "
                         "GroupNorm<g>, none)")
    act = str(model["act"])
    if act not in ("gelu", "relu") and not act.startswith("elu"):
        raise ValueError(f"MSST mdx23c option model.act={act!r} not supported (gelu, relu, elu<alpha>)")
    sources = list(sources)
    named = _sources(msst)
    if named is not None and len(named) != len(sources):
        raise ValueError(f"{len(sources)} source names {sources} for an MSST model of {len(named)} target(s) "
                         f"{named} (training.target_instrument / training.instruments)")
    scale = [int(s) for s in model["scale"]]
    return {
        "_target_": TARGET,
        "sources": sources,
        "audio_channels": int(audio.get("num_channels", 2)),
        "sample_rate": int(sample_rate),
        "n_fft": int(audio["n_fft"]),
        "hop_length": int(audio["hop_length"]),
        "dim_f": int(audio["dim_f"]),
        "num_subbands": int(model["num_subbands"]),
        "num_scales": int(model["num_scales"]),
        "scale": scale,
        "num_blocks_per_scale": int(model["num_blocks_per_scale"]),
        "num_channels": int(model["num_channels"]),
        "growth": int(model["growth"]),
        "bottleneck_factor": int(model["bottleneck_factor"]),
        "norm": "none" if norm.lower() == "none" else norm,
        "act": act,
        "segment_length": int(audio.get("chunk_size", 261_120)),
    }


def convert_state_dict(state: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """MSST ``TFC_TDF_net`` state dict -> :class:`~mss.models.tfc_tdf.MDX23C` state dict.

    Accepts the bare state dict or one wrapped under ``state``, ``state_dict`` or ``model_state_dict`` (MSST's
    loader), with an optional ``module.`` / ``model.`` prefix on every key. The keys are the reference's; anything
    that is not an MDX23C weight is refused by name.
    """
    for key in ("model_state_dict", "state_dict", "state"):
        if isinstance(state.get(key), Mapping):
            state = state[key]
            break
    state = dict(state)
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if "first_conv.weight" not in state or not any(k.startswith("encoder_blocks.") for k in state):
        raise ValueError("not an MSST mdx23c state dict (no first_conv.weight / encoder_blocks.*)")
    roots = ("first_conv.", "encoder_blocks.", "bottleneck_block.", "decoder_blocks.", "final_conv.")
    bad = [k for k in state if not k.startswith(roots)]
    if bad:
        raise ValueError(f"unexpected key(s) in an MSST mdx23c state dict: {bad[:5]}")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"non-tensor value(s) in an MSST mdx23c state dict: {not_tensors[:5]}")
    return state
