"""Export a checkpoint to ONNX: ``python -m mss.export ckpt=PATH|NAME format=onnx out=model.onnx [opset=N]
[atol=1e-4] [wiener_iterations=0] [dft=fft|conv]``.

The network is exported with a dynamic batch and its own segment length (:mod:`mss.inference.export`), the separator
attributes stored in the ONNX metadata, and checked against PyTorch with onnxruntime before the file is written.
``python -m mss.separate ckpt=model.onnx input=...`` then separates with onnxruntime. The STFT families export with a
real-valued STFT (``dft=fft``, the default: ONNX ``DFT`` ops, FFTs in onnxruntime; ``dft=conv``: convolutions with
DFT kernels, no complex op; :func:`mss.audio.spectral.real_valued`); what still does not export (the complex Wiener
filters: ``wiener_iterations=0`` turns them off for U-Net, Open-Unmix, MMDenseNet and D3Net checkpoints; see
docs/workflow.md) is refused with the family and the reason.
Needs ``pip install 'mss[onnx]'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import MISSING

from mss.checkpoint import CheckpointError, load_model
from mss.inference.export import ExportError, export_onnx
from mss.pretrained.registry import resolve_checkpoint
from mss.utils import run_structured_cli

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
    # the network's Wiener EM iterations for the export (0: mixture phase; the Wiener filters are complex and do not
    # export): U-Net, Open-Unmix, MMDenseNet, D3Net
    wiener_iterations: int | None = None
    dft: str = "fft"  # how the STFT / iSTFT are exported: fft (ONNX DFT) or conv (DFT-kernel convolutions)


def main(argv: Sequence[str] | None = None) -> int:
    def action(opts: dict) -> str:
        if opts["format"] not in FORMATS:
            raise ValueError(f"format={opts['format']!r}: expected one of {', '.join(FORMATS)}")
        net = load_model(resolve_checkpoint(opts["ckpt"]), map_location="cpu")
        if opts["wiener_iterations"] is not None:
            if not hasattr(net, "wiener_iterations"):
                raise ValueError(f"wiener_iterations={opts['wiener_iterations']}: {type(net).__name__} has no Wiener "
                                 "filter setting (U-Net, Open-Unmix, MMDenseNet and D3Net have)")
            if int(opts["wiener_iterations"]) < 0:
                raise ValueError(f"wiener_iterations must be >= 0, got {opts['wiener_iterations']}")
            net.wiener_iterations = int(opts["wiener_iterations"])
        meta = export_onnx(net, opts["out"], opset=opts["opset"], atol=float(opts["atol"]), dft=opts["dft"])
        return (f"wrote {opts['out']}: {meta['family']}, sources {meta['sources']}, {meta['audio_channels']} "
                f"channels, {meta['sample_rate']} Hz, chunks of {meta['segment_length']} samples; onnxruntime vs "
                f"PyTorch max abs diff {meta['max_abs_diff']:.2g}")

    return run_structured_cli(ExportConfig, argv, __doc__, "ckpt=PATH (or a published model name) and out=model.onnx "
                              "are required", action, (ValueError, CheckpointError, ExportError, FileNotFoundError))


if __name__ == "__main__":
    raise SystemExit(main())
