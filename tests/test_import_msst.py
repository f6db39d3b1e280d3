"""Import of checkpoints trained with ZFTurbo's MSST (``python -m mss.pretrained.import_msst``): an HT Demucs in
MSST's layout (MSST's ``demucs4ht.HTDemucs`` is the reference package's class plus a ``num_subbands`` option; its
state dict keys are the reference's), random weights, MSST's training YAML: the imported network gives the
reference output; the model type is read from the YAML or ``type=``; unsupported types and options are refused by
name. RoFormers go through :mod:`mss.pretrained.import_roformer` (``tests/test_import_roformer.py``)."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
import yaml

from mss import load_model
from mss.pretrained.import_msst import main
from tests._reference import import_reference, randomise_

pytestmark = pytest.mark.usefixtures("single_thread")

SOURCES = ["drums", "bass", "other", "vocals"]
SMALL = dict(channels=8, nfft=1024, depth=4, t_layers=2, dconv_mode=3, bottom_channels=32, t_heads=8)


def msst_yaml(path, section: dict, model="htdemucs", segment: float = 0.5) -> str:
    """An MSST training YAML in the layout of its ``configs/config_musdb18_htdemucs.yaml``."""
    path.write_text(yaml.safe_dump({
        "audio": {"chunk_size": int(segment * 44100), "hop_length": 1024},
        "training": {"segment": segment, "samplerate": 44100, "channels": 2, "instruments": SOURCES,
                     "target_instrument": None, "batch_size": 2},
        "model": model, "htdemucs": {"num_subbands": 1, "t_weight_decay": 0.0, "t_lr": None, **section}}))
    return str(path)


def test_msst_htdemucs_imports_with_parity(tmp_path):
    torch.manual_seed(0)
    ht = import_reference("demucs.htdemucs")
    ref = randomise_(ht.HTDemucs(sources=SOURCES, segment=Fraction(1, 2), use_train_segment=False, **SMALL), 0)
    ref.eval()
    torch.save(ref.state_dict(), tmp_path / "model.ckpt")  # MSST saves the bare state dict
    config = msst_yaml(tmp_path / "config.yaml", SMALL)
    main([str(tmp_path / "model.ckpt"), f"config={config}", f"out={tmp_path / 'mss.ckpt'}"])
    net = load_model(tmp_path / "mss.ckpt")
    assert net.sources == SOURCES and net.segment_length == 22050 and not net.use_train_segment
    mix = torch.randn(1, 2, 30_000, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, got = ref(mix), net(mix)
    assert (got - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_msst_import_errors_name_the_problem(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "m.ckpt")
    ckpt, out = str(tmp_path / "m.ckpt"), f"out={tmp_path / 'o.ckpt'}"
    with pytest.raises(ValueError, match=r"num_subbands.*not supported"):
        main([ckpt, f"config={msst_yaml(tmp_path / 'a.yaml', {'num_subbands': 2})}", out])
    dict_model = tmp_path / "b.yaml"
    dict_model.write_text(yaml.safe_dump({"model": {"dim": 8}, "training": {"instruments": ["vocals"]}}))
    with pytest.raises(ValueError, match=r"does not name its model; pass type="):
        main([ckpt, f"config={dict_model}", out])
    with pytest.raises(ValueError, match=r"model type 'apollo' is not supported"):
        main([ckpt, f"config={dict_model}", out, "type=apollo"])
    with pytest.raises(ValueError, match=r"weights do not fit the htdemucs model"):
        main([ckpt, f"config={msst_yaml(tmp_path / 'c.yaml', SMALL)}", out])
    with pytest.raises(SystemExit, match="usage"):
        main([ckpt])


def test_msst_scnet_imports_with_parity(tmp_path):
    """MSST's ``scnet``: the golden fixture's reference weights (MSST layout) and MSST's output
    (tests/data/scnet_golden.pt, see tests/test_scnet.py) through the CLI."""
    from pathlib import Path

    golden = torch.load(Path(__file__).parent / "data" / "scnet_golden.pt", weights_only=False)
    section = {k: v for k, v in golden["config"].items() if k not in ("sources", "audio_channels")}
    torch.save({"state_dict": golden["state_dict"]}, tmp_path / "scnet.ckpt")
    (tmp_path / "scnet.yaml").write_text(yaml.safe_dump({
        "audio": {"sample_rate": 44100, "chunk_size": 1200}, "model": section,
        "training": {"instruments": list(golden["config"]["sources"]), "target_instrument": None}}))
    main([str(tmp_path / "scnet.ckpt"), f"config={tmp_path / 'scnet.yaml'}", f"out={tmp_path / 'mss.ckpt'}",
          "type=scnet"])
    net = load_model(tmp_path / "mss.ckpt")
    with torch.no_grad():
        assert (net(golden["mix"]) - golden["msst"]).abs().max().item() <= 1e-4
