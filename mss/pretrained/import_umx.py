"""Import Open-Unmix (``openunmix`` 1.3.0: UMX, UMX-HQ, UMX-L) target state dicts into one mss checkpoint.

Usage::

    python -m mss.pretrained.import_umx vocals=vocals.pth drums=drums.pth bass=bass.pth other=other.pth \\
        out=umxhq.ckpt [n_fft=4096] [hop_length=1024] [sample_rate=44100] [wiener_iterations=1] [residual=false]
    python -m mss.pretrained.import_umx MODEL_DIR out=umxhq.ckpt

``MODEL_DIR`` holds one ``<target>.pth`` (or the released ``<target>-<hash>.pth``) per target and optionally
``separator.json`` (``nfft``, ``nhop``, ``sample_rate``), as written by Open-Unmix's training script. Network sizes
(hidden width, channels, ``max_bin``, LSTM layers and direction) are read from the weights; every target must agree.
The result is one :class:`mss.models.openunmix.OpenUnmix` with Wiener EM at inference (1 iteration, 300-frame
windows, as the released separators).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from mss.checkpoint import build_model, save_checkpoint

__all__ = ["import_umx", "main", "model_config"]

TARGET = "mss.models.openunmix.OpenUnmix"


def _load(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: Open-Unmix state dict not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "fc1.weight" not in state or "fc3.weight" not in state:
        raise ValueError(f"{path}: not an Open-Unmix target state dict (expected keys fc1.weight, fc3.weight, ...)")
    return state


def _sizes(state: Mapping[str, torch.Tensor], n_fft: int, name: str) -> dict:
    n_bins = n_fft // 2 + 1
    rows = state["fc3.weight"].shape[0]
    if rows % n_bins:
        raise ValueError(f"target {name!r}: fc3 has {rows} outputs, not a multiple of n_fft // 2 + 1 = {n_bins} "
                         f"(n_fft={n_fft}); pass the right n_fft=")
    return {
        "audio_channels": rows // n_bins,
        "hidden_size": int(state["fc1.weight"].shape[0]),
        "max_bin": int(state["input_mean"].numel()),
        "nb_layers": len([k for k in state if re.fullmatch(r"lstm\.weight_ih_l\d+", k)]),
        "unidirectional": not any(k.endswith("_reverse") for k in state),
    }


def model_config(states: Mapping[str, Mapping[str, torch.Tensor]], n_fft: int = 4096, hop_length: int = 1024,
                 sample_rate: int = 44100, wiener_iterations: int = 1, wiener_window: int | None = 300,
                 residual: bool = False) -> dict:
    """mss model config (with ``_target_``) for Open-Unmix target state dicts ``{target: state}``."""
    sizes = {name: _sizes(state, n_fft, name) for name, state in states.items()}
    first = next(iter(sizes.values()))
    if any(s != first for s in sizes.values()):
        raise ValueError(f"Open-Unmix targets disagree on their sizes: {sizes}")
    return {"_target_": TARGET, "sources": list(states), "sample_rate": sample_rate, "n_fft": n_fft,
            "hop_length": hop_length, **first, "wiener_iterations": wiener_iterations, "wiener_window": wiener_window,
            "residual": residual}


def import_umx(targets: Mapping[str, str | os.PathLike], out: str | os.PathLike, **options) -> Path:
    """Convert ``{target name: state-dict path}`` into one mss checkpoint at ``out`` (``options``: see
    :func:`model_config`)."""
    if not targets:
        raise ValueError("no Open-Unmix targets given")
    states = {name: _load(Path(path)) for name, path in targets.items()}
    cfg = model_config(states, **options)
    net = build_model(cfg)
    merged = {f"targets.{name}.{k}": v for name, state in states.items() for k, v in state.items()}
    try:
        net.load_state_dict(merged, strict=True)
    except RuntimeError as err:
        raise ValueError(f"Open-Unmix weights do not fit {cfg}: {err}") from err
    return save_checkpoint(out, net, cfg, extra={"imported_from": {k: str(v) for k, v in targets.items()}})


def _from_dir(root: Path) -> tuple[dict[str, Path], dict]:
    files = sorted(root.glob("*.pth"))
    if not files:
        raise FileNotFoundError(f"{root}: no <target>.pth files")
    targets = {re.sub(r"-[0-9a-f]{8}$", "", p.stem): p for p in files}
    options = {}
    sep = root / "separator.json"
    if sep.is_file():
        meta = json.loads(sep.read_text())
        for src, dst in (("nfft", "n_fft"), ("nhop", "hop_length"), ("sample_rate", "sample_rate")):
            if src in meta:
                options[dst] = int(meta[src])
    return targets, options


_INT_OPTIONS = ("n_fft", "hop_length", "sample_rate", "wiener_iterations", "wiener_window")


def main(argv: list[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    targets: dict[str, Path] = {}
    options: dict = {}
    out = None
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            found, opts = _from_dir(Path(arg))
            targets.update(found)
            options = {**opts, **options}
        elif key == "out":
            out = value
        elif key in _INT_OPTIONS:
            options[key] = int(value)
        elif key == "residual":
            options[key] = value.lower() in ("1", "true", "yes")
        else:
            targets[key] = Path(value)
    if not targets or out is None:
        raise SystemExit("usage: python -m mss.pretrained.import_umx (MODEL_DIR | target=path.pth ...) out=model.ckpt "
                         "[n_fft=4096] [hop_length=1024] [sample_rate=44100] [wiener_iterations=1] [residual=false]")
    path = import_umx(targets, out, **options)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
