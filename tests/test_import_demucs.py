"""Reference Demucs checkpoints (``.th``) and bags (``.yaml``) import into mss checkpoints whose networks reproduce the
reference package's forward to 1e-4 (reference models with random weights, saved in the reference export format)."""

from __future__ import annotations

import subprocess
import sys
import types
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import yaml

from mss import load_model
from mss.pretrained.import_demucs import DemucsImportError, import_model, main

SOURCES = ["drums", "bass", "other", "vocals"]
TOL = 1e-4
REPO = Path(__file__).resolve().parents[1]


def reference_module(name: str):
    from tests._reference import import_reference

    return import_reference(name)


def export(model: torch.nn.Module, path: Path, half: bool = True) -> Path:
    """Save ``model`` as the reference's ``tools/export.py`` does (``serialize_model``, fp16 weights)."""
    from omegaconf import OmegaConf

    states = reference_module("demucs.states")
    package = states.serialize_model(model, OmegaConf.create({"seed": 42}), half=half)
    torch.save(package, path)
    return path


def reloaded_reference(path: Path) -> torch.nn.Module:
    """The reference model as the reference package loads the file (fp16-rounded weights)."""
    package = torch.load(path, map_location="cpu", weights_only=False)  # trusted: written by this test
    return reference_module("demucs.states").load_model(package).eval()


def max_abs_error(ref: torch.nn.Module, ours: torch.nn.Module, length: int, channels: int = 2, batch: int = 2):
    torch.manual_seed(1)
    mix = torch.randn(batch, channels, length)
    with torch.no_grad():
        return (ref(mix) - ours(mix)).abs().max().item()


def check_import(ref_model: torch.nn.Module, tmp_path: Path, length: int, channels: int = 2) -> float:
    path = export(ref_model, tmp_path / "model.th")
    out = main([str(path), f"out={tmp_path / 'model.ckpt'}"])
    ours = load_model(out)
    err = max_abs_error(reloaded_reference(path), ours, length, channels)
    print(f"{type(ref_model).__name__}: max-abs error {err:.2e}")
    assert err <= TOL
    return err


def small_htdemucs(**kwargs):
    torch.manual_seed(0)
    ht = reference_module("demucs.htdemucs")
    return ht.HTDemucs(sources=kwargs.pop("sources", SOURCES), channels=8, nfft=1024, t_layers=3,
                       segment=Fraction(1, 2), **kwargs)


def test_small_htdemucs_imports_with_parity(tmp_path):
    # shorter than the segment: exercises the padding to the training length as well
    check_import(small_htdemucs(dconv_mode=3, bottom_channels=32, t_dropout=0.02), tmp_path, length=20_000)


def test_small_hdemucs_imports_with_parity(tmp_path):
    torch.manual_seed(0)
    hd = reference_module("demucs.hdemucs")
    check_import(hd.HDemucs(sources=SOURCES, channels=8, segment=Fraction(2, 1)), tmp_path, length=30_000)


def test_small_time_demucs_v3_imports_with_parity(tmp_path):
    torch.manual_seed(0)
    dm = reference_module("demucs.demucs")
    check_import(dm.Demucs(sources=SOURCES, channels=8, audio_channels=1), tmp_path, length=20_000, channels=1)


def test_cli_subprocess_writes_a_loadable_checkpoint(tmp_path):
    ref = small_htdemucs(sources=["vocals", "accompaniment"])
    path = export(ref, tmp_path / "ht.th", half=False)
    out = tmp_path / "ht.ckpt"
    proc = subprocess.run([sys.executable, "-m", "mss.pretrained.import_demucs", str(path), f"out={out}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ours = load_model(out)
    assert ours.sources == ["vocals", "accompaniment"] and ours.segment_length == 22050
    assert max_abs_error(ref.eval(), ours, 22050) <= TOL


def test_bag_of_two_imports_and_runs(tmp_path):
    members = [small_htdemucs(), small_htdemucs(dconv_mode=2)]
    for sig, model in zip(["aaaa1111", "bbbb2222"], members):
        export(model, tmp_path / f"{sig}-0123abcd.th")
    weights = [[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 0.5]]
    (tmp_path / "mybag.yaml").write_text(yaml.safe_dump({"models": ["aaaa1111", "bbbb2222"], "weights": weights}))
    out = main([str(tmp_path / "mybag.yaml"), f"out={tmp_path / 'bag.ckpt'}"])
    bag = load_model(out)
    assert len(bag.models) == 2 and bag.segment_length == 22050
    reloaded = [reloaded_reference(p) for p in sorted(tmp_path.glob("*.th"))]
    w = torch.tensor(weights)[:, :, None, None]
    mix = torch.randn(1, 2, 22050)
    with torch.no_grad():  # the reference bag's combination: per-source weighted sum / per-source weight total
        expected = sum(w[m] * ref(mix) for m, ref in enumerate(reloaded)) / w.sum(0)
        err = (bag(mix) - expected).abs().max().item()
    print(f"bag of two: max-abs error {err:.2e}")
    assert err <= TOL


def test_v2_checkpoints_import_by_parameter_shapes(tmp_path, monkeypatch):
    """The reference v2 class (``demucs.model.Demucs``) is not in demucs 4: write its package layout with a class of
    that import path and the v2 state-dict keys, and check every imported parameter's name, shape and value."""
    from mss.models.demucs import DemucsV2

    torch.manual_seed(0)
    kwargs = dict(sources=SOURCES, audio_channels=2, channels=8, depth=4, lstm_layers=2, context=3)
    source = DemucsV2(**kwargs)
    module = types.ModuleType("demucs.model")
    klass = type("Demucs", (), {"__module__": "demucs.model", "__qualname__": "Demucs"})
    module.Demucs = klass
    monkeypatch.setitem(sys.modules, "demucs.model", module)
    state = {k: v.half() for k, v in source.state_dict().items()}
    torch.save({"klass": klass, "args": (), "kwargs": kwargs, "state": state}, tmp_path / "v2.th")
    net, config = import_model(tmp_path / "v2.th")
    assert config["_target_"] == "mss.models.demucs.DemucsV2" and config["channels"] == 8
    ours = net.state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in state.items()}
    for key, value in state.items():
        torch.testing.assert_close(ours[key], value.float())


def test_bad_files_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(DemucsImportError, match="file not found"):
        import_model(tmp_path / "missing.th")
    (tmp_path / "junk.th").write_bytes(b"not a checkpoint")
    with pytest.raises(DemucsImportError, match="cannot read"):
        import_model(tmp_path / "junk.th")
    torch.save({"state": {}}, tmp_path / "plain.th")
    with pytest.raises(DemucsImportError, match="not a reference Demucs package"):
        import_model(tmp_path / "plain.th")
    module = types.ModuleType("demucs.unknown")
    klass = type("Other", (), {"__module__": "demucs.unknown", "__qualname__": "Other"})
    module.Other = klass
    monkeypatch.setitem(sys.modules, "demucs.unknown", module)
    torch.save({"klass": klass, "args": (), "kwargs": {}, "state": {}}, tmp_path / "other.th")
    with pytest.raises(DemucsImportError, match="demucs.unknown.Other"):
        import_model(tmp_path / "other.th")
    (tmp_path / "bag.yaml").write_text("models: [deadbeef]\n")
    with pytest.raises(DemucsImportError, match="no file for model 'deadbeef'"):
        main([str(tmp_path / "bag.yaml"), f"out={tmp_path / 'bag.ckpt'}"])


def test_quantized_exports_are_refused(tmp_path):
    path = export(small_htdemucs(), tmp_path / "q.th", half=False)
    package = torch.load(path, weights_only=False)
    package["state"] = {"__quantized": True, "quantized": [], "others": []}
    torch.save(package, path)
    with pytest.raises(DemucsImportError, match="DiffQ-quantized"):
        import_model(path)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["class_defaults", "released", "six_sources", "hdemucs_defaults"])
def test_full_size_models_import_with_parity(variant, tmp_path):
    torch.manual_seed(0)
    ht = reference_module("demucs.htdemucs")
    if variant == "class_defaults":
        ref, length = ht.HTDemucs(sources=SOURCES), 4 * 44100
    elif variant == "released":
        ref = ht.HTDemucs(sources=SOURCES, dconv_mode=3, bottom_channels=512, t_dropout=0.02, segment=Fraction(39, 5))
        length = 343_980
    elif variant == "six_sources":
        ref = ht.HTDemucs(sources=SOURCES + ["guitar", "piano"], dconv_mode=3, segment=Fraction(39, 5))
        length = 5 * 44100
    else:
        ref, length = reference_module("demucs.hdemucs").HDemucs(sources=SOURCES), 6 * 44100
    check_import(ref, tmp_path, length=length)
