"""Export a checkpoint to ONNX: ``python -m mss.export ckpt=PATH|NAME format=onnx out=model.onnx [opset=N]
[atol=1e-4]``.

The network is exported with a dynamic batch and its own segment length (:mod:`mss.inference.export`), the separator
attributes stored in the ONNX metadata, and checked against PyTorch with onnxruntime before the file is written.
``python -m mss.separate ckpt=model.onnx input=...`` then separates with onnxruntime. Families whose ops do not
export (the STFT-based ones, see docs/workflow.md) are refused with the family and the exporter's reason.
Needs ``pip install 'mss[onnx]'``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import MISSING

from mss.checkpoint import CheckpointError, load_model
from mss.inference.export import ExportError, export_onnx
from mss.pretrained.registry import resolve_checkpoint

__all__ = ["ExportConfig", "main"]

FORMATS = ("onnx",)


@dataclass
class ExportConfig:
    """Command-line schema of ``python -m mss.export``."""

    ckpt: str = MISSING
    out: str = MISSING
    format: str = "onnx"
    opset: int | None = None
    atol: float = 1e-4


def main(argv: Sequence[str] | None = None) -> int:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip())
        return 0
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(ExportConfig), OmegaConf.from_cli(args))
        if OmegaConf.is_missing(cfg, "ckpt") or OmegaConf.is_missing(cfg, "out"):
            raise ValueError("ckpt=PATH (or a published model name) and out=model.onnx are required")
        if cfg.format not in FORMATS:
            raise ValueError(f"format={cfg.format!r}: expected one of {', '.join(FORMATS)}")
        net = load_model(resolve_checkpoint(cfg.ckpt), map_location="cpu")
        meta = export_onnx(net, cfg.out, opset=cfg.opset, atol=float(cfg.atol))
    except (ValueError, CheckpointError, ExportError, FileNotFoundError, OmegaConfBaseException) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"wrote {cfg.out}: {meta['family']}, sources {meta['sources']}, {meta['audio_channels']} channels, "
          f"{meta['sample_rate']} Hz, chunks of {meta['segment_length']} samples; onnxruntime vs PyTorch max abs "
          f"diff {meta['max_abs_diff']:.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
