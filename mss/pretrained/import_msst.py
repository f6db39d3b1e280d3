"""Import checkpoints trained with ZFTurbo's Music-Source-Separation-Training (MSST) into mss checkpoints.

Usage::

    python -m mss.pretrained.import_msst model.ckpt config=config.yaml out=mss_model.ckpt [type=MODEL_TYPE]
        [sources=vocals,other]

``model.ckpt`` is what MSST saves (``torch.save(model.state_dict())``, optionally wrapped in ``{"state_dict": ...}``
and with a ``module.`` prefix); ``config.yaml`` is the training YAML it was trained with. ``type`` is MSST's
``--model_type``; it may be left out for configs that name their model (``model: htdemucs``; BandIt's
``name: MultiMaskMultiSourceBandSplitRNN`` -> ``bandit``, ``cls: Bandit`` -> ``bandit_v2``, whose arguments sit under
``kwargs:``). The result loads with
:func:`mss.load_model`, evaluates with ``python -m mss.evaluate ckpt=mss_model.ckpt``, separates and fine-tunes.

Supported model types: :data:`MODEL_TYPES` (RoFormers through :mod:`mss.pretrained.import_roformer`, HT Demucs here,
the other families through their ``mss.pretrained.msst_<family>`` modules, each providing ``model_config(section,
sources, sample_rate)`` and ``convert_state_dict(state)``). An MSST option mss does not implement is refused by name.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mss.checkpoint import build_model, save_checkpoint

__all__ = ["MODEL_TYPES", "import_msst", "load_msst_yaml", "main", "msst_sources", "read_state_dict", "run_cli"]

# MSST --model_type -> the module converting it (None: this module)
MODEL_TYPES: dict[str, str | None] = {
    "bs_roformer": "mss.pretrained.import_roformer",
    "mel_band_roformer": "mss.pretrained.import_roformer",
    "htdemucs": None,
    "scnet": "mss.pretrained.msst_scnet",
    "mdx23c": "mss.pretrained.msst_mdx23c",
    "bandit": "mss.pretrained.msst_bandit",
    "bandit_v2": "mss.pretrained.msst_bandit",
}
# converters whose model_config reads the whole YAML (model:, audio:, training:) rather than the model section
_WHOLE_YAML = {"mdx23c"}
# converters whose constructor arguments sit under another key than model: (MSST bandit_v2 builds Bandit(**kwargs))
_SECTION_KEY = {"bandit_v2": "kwargs"}
# YAMLs that name their model elsewhere than model: <type>: (top-level key, value) -> model type
_NAMED_BY = {("name", "MultiMaskMultiSourceBandSplitRNN"): "bandit", ("cls", "Bandit"): "bandit_v2"}
HTDEMUCS_TARGET = "mss.models.htdemucs.HTDemucs"
# MSST HTDemucs options that change the network beyond the reference HT Demucs: refused unless at these values
_HTDEMUCS_UNSUPPORTED = {"num_subbands": 1}


def load_msst_yaml(path: str | os.PathLike) -> dict:
    """Read an MSST YAML (accepts the ``!!python/tuple`` tags these files use)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("tag:yaml.org,2002:python/tuple", lambda loader, node: list(loader.construct_sequence(node)))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MSST config not found")
    with open(path) as f:
        cfg = yaml.load(f, Loader=Loader)
    if not isinstance(cfg, dict) or not ("model" in cfg or "kwargs" in cfg):
        raise ValueError(f"{path}: expected an MSST YAML with a 'model:' section (or 'model: <type>', or the "
                         "'kwargs:' of bandit_v2)")
    return cfg


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of an MSST (or lucidrains) checkpoint file: unwrapped from ``state_dict`` / ``state`` / ``model``
    and stripped of a ``module.`` / ``model.`` prefix common to every key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "state", "model", "best_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def msst_sources(msst: Mapping[str, Any], n_stems: int | None = None, sources: list[str] | None = None) -> list[str]:
    """The stems a model of this YAML outputs: ``sources`` if given, else ``training.target_instrument`` (one
    stem) or ``training.instruments``; checked against ``n_stems`` when the model says how many it has."""
    training = msst.get("training") or {}
    if sources is None:
        target, instruments = training.get("target_instrument"), list(training.get("instruments") or [])
        sources = [target] if target else instruments
    if not sources or (n_stems is not None and len(sources) != n_stems):
        raise ValueError(f"cannot name the {n_stems or 'model'}'s stems from training.instruments="
                         f"{training.get('instruments')} and training.target_instrument="
                         f"{training.get('target_instrument')}; pass sources=a,b,...")
    return list(sources)


def _htdemucs_config(msst: Mapping[str, Any], sources: list[str] | None) -> dict:
    """mss config of an MSST ``htdemucs`` YAML: the ``htdemucs:`` section holds the reference keyword arguments,
    ``training`` the audio constants and segment (MSST's default ``use_train_segment=False`` is kept)."""
    from mss.pretrained.import_demucs import OPTIMISER_OPTIONS

    section = dict(msst.get("htdemucs") or {})
    bad = {k: section[k] for k, ok in _HTDEMUCS_UNSUPPORTED.items() if section.get(k, ok) != ok}
    if bad:
        raise ValueError(f"htdemucs options {bad} are not supported by mss's HTDemucs")
    for key in (*_HTDEMUCS_UNSUPPORTED, *OPTIMISER_OPTIONS):
        section.pop(key, None)
    training = msst.get("training") or {}
    return {"_target_": HTDEMUCS_TARGET, "sources": msst_sources(msst, None, sources),
            "audio_channels": int(training.get("channels", 2)), "samplerate": int(training.get("samplerate", 44100)),
            "segment": float(training.get("segment", 11)), "use_train_segment": False,
            **{k: v for k, v in section.items() if v is not None or k == "channels_time"}}


def _model_type(msst: Mapping[str, Any], given: str | None, config: str | os.PathLike) -> str:
    model_type = given or (msst["model"] if isinstance(msst.get("model"), str) else None)
    if model_type is None:
        model_type = next((t for (key, value), t in _NAMED_BY.items() if msst.get(key) == value), None)
    if model_type is None:
        raise ValueError(f"{config}: the YAML does not name its model; pass type= (MSST's --model_type), one of "
                         f"{sorted(MODEL_TYPES)}")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{config}: MSST model type {model_type!r} is not supported; supported: "
                         f"{sorted(MODEL_TYPES)}")
    return model_type


def import_msst(checkpoint: str | os.PathLike, config: str | os.PathLike, out: str | os.PathLike,
                model_type: str | None = None, sources: list[str] | None = None) -> Path:
    """Convert an MSST checkpoint + its training YAML into an mss checkpoint at ``out``."""
    msst = load_msst_yaml(config)
    model_type = _model_type(msst, model_type, config)
    module = MODEL_TYPES[model_type]
    if module == "mss.pretrained.import_roformer":
        from mss.pretrained.import_roformer import import_roformer

        return import_roformer(checkpoint, config, out, "mel" if model_type.startswith("mel") else "bs", sources)
    state = read_state_dict(checkpoint)
    if module is None:
        cfg = _htdemucs_config(msst, sources)
    else:
        family = importlib.import_module(module)
        audio, training = msst.get("audio") or {}, msst.get("training") or {}
        rate = int(audio.get("sample_rate") or training.get("samplerate") or 44100)
        if model_type in _SECTION_KEY:
            section = msst.get(_SECTION_KEY[model_type])
        else:
            section = msst["model"] if isinstance(msst.get("model"), dict) else msst.get(model_type)
        given = msst if model_type in _WHOLE_YAML else dict(section or {})
        cfg = family.model_config(given, msst_sources(msst, None, sources), rate)
        state = family.convert_state_dict(state)
    try:
        net = build_model(cfg)
    except Exception as err:  # Hydra wraps the model's ValueError in an InstantiationException
        raise ValueError(f"{config}: cannot build the {model_type} model it describes: {err}") from err
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{checkpoint}: weights do not fit the {model_type} model described by {config}: "
                         f"{err}") from err
    return save_checkpoint(out, net, cfg, extra={"imported_from": {"checkpoint": str(checkpoint),
                                                                   "config": str(config), "model_type": model_type}})


def run_cli(argv: list[str] | None, convert, command: str, type_help: str) -> Path:
    """The command line of the MSST importers: ``model.ckpt config=... out=... [type=...] [sources=a,b]``, handed to
    ``convert(checkpoint, config, out, type, sources)``."""
    positional, options = [], {}
    for arg in list(sys.argv[1:] if argv is None else argv):
        key, sep, value = arg.partition("=")
        if sep and key in ("config", "out", "type", "sources"):
            options[key] = value
        elif sep:
            raise SystemExit(f"unknown option {key!r}; expected config=, out=, type=, sources=")
        else:
            positional.append(arg)
    if len(positional) != 1 or "config" not in options or "out" not in options:
        raise SystemExit(f"usage: python -m {command} model.ckpt config=config.yaml out=mss_model.ckpt "
                         f"[type={type_help}] [sources=a,b]")
    sources = options["sources"].split(",") if options.get("sources") else None
    path = convert(positional[0], options["config"], options["out"], options.get("type"), sources)
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> Path:
    return run_cli(argv, import_msst, "mss.pretrained.import_msst", "|".join(sorted(MODEL_TYPES)))


if __name__ == "__main__":
    main()
