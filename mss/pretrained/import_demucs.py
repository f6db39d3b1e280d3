"""Convert reference Demucs checkpoints (``.th``) and bags (``.yaml``) into mss checkpoints.

    python -m mss.pretrained.import_demucs path/to/955717e8-8726e21a.th out=htdemucs.ckpt
    python -m mss.pretrained.import_demucs path/to/htdemucs_ft.yaml out=htdemucs_ft.ckpt

A reference ``.th`` file is a torch pickle of ``{"klass": <class>, "args": (...), "kwargs": {...}, "state": {...},
["training_args": ...]}``. It is read **without the demucs package**: the class references are resolved to small
stand-in classes by torch's restricted (``weights_only``) unpickler, so nothing from the file is executed. The class is
mapped to the mss network (:data:`CLASSES`), the constructor arguments become the mss model config (same keyword
names; ``Fraction`` segments become floats; keywords our class does not know are dropped with a warning, as the
reference loader does) and the state dict is loaded 1:1 (fp16 exports are cast to fp32).

Demucs v2's Conv-TasNet (``demucs.tasnet.ConvTasNet``) imports the same way from a training package. The released
``tasnet`` / ``tasnet_extra`` files (``tasnet-beb46fac.th``, ``tasnet_extra-df3777b2.th``) are **plain state dicts**
(the reference rebuilds ``ConvTasNet(X=10, sources=[drums, bass, other, vocals])`` in code): a file whose keys are
Conv-TasNet's (``encoder.conv1d_U.weight``, ``decoder.basis_signals.weight``, ...) is recognised and its constructor
arguments are read off the parameter shapes (:func:`tasnet_kwargs`; ``sources=a,b,...`` names the stems of a
non-4-stem file; gLN is assumed, as cLN has the same keys).

    python -m mss.pretrained.import_demucs tasnet-beb46fac.th out=tasnet.ckpt

A bag ``.yaml`` (``models: [signature, ...]``, optional ``weights`` ``(models, sources)`` and ``segment``) is resolved
against the ``.th`` files beside it (``<signature>.th`` or ``<signature>-<checksum>.th``, as the reference's local
repository) and becomes one :class:`mss.inference.bag.BagOfModels` checkpoint; ``segment`` overrides the members'
segment as in the reference.

The written checkpoint is an ordinary mss checkpoint (``mss.load_model``, ``mss.evaluate ckpt=...``,
``mss.separate``). DiffQ-quantized exports (``mdx_q``, ``mdx_extra_q``) are refused with a clear error.
"""

from __future__ import annotations

import argparse
import fractions
import inspect
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mss.checkpoint import build_model, save_checkpoint

log = logging.getLogger("mss.import_demucs")

__all__ = ["CLASSES", "DemucsImportError", "import_bag", "import_model", "main", "read_package", "tasnet_kwargs"]

# reference class path -> mss class path
CLASSES: dict[str, str] = {
    "demucs.htdemucs.HTDemucs": "mss.models.htdemucs.HTDemucs",
    "demucs.hdemucs.HDemucs": "mss.models.hdemucs.HDemucs",
    "demucs.demucs.Demucs": "mss.models.demucs.Demucs",
    "demucs.model.Demucs": "mss.models.demucs.DemucsV2",
    "demucs.tasnet.ConvTasNet": "mss.models.conv_tasnet.ConvTasNet",
}
TASNET = "demucs.tasnet.ConvTasNet"
# stems of the released Conv-TasNet state dicts (demucs v2 pretrained.SOURCES)
TASNET_SOURCES = ["drums", "bass", "other", "vocals"]
TASNET_KEYS = ("encoder.conv1d_U.weight", "separator.network.1.weight", "separator.network.3.weight",
               "decoder.basis_signals.weight")
BAG_TARGET = "mss.inference.bag.BagOfModels"


class DemucsImportError(ValueError):
    """A file cannot be converted (unknown class, unsupported format, missing bag member)."""


def _stand_in(path: str) -> type:
    module, name = path.rsplit(".", 1)
    return type(name, (), {"__module__": module, "__qualname__": name, "reference_path": path})


_STAND_INS = {path: _stand_in(path) for path in CLASSES}


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def tasnet_kwargs(state: dict, sources: list[str] | None = None, source: str = "state dict") -> dict:
    """Constructor arguments of Demucs v2's ``ConvTasNet`` read off a plain state dict's shapes (N, L, audio channels,
    B, H, P, X, R, the stem count; causal from the chomp's index shift; BN / id / gLN norms from the keys, gLN for
    ``gamma``/``beta``, which cLN shares). ``sources`` defaults to the released order for 4 stems."""
    missing = [k for k in TASNET_KEYS if k not in state]
    if missing:
        raise DemucsImportError(f"{source}: not a Demucs v2 Conv-TasNet state dict (missing {missing})")
    n_filters, channels, length = state["encoder.conv1d_U.weight"].shape
    bottleneck = state["separator.network.1.weight"].shape[0]
    blocks = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("separator.network.2.") and parts[5:] == ["net", "0", "weight"]:
            blocks[int(parts[3]), int(parts[4])] = value
    if not blocks:
        raise DemucsImportError(f"{source}: no temporal blocks (separator.network.2.<r>.<x>.net.0.weight)")
    repeats, per_repeat = max(r for r, _ in blocks) + 1, max(x for _, x in blocks) + 1
    if len(blocks) != repeats * per_repeat:
        raise DemucsImportError(f"{source}: temporal blocks {sorted(blocks)} do not form R x X repeats")
    first = "separator.network.2.0.0.net"
    causal = f"{first}.3.net.4.weight" in state  # the parameter-free chomp shifts the indices by one
    if f"{first}.2.running_mean" in state:
        norm_type = "BN"
    elif f"{first}.2.gamma" in state:
        norm_type = "gLN"
    else:
        norm_type = "id"
    masks = state["separator.network.3.weight"].shape[0]
    if masks % n_filters:
        raise DemucsImportError(f"{source}: mask convolution rows {masks} are not a multiple of N={n_filters}")
    n_sources = masks // n_filters
    if sources is None:
        if n_sources != len(TASNET_SOURCES):
            raise DemucsImportError(f"{source}: the state dict separates {n_sources} sources; name them with "
                                    f"sources=a,b,... (the default {TASNET_SOURCES} is for 4)")
        sources = list(TASNET_SOURCES)
    if len(sources) != n_sources:
        raise DemucsImportError(f"{source}: sources={list(sources)} names {len(sources)} stems but the state dict "
                                f"separates {n_sources}")
    return dict(sources=list(sources), N=int(n_filters), L=int(length), B=int(bottleneck),
                H=int(blocks[0, 0].shape[0]), P=int(state[f"{first}.3.net.0.weight"].shape[-1]), X=per_repeat,
                R=repeats, audio_channels=int(channels), norm_type=norm_type, causal=causal)


def read_package(path: str | os.PathLike, sources: list[str] | None = None) -> dict:
    """The raw reference package ``{"klass": <stand-in>, "args", "kwargs", "state", ...}`` of a ``.th`` file; a plain
    Conv-TasNet state dict (the released ``tasnet`` files) becomes such a package with :func:`tasnet_kwargs`
    (``sources``: its stems, default the released four)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DemucsImportError(f"{path}: file not found")
    allowed = [(cls, ref) for ref, cls in _STAND_INS.items()] + [fractions.Fraction, argparse.Namespace]
    try:
        with torch.serialization.safe_globals(allowed):
            package = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise DemucsImportError(
            f"{path}: cannot read it as a reference Demucs checkpoint ({err}). Known model classes: "
            f"{', '.join(CLASSES)}") from err
    if _is_state_dict(package) and "klass" not in package:
        if not all(k in package for k in TASNET_KEYS):
            raise DemucsImportError(
                f"{path}: a plain state dict ({len(package)} tensors, e.g. {sorted(package)[:3]}) but not a Demucs v2 "
                f"Conv-TasNet one (keys {list(TASNET_KEYS)}); other models need the reference package "
                "{klass, args, kwargs, state}")
        return {"klass": _STAND_INS[TASNET], "args": (), "kwargs": tasnet_kwargs(package, sources, str(path)),
                "state": package}
    if not isinstance(package, dict) or not {"klass", "kwargs", "state"} <= set(package):
        keys = sorted(package) if isinstance(package, dict) else type(package).__name__
        raise DemucsImportError(f"{path}: not a reference Demucs package; expected a dict with 'klass', 'args', "
                                f"'kwargs', 'state' (or a plain Demucs v2 Conv-TasNet state dict), got {keys}")
    klass = package["klass"]
    if getattr(klass, "reference_path", None) not in CLASSES:
        raise DemucsImportError(f"{path}: unknown model class {klass!r}; known: {', '.join(CLASSES)}")
    if package["state"].get("__quantized"):
        raise DemucsImportError(f"{path}: the weights are DiffQ-quantized (a '_q' export); mss imports only "
                                "unquantized (fp32/fp16) exports, e.g. mdx / mdx_extra instead of mdx_q / mdx_extra_q")
    return package


def _plain(value: Any) -> Any:
    """Checkpoint kwargs as YAML-friendly values (Fraction -> float, tuples -> lists)."""
    if isinstance(value, fractions.Fraction):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _locate(target: str) -> type:
    from hydra.utils import get_class

    return get_class(target)


# reference HTDemucs arguments read only by its solver (the transformer's optimiser group): mss takes them from the
# LightningModule's `param_groups` instead
OPTIMISER_OPTIONS = ("t_weight_decay", "t_lr")


def model_config(package: dict, source: str = "checkpoint") -> dict:
    """mss model config (``_target_`` + keyword arguments) of a reference package."""
    target = CLASSES[package["klass"].reference_path]
    params = inspect.signature(_locate(target)).parameters
    names = [n for n in params if n != "self"]
    kwargs = dict(zip(names, package.get("args") or ()))
    kwargs.update(package["kwargs"])
    for key in [k for k in OPTIMISER_OPTIONS if k in kwargs]:
        log.info("%s: %s=%r is an optimiser setting, not part of the network: give it with module.param_groups "
                 "(experiment=finetune sets the transformer's weight decay)", source, key, kwargs.pop(key))
    for key in [k for k in kwargs if k not in params]:
        warnings.warn(f"{source}: dropping constructor argument {key}={kwargs[key]!r} unknown to {target}",
                      stacklevel=2)
        del kwargs[key]
    if "sources" not in kwargs:
        raise DemucsImportError(f"{source}: the checkpoint arguments name no 'sources'")
    return {"_target_": target, **_plain(kwargs)}


def _load_weights(net: nn.Module, state: dict, source: str) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise DemucsImportError(f"{source}: weights do not fit {type(net).__name__} (missing {missing[:5]}, "
                                f"unexpected {unexpected[:5]}, shape mismatch {wrong[:5]})")
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def import_model(path: str | os.PathLike, segment: float | None = None,
                 sources: list[str] | None = None) -> tuple[nn.Module, dict]:
    """Network (eval mode, weights loaded) and mss model config of a reference ``.th`` file (``sources``: stems of a
    plain Conv-TasNet state dict with other than the released four)."""
    package = read_package(path, sources)
    config = model_config(package, str(path))
    if segment is not None:
        if "segment_length" in inspect.signature(_locate(config["_target_"])).parameters:  # ConvTasNet: samples
            config["segment_length"] = round(float(segment) * config.get("samplerate", 44100))
        else:
            config["segment"] = float(segment)
    net = build_model(config)
    _load_weights(net, package["state"], str(path))
    return net.eval(), config


def _member_file(folder: Path, signature: str, bag: Path) -> Path:
    exact = folder / f"{signature}.th"
    if exact.is_file():
        return exact
    found = sorted(folder.glob(f"{signature}-*.th"))
    if len(found) != 1:
        what = "no" if not found else "several"
        raise DemucsImportError(f"{bag}: {what} file for model {signature!r} in {folder} (expected "
                                f"{signature}.th or {signature}-<checksum>.th)")
    return found[0]


def import_bag(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Bag (:class:`~mss.inference.bag.BagOfModels`, eval mode) and its mss config from a reference bag ``.yaml``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DemucsImportError(f"{path}: file not found")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DemucsImportError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(spec, dict) or not isinstance(spec.get("models"), list) or not spec["models"]:
        raise DemucsImportError(f"{path}: a bag needs a non-empty 'models' list of signatures")
    members = [import_model(_member_file(path.parent, str(sig), path), segment=spec.get("segment"))
               for sig in spec["models"]]
    weights = spec.get("weights")
    config = {"_target_": BAG_TARGET, "models": [cfg for _, cfg in members],
              "weights": None if weights is None else [[float(w) for w in row] for row in weights]}
    from mss.inference.bag import BagOfModels

    bag = BagOfModels([net for net, _ in members], weights=config["weights"])
    return bag.eval(), config


def convert(path: str | os.PathLike, out: str | os.PathLike, sources: list[str] | None = None) -> Path:
    """Convert a ``.th`` model or a ``.yaml`` bag into the mss checkpoint ``out`` (``sources``: see
    :func:`import_model`)."""
    path = Path(path).expanduser()
    if path.suffix in (".yaml", ".yml"):
        net, config = import_bag(path)
    elif path.suffix == ".th":
        net, config = import_model(path, sources=sources)
    else:
        raise DemucsImportError(f"{path}: expected a reference model (.th) or bag (.yaml)")
    return save_checkpoint(out, net, config, extra={"imported_from": str(path)})


def main(argv: list[str] | None = None) -> Path:
    """CLI: ``python -m mss.pretrained.import_demucs FILE [out=OUT.ckpt] [sources=a,b,...]`` (default ``out``: FILE
    with ``.ckpt``; ``sources``: stems of a plain Conv-TasNet state dict)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options = dict(a.split("=", 1) for a in argv if "=" in a)
    paths = [a for a in argv if "=" not in a]
    unknown = set(options) - {"out", "sources"}
    if len(paths) != 1 or unknown:
        raise SystemExit("usage: python -m mss.pretrained.import_demucs FILE.th|BAG.yaml [out=OUT.ckpt] "
                         "[sources=a,b,...]"
                         + (f" (unknown options: {sorted(unknown)})" if unknown else ""))
    src = Path(paths[0])
    out = Path(options.get("out", src.with_suffix(".ckpt")))
    sources = options["sources"].split(",") if "sources" in options else None
    written = convert(src, out, sources=sources)
    print(f"wrote {written}")
    return written


if __name__ == "__main__":
    try:
        main()
    except DemucsImportError as err:
        raise SystemExit(f"error: {err}") from None
