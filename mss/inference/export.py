"""ONNX export of a separator and an onnxruntime separator that runs the exported file.

:func:`export_onnx` writes ``net`` with :func:`torch.onnx.export` (the ``torch.export``-based exporter, onnxscript):
input ``mix (N, C, segment_length)`` with a dynamic batch ``N``, output ``stems (N, S, C, segment_length)``. The
separator attributes (``sources``, ``sample_rate``, ``audio_channels``, ``segment_length``) and the family are stored
in the ONNX metadata (where the exporter fixes the batch, :class:`OnnxSeparator` runs chunks in groups of that
size); the exporter's graph optimisation is off (onnxscript 0.7's drops ``x + 1e-10``-style additions of small
constants: NaN ratio masks in the Spleeter U-Net). The file is checked against PyTorch with onnxruntime on random
mixtures of standard deviation :data:`MIX_STD` (largest absolute difference at most ``atol``, default 1e-4; a NaN
fails) before it is moved into place (atomic write). The export runs inside
:func:`mss.audio.spectral.real_valued`: the STFT / iSTFT take real pairs and are exported as ONNX ``DFT`` ops
(``dft="fft"``, the default: onnxruntime computes FFTs) or as convolutions with DFT kernels (``dft="conv"``), and the
spectrogram families (U-Net, Open-Unmix, MMDenseNet, D3Net, hybrid / HT Demucs, BS- / Mel-RoFormer, MDX23C, MDX-Net
v2, SCNet, BSRNN, BandIt) take their real-pair code paths (the exporter converts almost no complex op: not ``mul``,
``unsqueeze``, ``view_as_complex``). A network whose ops do not export is refused with :class:`ExportError` naming
the family and the reason: at once where one eager forward in that mode still makes a complex tensor (the op and the
calling line are named) or has no real-valued path (the Wiener filters of U-Net / Open-Unmix / MMDenseNet / D3Net,
``python -m mss.export ... wiener_iterations=0`` turns them off, and of hybrid Demucs with ``cac=false``), else with
the exporter's reason. Per-family figures: docs/workflow.md.

:class:`OnnxSeparator` is an ``nn.Module`` with the same attributes whose ``forward`` runs an onnxruntime session, so
:func:`mss.inference.overlap_add.apply_model` (and ``python -m mss.separate ckpt=model.onnx``) use it unchanged;
chunks are always ``segment_length`` long (the exported shape).

Needs the ``onnx`` extra: ``pip install 'mss[onnx]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import traceback
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mss.audio import spectral
from mss.utils import atomic_write

__all__ = ["ExportError", "OnnxSeparator", "export_onnx", "is_onnx"]

METADATA_KEYS = ("sources", "sample_rate", "audio_channels", "segment_length", "family")
# level of the random check mixtures: peaks near full scale, like music (at std 1, four times louder than audio can
# be, the random-weight Spleeter U-Net's ratio masks amplify float32 differences to 3e-3)
MIX_STD = 0.25


class ExportError(RuntimeError):
    """A network that cannot be exported (or whose export does not match PyTorch)."""


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ExportError(f"ONNX export/inference needs {module}: pip install 'mss[onnx]' (onnx, onnxruntime, "
                          "onnxscript)") from err


def is_onnx(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(".onnx")


def _family(net: nn.Module) -> str:
    return f"{type(net).__module__}.{type(net).__qualname__}"


def _internal(filename: str) -> bool:
    """Whether a stack frame is torch's, this module's or the spectral helpers' (not the model's code)."""
    path = Path(filename)
    return f"{os.sep}torch{os.sep}" in filename or path.name in ("export.py", "spectral.py", "contextlib.py")


class _FindComplex(torch.overrides.TorchFunctionMode):
    """Records the first op of a forward that returns a complex tensor (the exporter converts few complex ops)."""

    def __init__(self):
        super().__init__()
        self.first: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.first is None and any(isinstance(t, torch.Tensor) and t.is_complex()
                                      for t in (out if isinstance(out, (tuple, list)) else (out,))):
            caller = traceback.extract_stack(limit=2)[0]  # the frame that called func
            if Path(caller.filename).name == "spectral.py" and caller.name in spectral.COMPLEX_INSIDE:
                return out  # the FFT STFT's own intermediates (exported as ONNX DFT)
            frames = reversed(traceback.extract_stack())
            caller = next((f"{Path(f.filename).name}:{f.lineno}" for f in frames if not _internal(f.filename)), "?")
            self.first = f"{getattr(func, '__name__', repr(func))} at {caller}"
        return out


def _first_complex_op(net: nn.Module, example: torch.Tensor, dft: str = "fft") -> str | None:
    """The first complex-valued op of one eager forward in the real-valued spectral mode (None: there is none)."""
    with torch.no_grad(), spectral.real_valued(dft), _FindComplex() as mode:
        net(example)
    return mode.first


def _run(session, mix: np.ndarray) -> np.ndarray:
    """``session`` on ``mix (N, C, T)``: at once for a dynamic batch, else in groups of the exported batch size (the
    last group zero-padded); some families' batch is fixed by the exporter."""
    batch = session.get_inputs()[0].shape[0]
    if not isinstance(batch, int):
        return session.run(["stems"], {"mix": mix})[0]
    outs = []
    for i in range(0, len(mix), batch):
        group = mix[i : i + batch]
        padded = np.concatenate([group, np.zeros((batch - len(group), *group.shape[1:]), group.dtype)])
        outs.append(session.run(["stems"], {"mix": padded})[0][: len(group)])
    return np.concatenate(outs)


def export_onnx(net: nn.Module, path: str | os.PathLike, *, opset: int | None = None, atol: float = 1e-4,
                seed: int = 0, dft: str = "fft") -> dict:
    """Export ``net`` (a separator in eval mode) to ONNX at ``path``; returns the metadata and the measured
    ``max_abs_diff`` against PyTorch on random mixtures (batches of 1 and 2). ``dft``: how the STFT / iSTFT are
    exported (:func:`mss.audio.spectral.real_valued`: ``"fft"``, ONNX ``DFT`` ops, or ``"conv"``, DFT-kernel
    convolutions)."""
    if dft not in spectral.DFTS:
        raise ValueError(f"dft={dft!r}: expected one of {', '.join(spectral.DFTS)}")
    onnx = _need("onnx")
    ort = _need("onnxruntime")
    _need("onnxscript")
    missing = [k for k in METADATA_KEYS[:-1] if getattr(net, k, None) is None]
    if missing:
        raise ExportError(f"{_family(net)}: not a separator (no {', '.join(missing)})")
    if getattr(net, "needs_references", False):
        raise ExportError(f"{_family(net)}: an oracle needs the true stems; only networks export")
    net = net.eval()
    meta = {"sources": list(net.sources), "sample_rate": int(net.sample_rate),
            "audio_channels": int(net.audio_channels), "segment_length": int(net.segment_length),
            "family": _family(net)}
    shape = (meta["audio_channels"], meta["segment_length"])
    gen = torch.Generator().manual_seed(seed)
    example = MIX_STD * torch.randn(2, *shape, generator=gen)
    try:
        first = _first_complex_op(net, example, dft)
    except ValueError as err:  # a configuration without a real-valued path (e.g. a Wiener filter)
        raise ExportError(f"{meta['family']}: cannot be exported to ONNX ({err})") from err
    if first is not None:
        raise ExportError(f"{meta['family']}: computes on complex tensors (first op: {first}) even with the "
                          "real-valued STFT (mss.audio.spectral.real_valued), and the torch.onnx exporter does not "
                          "convert complex ops (e.g. mul, unsqueeze)")

    def write(tmp: str) -> None:
        try:
            with torch.no_grad(), spectral.real_valued(dft):
                torch.onnx.export(net, (example,), tmp, dynamo=True, opset_version=opset, input_names=["mix"],
                                  output_names=["stems"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                                  external_data=False, verbose=False, optimize=False)
        except Exception as err:  # noqa: BLE001 -- the exporter raises many kinds; the family and reason are kept
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # the exporter colours its messages
            reason = next((line for line in text.splitlines() if line.strip()), type(err).__name__)
            raise ExportError(f"{meta['family']}: cannot be exported to ONNX ({type(err).__name__}: {reason[:300]})"
                              ) from err
        model = onnx.load(tmp)
        onnx.helper.set_model_props(model, {k: json.dumps(v) for k, v in meta.items()})
        onnx.save(model, tmp)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        worst = 0.0
        for batch in (1, 2):
            mix = MIX_STD * torch.randn(batch, *shape, generator=gen)
            with torch.no_grad():
                ref = net(mix).float().numpy()
            got = _run(session, mix.numpy())
            if got.shape != ref.shape:
                raise ExportError(f"{meta['family']}: the ONNX output has shape {got.shape}, PyTorch {ref.shape}")
            diff = float(np.abs(got - ref).max())
            worst = diff if not diff <= worst else worst  # a NaN is kept (max() would drop it)
        if not worst <= atol:
            raise ExportError(f"{meta['family']}: the ONNX model differs from PyTorch by {worst:.3g} (> {atol:g})")
        meta["max_abs_diff"] = worst

    atomic_write(path, write)
    return meta


class OnnxSeparator(nn.Module):
    """An exported separator run by onnxruntime: ``forward(mix (N, C, segment_length)) -> (N, S, C,
    segment_length)`` on the mix's device (computed on the CPU, or CUDA where onnxruntime has it)."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None):
        super().__init__()
        ort = _need("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ckpt={self.path}: no such ONNX file")
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(self.path), providers=providers)
        props = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in METADATA_KEYS[:-1] if k not in props]
        if missing:
            raise ExportError(f"{self.path}: no mss metadata ({', '.join(missing)}); export it with python -m "
                              "mss.export")
        meta = {k: json.loads(props[k]) for k in METADATA_KEYS if k in props}
        self.sources = list(meta["sources"])
        self.sample_rate = int(meta["sample_rate"])
        self.audio_channels = int(meta["audio_channels"])
        self.segment_length = int(meta["segment_length"])
        self.family = meta.get("family", "?")

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        want = (self.audio_channels, self.segment_length)
        if mix.dim() != 3 or tuple(mix.shape[1:]) != want:
            raise ValueError(f"{self.path.name}: the exported model takes chunks (N, {want[0]}, {want[1]}), got "
                             f"{tuple(mix.shape)} (use the model's own segment: segment=null)")
        out = _run(self.session, mix.detach().float().cpu().numpy())
        return torch.from_numpy(out).to(mix.device)
