"""ONNX export (mss.inference.export, ``python -m mss.export``) and onnxruntime separation (``python -m mss.separate
ckpt=model.onnx``): the waveform families export and match PyTorch within 1e-4 through onnxruntime; the separator
attributes travel in the ONNX metadata; families that do not export are refused naming the family."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from mss.checkpoint import build_model, save_checkpoint  # noqa: E402
from mss.inference.export import ExportError, OnnxSeparator, export_onnx  # noqa: E402
from mss.inference.overlap_add import apply_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# the waveform families, tiny (tests/conftest.py TINY_MODELS, shorter segments)
WAVEFORM = {
    "conv_tasnet": ["model.N=16", "model.B=16", "model.H=16", "model.X=2", "model.R=1", "model.segment_length=8000"],
    "demucs_v2": ["model.channels=4", "model.depth=4", "model.segment_length=44100"],
    # 0.5 s: the exporter fixes this one's batch (OnnxSeparator then runs groups of 2)
    "wave_u_net": ["model.levels=2", "model.features=8", "model.output_size=512", "model.segment=0.5"],
    "demucs_v3": ["model.channels=4", "model.depth=5", "model.segment=1.0"],  # BiLSTM + local attention at layer 4
}


def tiny(name: str) -> tuple[torch.nn.Module, dict]:
    from omegaconf import OmegaConf

    from mss.run import compose

    torch.manual_seed(0)
    cfg = compose("train", ["paths.output_dir=unused", f"model={name}", *WAVEFORM[name]])
    config = OmegaConf.to_container(cfg.model, resolve=True)
    return build_model(config).eval(), config


def cli(module: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def test_conv_tasnet_export_cli_then_separate_with_onnxruntime(tmp_path, single_thread):
    """python -m mss.export ckpt=... out=model.onnx, then mss.separate ckpt=model.onnx: the stems equal those of
    mss.separate with the PyTorch checkpoint within 1e-4."""
    net, config = tiny("conv_tasnet")
    ckpt = save_checkpoint(tmp_path / "tasnet.ckpt", net, config)
    proc = cli("mss.export", f"ckpt={ckpt}", "format=onnx", f"out={tmp_path / 'tasnet.onnx'}", cwd=tmp_path)
    assert "max abs diff" in proc.stdout
    onnx_net = OnnxSeparator(tmp_path / "tasnet.onnx")
    assert (onnx_net.sources, onnx_net.sample_rate, onnx_net.audio_channels, onnx_net.segment_length) == (
        list(net.sources), net.sample_rate, net.audio_channels, net.segment_length)
    rng = np.random.default_rng(0)
    sf.write(tmp_path / "song.wav", (0.3 * rng.standard_normal((20_000, 2))).astype(np.float32), 44100,
             subtype="FLOAT")
    for name, model in (("torch", ckpt), ("onnx", tmp_path / "tasnet.onnx")):
        cli("mss.separate", f"ckpt={model}", f"input={tmp_path / 'song.wav'}", f"output_dir={tmp_path / name}",
            "bit_depth=32f", "clip=none", "device=cpu", f"hydra.run.dir={tmp_path / 'h' / name}", cwd=tmp_path)
    for source in net.sources:
        got = sf.read(tmp_path / "onnx" / "song" / f"{source}.wav", dtype="float32")[0]
        want = sf.read(tmp_path / "torch" / "song" / f"{source}.wav", dtype="float32")[0]
        assert np.abs(want).max() > 1e-3
        np.testing.assert_allclose(got, want, atol=1e-4)
    proc = cli("mss.separate", f"ckpt={tmp_path / 'tasnet.onnx'}", f"input={tmp_path / 'song.wav'}", "compile=true",
               f"output_dir={tmp_path / 'x'}", f"hydra.run.dir={tmp_path / 'h' / 'x'}", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "an ONNX model runs as exported" in proc.stderr


@pytest.mark.parametrize("name", [pytest.param("demucs_v2", marks=pytest.mark.slow),  # exports in ~2 min on 1 thread
                                  pytest.param("demucs_v3", marks=pytest.mark.slow), "wave_u_net"])
def test_waveform_families_export_and_match_pytorch(name, tmp_path, single_thread):
    net, _ = tiny(name)
    meta = export_onnx(net, tmp_path / f"{name}.onnx")
    assert meta["max_abs_diff"] <= 1e-4
    onnx_net = OnnxSeparator(tmp_path / f"{name}.onnx")
    mix = torch.randn(2, int(1.6 * net.segment_length))
    torch.testing.assert_close(apply_model(onnx_net, mix, batch_size=3), apply_model(net, mix, batch_size=3),
                               atol=1e-4, rtol=0)


def test_refusals_are_clear(tmp_path):
    from omegaconf import OmegaConf

    from mss.run import compose
    from tests.conftest import TINY_MODEL

    cfg = compose("train", ["paths.output_dir=unused", *TINY_MODEL])  # the spectrogram U-Net (STFT)
    net = build_model(OmegaConf.to_container(cfg.model, resolve=True)).eval()
    with pytest.raises(ExportError, match="SpleeterUNet: computes an STFT/iSTFT"):
        export_onnx(net, tmp_path / "unet.onnx")
    assert not (tmp_path / "unet.onnx").exists()
    proc = cli("mss.export", f"ckpt={tmp_path / 'missing.ckpt'}", f"out={tmp_path / 'x.onnx'}", cwd=tmp_path,
               check=False)
    assert proc.returncode == 2 and "missing.ckpt" in proc.stderr
    proc = cli("mss.export", "ckpt=a.ckpt", "format=tflite", f"out={tmp_path / 'x.onnx'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "format='tflite'" in proc.stderr
