"""BandIt checkpoints of ZFTurbo's Music-Source-Separation-Training (MSST ``model_type: bandit``, ``models/bandit``
``MultiMaskMultiSourceBandSplitRNNSimple``, arguments under ``model:``; and ``model_type: bandit_v2``,
``models/bandit_v2`` ``Bandit``, arguments under ``kwargs:``) -> :class:`mss.models.bandit.BandIt`.

Two functions for the ``import_msst`` command: :func:`model_config` turns the constructor arguments of either
version into an mss model config (the version is recognised by its argument names: ``in_channel`` / ``band_specs``
for v1, ``in_channels`` / ``band_type`` for v2), and :func:`convert_state_dict` renames either state-dict layout:

* v1: ``bsrnn.band_split.norm_fc_modules.<k>.{norm,fc}``, ``bsrnn.tf_model.seqband.<i>.{norm,rnn,fc}``,
  ``bsrnn.mask_estim.<stem>.norm_mlp.<k>.{norm,hidden.0,output.0}``, buffers
  ``bsrnn.mask_estim.<stem>.freq_weights/<k>`` and ``stft.window`` / ``istft.window``; its STFT options are ignored
  by the reference (its ``_SpectralComponent`` is initialised without arguments: always 2048 / 512, constant
  padding, normalized), so :func:`model_config` uses those and refuses an ``n_fft`` other than 2048;
* v2: no ``bsrnn.`` prefix; ``band_split.norm_fc_modules.<k>.combined.{0,1}`` (LayerNorm, Linear) whose input
  features are ordered ``(bin, re/im)`` (v1 and mss: ``(re/im, bin)``; the LayerNorm and the Linear's input columns
  are permuted, which is exact); ``tf_model.seqband.<2i>`` (odd indices are parameter-free transposes); every mask
  weight twice, under ``norm_mlp.<k>.{norm,hidden.0,output.0}`` and ``norm_mlp.<k>.combined.{0,1.0,2.0}`` (the same
  tensors; checked equal, kept once).

Stems become decoder indices in the order they first appear in the state dict (the reference's ``ModuleDict`` order =
its ``stems`` list = its output order). The frequency-weight buffers and STFT windows are checked and dropped (mss
computes them from the configuration).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mss.models.bandit import RNN_TYPES, musical_bands

__all__ = ["TARGET", "convert_state_dict", "model_config"]

TARGET = "mss.models.bandit.BandIt"
# options that map onto BandIt arguments, with the reference defaults (v1 MultiMaskMultiSourceBandSplitRNNSimple /
# v2 Bandit agree on these except n_bands)
_MAPPED: dict[str, Any] = {
    "n_fft": 2048, "hop_length": 512, "pad_mode": "constant", "normalized": True, "emb_dim": 128, "rnn_dim": 256,
    "n_sqm_modules": 12, "rnn_type": "LSTM", "bidirectional": True, "mlp_dim": 512, "hidden_activation": "Tanh",
    "hidden_activation_kwargs": None, "complex_mask": True, "use_freq_weights": True,
}
# options checked here (must have the value the mss network implements) or without effect on the network
_COMMON = {"stems", "fs", "n_bands", "require_no_overlap", "require_no_gap", "normalize_channel_independently",
           "treat_channel_as_feature", "win_length", "window_fn", "wkwargs", "power", "center", "onesided"}
# v1: cond_dim is not passed to the overlapping (musical) mask estimators, normalize_input is unused by the Simple
# wrapper's forward, freeze_encoder only freezes parameters for training
_V1 = _COMMON | {"in_channel", "band_specs", "cond_dim", "normalize_input", "mult_add_mask", "freeze_encoder"}
# v2: the *_precisions options are stored but unused by its forward
_V2 = _COMMON | {"in_channels", "band_type", "stft_precisions", "bandsplit_precisions", "tf_model_precisions",
                 "mask_estim_precisions"}
_SEGMENT = {"v1": 6.0, "v2": 8.0}  # MSST audio.chunk_size: 264600 at 44.1 kHz, 384000 at 48 kHz
_VOCAL_SPECS = ("dnr:speech", "dnr:vox7", "musdb:vocals", "musdb:vox7")


def _version(section: Mapping[str, Any]) -> str:
    v1 = bool({"in_channel", "band_specs"} & set(section))
    v2 = bool({"in_channels", "band_type"} & set(section))
    if v1 == v2:
        raise ValueError("cannot tell the BandIt version of this MSST section: expected the v1 arguments in_channel "
                         "and band_specs (model_type bandit, 'model:') or the v2 arguments in_channels and band_type "
                         f"(model_type bandit_v2, 'kwargs:'); got keys {sorted(section)}")
    return "v1" if v1 else "v2"


def _check_bands(version: str, section: Mapping[str, Any]) -> None:
    if version == "v2":
        band_type = section.get("band_type", "musical")
        if band_type != "musical":
            raise ValueError(f"BandIt v2 option band_type={band_type!r} is not supported (the reference asserts "
                             "'musical'; mss implements the musical filterbank)")
        return
    specs = section.get("band_specs")
    # the reference's get_band_specs dispatch, in its order
    if not isinstance(specs, str):
        raise ValueError(f"BandIt option band_specs={specs!r} is not supported: only the named 'musical' "
                         "filterbank (explicit band lists are not handled by the reference either)")
    kind = ("vocal (non-overlapping V7)" if specs in _VOCAL_SPECS else "tribark" if "tribark" in specs else
            "bark" if "bark" in specs else "erb" if "erb" in specs else "musical" if "musical" in specs else
            "mel" if "mel" in specs else "unknown")
    if kind != "musical":
        raise ValueError(f"BandIt option band_specs={specs!r} ({kind} bands) is not supported: mss implements the "
                         "'musical' filterbank only")
    if section.get("n_bands") is None:
        raise ValueError("BandIt option n_bands is required with band_specs='musical'")


def model_config(msst_model_section: Mapping[str, Any], sources: Sequence[str], sample_rate: int) -> dict:
    """mss model config (with ``_target_``) for the ``model:`` (v1) or ``kwargs:`` (v2) section of an MSST BandIt
    YAML, separating ``sources`` (MSST ``training.instruments``, in the section's ``stems`` order) at
    ``sample_rate`` (MSST ``audio.sample_rate``).

    Raises:
        ValueError: an option that changes the network in a way mss does not implement, named: other band layouts
            (vocal V7, mel, bark, tribark, erb), ``in_channel(s)`` other than 1, ``normalize_channel_independently``,
            ``treat_channel_as_feature: false`` in v2 (the reference raises), ``mult_add_mask`` (the reference's class
            is missing), a window other than a periodic Hann of ``n_fft``, ``power``, ``center: false``,
            ``onesided: false``, a pad mode other than constant / reflect, unknown options; ``stems`` that do not
            match ``sources`` in number.
    """
    section = dict(msst_model_section)
    version = _version(section)
    sources = [str(s) for s in sources]
    unknown = sorted(set(section) - (_V1 if version == "v1" else _V2) - set(_MAPPED))
    if unknown:
        raise ValueError(f"BandIt {version} option(s) {unknown} are not implemented by {TARGET}")
    _check_bands(version, section)
    stems = section.get("stems")
    if stems is not None and len(stems) != len(sources):
        raise ValueError(f"stems={list(stems)} has {len(stems)} stems but {len(sources)} source names were given: "
                         f"{sources}")
    channel_key = "in_channel" if version == "v1" else "in_channels"
    bad: dict[str, Any] = {}
    n_fft = int(section.get("n_fft", 2048))
    expected = {channel_key: 1, "normalize_channel_independently": False, "mult_add_mask": False}
    if version == "v2":  # v1 ignores its STFT options (see below); with one channel its channel features are moot
        expected.update({"treat_channel_as_feature": True, "power": None, "center": True, "onesided": True,
                         "window_fn": "hann_window", "wkwargs": None})
    for key, value in expected.items():
        if key in section and section[key] != value:
            bad[key] = section[key]
    if version == "v1" and n_fft != 2048:
        bad["n_fft"] = n_fft
    if version == "v2" and section.get("win_length") not in (None, n_fft):
        bad["win_length"] = section["win_length"]
    if version == "v2" and section.get("pad_mode", "constant") not in ("constant", "reflect"):
        bad["pad_mode"] = section["pad_mode"]
    if version == "v2" and section.get("normalized", True) not in (True, False, "window"):
        bad["normalized"] = section["normalized"]
    if section.get("rnn_type", "LSTM") not in RNN_TYPES:
        bad["rnn_type"] = section["rnn_type"]
    if bad:
        raise ValueError(f"BandIt {version} option(s) {bad} are not supported by {TARGET} ({channel_key} must be 1: "
                         "the reference folds the channels into the batch; rnn_type one of GRU / LSTM / RNN; no "
                         "multiplicative-additive mask; v1: n_fft must be 2048, the STFT size its STFT always uses; "
                         "v2: a centred one-sided periodic Hann STFT of n_fft, power None, constant / reflect "
                         "padding, channels as features)")
    n_bands = int(section.get("n_bands", 64))
    fs = section.get("fs", 44100)
    if musical_bands(n_bands, n_fft, float(fs))[0] != musical_bands(n_bands, n_fft, float(sample_rate))[0]:
        raise ValueError(f"BandIt fs={fs} gives another musical band layout than sample_rate={sample_rate}")
    cfg: dict[str, Any] = {"_target_": TARGET, "sources": sources, "audio_channels": 2,
                           "sample_rate": int(sample_rate), "n_bands": n_bands}
    for key, default in _MAPPED.items():
        cfg[key] = section.get(key, default)
    cfg["normalized"] = cfg["normalized"] in (True, "window")
    if version == "v1":
        # the v1 wrapper's _SpectralComponent is initialised through the LightningModule chain without arguments, so
        # its STFT is always torchaudio's 2048 / 512 Hann, constant padding, normalized, whatever the YAML says
        cfg.update(n_fft=2048, hop_length=512, pad_mode="constant", normalized=True)
    cfg["hidden_activation_kwargs"] = dict(cfg["hidden_activation_kwargs"] or {})
    for key in ("n_fft", "hop_length", "emb_dim", "rnn_dim", "n_sqm_modules", "mlp_dim"):
        cfg[key] = int(cfg[key])
    for key in ("bidirectional", "complex_mask", "use_freq_weights"):
        cfg[key] = bool(cfg[key])
    cfg["segment"] = _SEGMENT[version]
    return cfg


_V1_BAND = re.compile(r"bsrnn\.band_split\.norm_fc_modules\.(\d+)\.(norm|fc)\.(weight|bias)")
_V2_BAND = re.compile(r"band_split\.norm_fc_modules\.(\d+)\.combined\.([01])\.(weight|bias)")
_RNN = re.compile(r"(?:bsrnn\.)?tf_model\.seqband\.(\d+)\.(norm\.weight|norm\.bias|fc\.weight|fc\.bias|"
                  r"rnn\.(?:weight|bias)_(?:ih|hh)_l0(?:_reverse)?)")
_MASK = re.compile(r"(?:bsrnn\.)?mask_estim\.([^.]+)\.norm_mlp\.(\d+)\.(norm|hidden\.0|output\.0|combined\.0|"
                   r"combined\.1\.0|combined\.2\.0)\.(weight|bias)")
_WEIGHTS = re.compile(r"(?:bsrnn\.)?mask_estim\.([^.]+)\.freq_weights/(\d+)")
_MASK_NAMES = {"norm": "norm", "hidden.0": "hidden", "output.0": "out", "combined.0": "norm",
               "combined.1.0": "hidden", "combined.2.0": "out"}


def _bin_major_to_reim_major(value: Tensor) -> Tensor:
    """v2 band-split features ``(bin, re/im)`` -> ``(re/im, bin)`` along the last axis (LayerNorm / Linear input)."""
    width = value.shape[-1] // 2
    return value.unflatten(-1, (width, 2)).transpose(-1, -2).flatten(-2).contiguous()


def convert_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """MSST ``bandit`` (v1) or ``bandit_v2`` state dict -> :class:`mss.models.bandit.BandIt` keys.

    The layout is recognised by the ``bsrnn.`` prefix (v1). ``torch.compile`` wrappers (``_orig_mod.``) and a
    ``module.`` prefix are dropped. Raises ``ValueError`` naming a key that belongs to neither layout (e.g. the
    ``parallel_mode`` pairs or the multiplicative-additive mask's ``output2``), an odd v2 RNN index, duplicated v2
    mask weights that differ, or an STFT window that is not a periodic Hann.
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    state = {re.sub(r"(^|\.)_orig_mod\.", r"\1", k): v for k, v in state.items()}
    v1 = any(k.startswith("bsrnn.") for k in state)
    stems: dict[str, int] = {}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        new = None
        if key in ("stft.window", "istft.window"):
            hann = torch.hann_window(value.numel(), dtype=torch.float64)
            if value.dim() != 1 or not torch.allclose(value.double(), hann, atol=1e-6):
                raise ValueError(f"{key}: not a periodic Hann window; mss's BandIt implements only hann_window")
            continue
        if v1 and (m := _V1_BAND.fullmatch(key)):
            new = f"band_split.{m[1]}.{m[2]}.{m[3]}"
        elif not v1 and (m := _V2_BAND.fullmatch(key)):
            new = f"band_split.{m[1]}.{'norm' if m[2] == '0' else 'fc'}.{m[3]}"
            if m[2] == "0" or m[3] == "weight":
                value = _bin_major_to_reim_major(value)
        elif (m := _RNN.fullmatch(key)) and key.startswith("bsrnn.") == v1:
            index = int(m[1])
            if not v1:
                if index % 2:
                    raise ValueError(f"{key}: BandIt v2 RNNs sit at even seqband indices (odd ones are transposes)")
                index //= 2
            new = f"rnns.{index}.{m[2]}"
        elif (m := _MASK.fullmatch(key)) and key.startswith("bsrnn.") == v1 and (not v1 or "combined" not in m[3]):
            stem = stems.setdefault(m[1], len(stems))
            new = f"decoders.{stem}.{m[2]}.{_MASK_NAMES[m[3]]}.{m[4]}"
        elif (m := _WEIGHTS.fullmatch(key)) and key.startswith("bsrnn.") == v1:
            stems.setdefault(m[1], len(stems))
            continue
        if new is None:
            raise ValueError(f"unexpected key {key!r}: not an MSST BandIt {'v1' if v1 else 'v2'} state dict of the "
                             f"supported network (musical bands, sequential time/band RNNs, complex or real masks)")
        if new in out:
            if out[new].shape != value.shape or not torch.equal(out[new], value):
                raise ValueError(f"{key}: differs from the other copy of the same v2 mask weight ({new})")
            continue
        out[new] = value
    return out
