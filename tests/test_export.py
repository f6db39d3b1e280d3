"""ONNX export (mss.inference.export, ``python -m mss.export``) and onnxruntime separation (``python -m mss.separate
ckpt=model.onnx``): the waveform families and the STFT families (real-valued STFT, mss.audio.spectral.real_valued)
export and match PyTorch within 1e-4 through onnxruntime; the separator attributes travel in the ONNX metadata;
families that do not export are refused naming the family and the op."""

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


# the STFT families, tiny (tests/conftest.py TINY_MODELS) on half-second segments; the Wiener filters (complex) off
SPECTRAL = {"unet": [], "umx": ["model.wiener_iterations=0"], "htdemucs": [], "hdemucs": [], "bs_roformer": [],
            "mel_roformer": [], "mdx23c": [], "tfc_tdf_v2": [], "mmdensenet": ["model.wiener_iterations=0"],
            "d3net": ["model.wiener_iterations=0"], "scnet": [], "bsrnn": [], "bandit": []}


def tiny_spectral(name: str, *extra: str) -> torch.nn.Module:
    from omegaconf import OmegaConf

    from mss.run import compose
    from tests.conftest import TINY_MODELS

    target = compose("train", ["paths.output_dir=unused", f"model={name}"]).model._target_
    torch.manual_seed(0)
    cfg = compose("train", ["paths.output_dir=unused", f"model={name}", "data.segment=0.5", *TINY_MODELS[target],
                            *(o for o in SPECTRAL[name] if o.split("=")[0] not in {e.split("=")[0] for e in extra}),
                            *extra])
    return build_model(OmegaConf.to_container(cfg.model, resolve=True)).eval()


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


@pytest.mark.slow  # 45-130 s each on one thread (Open-Unmix the longest)
@pytest.mark.parametrize("name", ["unet", "umx", "htdemucs", "bs_roformer", "mdx23c", "scnet"])
def test_stft_families_export_and_match_pytorch(name, tmp_path, single_thread):
    """The STFT families export with the real-valued STFT / iSTFT and match the PyTorch model (torch.stft) within
    1e-4 through onnxruntime, also through overlap-add separation of a longer mixture."""
    net = tiny_spectral(name)
    meta = export_onnx(net, tmp_path / f"{name}.onnx")
    assert meta["max_abs_diff"] <= 1e-4
    onnx_net = OnnxSeparator(tmp_path / f"{name}.onnx")
    mix = 0.25 * torch.randn(2, int(1.6 * net.segment_length))
    want = apply_model(net, mix, batch_size=3)
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(apply_model(onnx_net, mix, batch_size=3), want, atol=1e-4, rtol=0)


@pytest.mark.slow  # about 60 s
def test_export_cli_turns_the_wiener_filter_off(tmp_path, single_thread):
    """A U-Net checkpoint with the (complex, not exportable) Wiener filter on exports with wiener_iterations=0 and
    then matches the PyTorch U-Net without it."""
    from omegaconf import OmegaConf

    from mss.run import compose
    from tests.conftest import TINY_MODELS

    torch.manual_seed(0)
    cfg = compose("train", ["paths.output_dir=unused", "model=unet", "data.segment=0.5",
                            *TINY_MODELS["mss.models.unet.SpleeterUNet"], "model.wiener_iterations=1"])
    config = OmegaConf.to_container(cfg.model, resolve=True)
    net = build_model(config).eval()
    ckpt = save_checkpoint(tmp_path / "unet.ckpt", net, config)
    proc = cli("mss.export", f"ckpt={ckpt}", f"out={tmp_path / 'unet.onnx'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Wiener filter" in proc.stderr and "wiener_iterations=0" in proc.stderr
    cli("mss.export", f"ckpt={ckpt}", "wiener_iterations=0", f"out={tmp_path / 'unet.onnx'}", cwd=tmp_path)
    net.wiener_iterations = 0
    mix = 0.25 * torch.randn(3, 2, net.segment_length)
    with torch.no_grad():
        want = net(mix)
    torch.testing.assert_close(OnnxSeparator(tmp_path / "unet.onnx")(mix), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dft", ["fft", "conv"])
def test_real_valued_stft_exports_and_matches_torch_stft(dft, tmp_path):
    """The real-valued STFT / iSTFT (mss.audio.spectral.real_valued, both ways: rfft / irfft exported as ONNX DFT,
    and DFT-kernel convolutions) exported by the dynamo exporter: onnxruntime gives torch.stft's spectrogram and
    torch.istft's waveform (the module run without the mode) within float32 rounding."""
    import onnx
    import onnxruntime as ort

    from mss.audio.spectral import istft_pairs, pair_abs, pair_mul, real_valued, stft_pairs

    class Spectral(torch.nn.Module):  # the hybrid Demucs convention (reflect, normalized), a complex gain
        def forward(self, x):
            z = stft_pairs(x, 256, 64, pad_mode="reflect", normalized=True)  # B C F N 2
            gain = torch.stack([torch.cos(x.mean() + torch.arange(129.0)), torch.sin(torch.arange(129.0))], -1)
            y = istft_pairs(pair_mul(z, gain[:, None]), 256, 64, x.shape[-1], normalized=True)
            return pair_abs(z), y

    x = 0.25 * torch.randn(2, 2, 3001)
    with torch.no_grad(), real_valued(dft):
        torch.onnx.export(Spectral().eval(), (x,), tmp_path / "spectral.onnx", dynamo=True, input_names=["x"],
                          external_data=False, verbose=False, optimize=False)
    ops = {node.op_type for node in onnx.load(tmp_path / "spectral.onnx").graph.node}
    # "fft": the transforms are ONNX DFT ops (onnxruntime: an FFT), not O(n_fft^2) DFT-kernel convolutions
    assert ("DFT" in ops, "ConvTranspose" in ops) == ((True, False) if dft == "fft" else (False, True)), ops
    with torch.no_grad():
        want = Spectral()(x)  # torch.stft / torch.istft
    got = ort.InferenceSession(str(tmp_path / "spectral.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})
    for g, w in zip(got, want):
        assert g.shape == w.shape and w.abs().max() > 0.1
        np.testing.assert_allclose(g, w.numpy(), atol=2e-6 * float(w.abs().max()), rtol=0)


class _ComplexGain(torch.nn.Module):
    """A separator that calls torch.stft itself (complex tensors even in the real-valued mode)."""

    sources, sample_rate, audio_channels, segment_length = ["a"], 44100, 1, 2048

    def forward(self, mix):
        window = torch.hann_window(256)
        spec = torch.stft(mix[:, 0], 256, 64, window=window, return_complex=True)
        return torch.istft(spec * 0.5, 256, 64, window=window, length=mix.shape[-1])[:, None, None]


def test_refusals_are_clear(tmp_path):
    with pytest.raises(ExportError, match=r"_ComplexGain: computes on complex tensors \(first op: stft at "
                                          r"test_export.py:\d+\)"):
        export_onnx(_ComplexGain(), tmp_path / "gain.onnx")
    with pytest.raises(ExportError, match="OpenUnmix: .*the Wiener filter .* export with wiener_iterations=0"):
        export_onnx(tiny_spectral("umx", "model.wiener_iterations=1"), tmp_path / "umx.onnx")
    with pytest.raises(ValueError, match="dft='dct': expected one of fft, conv"):
        export_onnx(_ComplexGain(), tmp_path / "gain.onnx", dft="dct")
    assert not (tmp_path / "gain.onnx").exists() and not (tmp_path / "umx.onnx").exists()
    net, config = tiny("conv_tasnet")
    ckpt = save_checkpoint(tmp_path / "tasnet.ckpt", net, config)
    proc = cli("mss.export", f"ckpt={ckpt}", "wiener_iterations=0", f"out={tmp_path / 'x.onnx'}", cwd=tmp_path,
               check=False)
    assert proc.returncode == 2 and "ConvTasNet has no Wiener filter setting" in proc.stderr
    proc = cli("mss.export", f"ckpt={tmp_path / 'missing.ckpt'}", f"out={tmp_path / 'x.onnx'}", cwd=tmp_path,
               check=False)
    assert proc.returncode == 2 and "missing.ckpt" in proc.stderr
    proc = cli("mss.export", "ckpt=a.ckpt", "format=tflite", f"out={tmp_path / 'x.onnx'}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "format='tflite'" in proc.stderr
