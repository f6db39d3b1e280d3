"""Inference speed-ups (mss.inference.speed): ``compile=true`` equals eager within 1e-4, ``precision=bf16`` runs the
network under autocast (estimates close to fp32 but not bit-equal), fp16 on CPU is a clear error; through the
mss.separate and mss.evaluate command lines, with the estimate cache and protocol.json naming them only when set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from mss.inference.overlap_add import apply_model
from mss.inference.speed import check_precision, compiled
from tests.test_separate import GAINS, SR, cli, read, tone, toys  # noqa: F401 -- the toys fixture

A = np.array([[1.0, 0.5], [-0.25, 0.75]])


def test_precision_names_and_fp16_on_cpu():
    assert check_precision("fp32", "cpu") is None and check_precision(None, "cpu") is None
    assert check_precision("BF16", "cpu") is torch.bfloat16
    assert check_precision("fp16", "cuda") is torch.float16
    with pytest.raises(ValueError, match="precision=fp16 is not supported on CPU"):
        check_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="precision='int8': expected one of fp32, bf16, fp16"):
        check_precision("int8", "cpu")


def test_separate_compile_and_bf16_through_the_cli(toys, tmp_path):  # noqa: F811
    """The linear channel mixer (an einsum, autocast-listed): compile=true gives the eager stems within 1e-4;
    precision=bf16 gives them within bf16 rounding (1e-2) and not bit-equal (the autocast did run)."""
    toys_dir, ckpts = toys
    sf.write(tmp_path / "song.wav", tone(SR // 2, 2, seed=2), SR, subtype="FLOAT")
    mix = read(tmp_path / "song.wav")
    for name, extra in (("compile", "compile=true"), ("bf16", "precision=bf16")):
        cli("mss.separate", f"ckpt={ckpts['channel_mix']}", f"input={tmp_path / 'song.wav'}",
            f"output_dir={tmp_path / name}", extra, "bit_depth=32f", "clip=none",
            f"hydra.run.dir={tmp_path / 'h' / name}", cwd=tmp_path, toys_dir=toys_dir)
    expected = GAINS[3] * mix @ A.T
    np.testing.assert_allclose(read(tmp_path / "compile" / "song" / "vocals.wav"), expected, atol=1e-4)
    bf16 = read(tmp_path / "bf16" / "song" / "vocals.wav")
    np.testing.assert_allclose(bf16, expected, atol=1e-2)
    assert np.abs(bf16 - expected).max() > 1e-5
    proc = cli("mss.separate", f"ckpt={ckpts['gain']}", f"input={tmp_path / 'song.wav'}", "precision=fp16",
               "device=cpu", f"output_dir={tmp_path / 'fp16'}", f"hydra.run.dir={tmp_path / 'h' / 'fp16'}",
               cwd=tmp_path, toys_dir=toys_dir, check=False)
    assert proc.returncode != 0 and "precision=fp16 is not supported on CPU" in proc.stderr


def test_evaluate_precision_in_cache_key_and_protocol(toys, synth_root, tmp_path):  # noqa: F811
    """evaluation.precision=bf16 after a plain run with the same cache: the bf16 estimates are computed (not the
    cached fp32 ones) and protocol.json names the precision; the plain run's protocol does not (old keys valid)."""
    toys_dir, ckpts = toys
    common = [f"ckpt={ckpts['channel_mix']}", f"data.root={synth_root}", "evaluation.save_estimates=true",
              "evaluation.sdr_only=true", "evaluation.plots=false", f"paths.cache_dir={tmp_path / 'cache'}"]
    cli("mss.evaluate", *common, f"hydra.run.dir={tmp_path / 'plain'}", cwd=tmp_path, toys_dir=toys_dir)
    cli("mss.evaluate", *common, "evaluation.precision=bf16", f"hydra.run.dir={tmp_path / 'bf16'}", cwd=tmp_path,
        toys_dir=toys_dir)
    track = sorted((synth_root / "test").iterdir())[0]
    plain = read(tmp_path / "plain" / "estimates" / track.name / "vocals.wav")
    bf16 = read(tmp_path / "bf16" / "estimates" / track.name / "vocals.wav")
    np.testing.assert_allclose(plain, GAINS[3] * read(track / "mixture.wav") @ A.T, atol=1e-5)
    assert 1e-5 < np.abs(bf16 - plain).max() < 2e-2
    stamps = {run: json.loads((tmp_path / run / "protocol.json").read_text())["inference"] for run in ("plain", "bf16")}
    assert stamps["bf16"]["precision"] == "bf16"
    assert "precision" not in stamps["plain"] and "compile" not in stamps["plain"]


@pytest.mark.slow
def test_compile_of_a_tiny_conv_tasnet_equals_eager_and_is_cached(single_thread):
    """torch.compile of a tiny Conv-TasNet (about 90 s to compile on 2 cores): within 1e-4 of eager, with a last
    partial batch and shifts; the compiled module is built once per network."""
    from omegaconf import OmegaConf

    from mss.checkpoint import build_model
    from mss.run import compose

    torch.manual_seed(0)
    cfg = compose("train", ["paths.output_dir=unused", "model=conv_tasnet", "model.N=16", "model.B=16",
                            "model.H=16", "model.X=2", "model.R=1", "model.segment_length=8000"])
    net = build_model(OmegaConf.to_container(cfg.model, resolve=True)).eval()
    mix = torch.randn(2, 20_000)  # 4 chunks of 8000 at overlap 0.25: batches of 3 and 1 (padded)
    eager = apply_model(net, mix, batch_size=3)
    torch.testing.assert_close(apply_model(net, mix, batch_size=3, compile=True), eager, atol=1e-4, rtol=0)
    assert compiled(net) is compiled(net)
    torch.manual_seed(1)
    shifted = apply_model(net, mix, batch_size=3, shifts=1)
    torch.manual_seed(1)
    torch.testing.assert_close(apply_model(net, mix, batch_size=3, shifts=1, compile=True), shifted, atol=1e-4,
                               rtol=0)
