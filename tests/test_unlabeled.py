"""Unlabeled remixing: frame statistics, silent-excerpt extraction on synthetic data (oracle and learned detector,
precision/recall printed), resumable index, training items, and the extra training step."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mss import unlabeled as U
from mss.lightning.module import SeparationModule
from mss.losses import WaveformL1
from mss.run import compose
from mss.train import train
from mss.unlabeled.extract_silent import main as extract_main
from tests.conftest import TINY_MODEL

SOURCES = ["drums", "bass", "other", "vocals"]


def test_relative_volume_and_runs():
    t = torch.zeros(2, 1, 1000)
    t[0] = 1.0
    t[1, :, :500] = 0.1
    v = U.relative_volume(t, 100, 100)
    assert v.shape == (2, 10)
    assert torch.allclose(v[1, :5], torch.full((5,), 10 * torch.log10(torch.tensor(0.01 / 1.21)).item()), atol=1e-4)
    assert (v[1, 5:] == -120).all() and (v[0, 5:] == 0).all()
    assert U.runs(torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool), 2) == [(0, 1), (3, 5)]


@pytest.fixture(scope="module")
def oracle_index(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("index")
    assert extract_main([f"input={synth_root / 'train'}", f"out={out}", "detector=energy", "min_duration=1.0"]) == 0
    return out


def test_oracle_extraction_finds_the_silent_sections(oracle_index, synth_root, capsys):
    index = U.read_index(oracle_index)
    assert set(index["excerpts"]) == set(SOURCES) and all(index["excerpts"][s] for s in SOURCES)
    scores = U.evaluate_index(index, synth_root / "train", SOURCES, silent_db=-100.0)  # truth: digital silence
    print("oracle detector vs digital silence:", json.dumps(scores))
    for s in SOURCES:  # every designed silent section is found; the rest are natural gaps (vocal phrases)
        assert scores[s]["recall"] >= 0.95 and scores[s]["precision"] >= 0.75, (s, scores[s])
    for e in index["excerpts"]["vocals"]:
        assert (e["end"] - e["start"]) / e["sample_rate"] >= 1.0 and e["score"] >= 30.0


def test_extraction_is_resumable(oracle_index, synth_root, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(oracle_index, out)
    items = sorted((out / "items").glob("*.json"))
    stamps = {p: p.stat().st_mtime_ns for p in items}
    items[0].unlink()
    (out / U.INDEX).unlink()
    U.extract(synth_root / "train", out, SOURCES, U.EnergyDetector(), min_duration=1.0)
    assert json.loads((out / U.INDEX).read_text())["excerpts"] == U.read_index(oracle_index)["excerpts"]
    assert all(p.stat().st_mtime_ns == stamps[p] for p in items[1:])  # finished inputs were not redone
    U.extract(synth_root / "train", out, SOURCES, U.EnergyDetector(-20.0), min_duration=1.0)  # other settings
    assert all(json.loads(p.read_text())["settings"]["threshold_db"] == -20.0 for p in items[1:])


@pytest.mark.slow
def test_learned_detector_trains_and_extracts_from_mixtures(synth_root, tmp_path):
    from mss.data.tracks import find_tracks

    tracks = find_tracks(synth_root / "train", SOURCES, sample_rate=44100, channels=2)
    torch.manual_seed(0)
    net, thresholds, stats = U.train_classifier(tracks[:-1], SOURCES, valid_tracks=tracks[-1:], steps=4,
                                                batch_size=2, segment=2.0, net_kw={"channels": 4, "hidden": 8})
    assert set(thresholds) == set(SOURCES) and all(0.0 <= p <= 1.0 for p in thresholds.values())
    path = U.save_classifier(tmp_path / "detector.pt", net, thresholds, stats)
    mixes = tmp_path / "mixes"
    for t in tracks:
        (mixes / t.name).mkdir(parents=True)
        shutil.copy(t.mixture, mixes / t.name / "mixture.wav")
    detector = U.ClassifierDetector(path)
    silent, score = detector(torch.randn(2, 44100 * 3), 44100)
    assert silent.shape == score.shape == (4, 1 + (44100 * 3 - 28224) // 2822)
    assert extract_main([f"input={mixes}", f"out={tmp_path / 'idx'}", "detector=classifier",
                         f"detector_path={path}", "min_duration=1.0"]) == 0
    index = U.read_index(tmp_path / "idx")
    assert index["inputs"] == len(tracks) and index["settings"]["detector"] == "classifier"
    scores = U.evaluate_index(index, synth_root / "train", SOURCES, silent_db=-100.0)
    print("4-step classifier (untrained, plumbing only):", json.dumps(scores))


def test_cli_errors_are_clear(tmp_path, capsys):
    assert extract_main([f"input={tmp_path}", f"out={tmp_path / 'o'}", "detector=classifier"]) == 2
    assert "detector_path" in capsys.readouterr().err
    assert extract_main([f"input={tmp_path}", f"out={tmp_path / 'o'}"]) == 2
    assert "no track folders" in capsys.readouterr().err


def test_unlabeled_items_and_extra_step_changes_the_weights(oracle_index):
    ds = U.UnlabeledExcerpts(oracle_index, SOURCES, segment=1.0, sample_rate=44100, channels=2)
    item = ds[0]
    assert item["excerpt"].shape == (2, 44100) and 0 <= item["source"] < 4
    with pytest.raises(ValueError, match="no excerpt of at least 60.0 s"):
        U.UnlabeledExcerpts(oracle_index, SOURCES, segment=60.0, sample_rate=44100, channels=2)

    from mss.checkpoint import build_model

    cfg = compose("train", ["paths.output_dir=unused", *TINY_MODEL])
    module = SeparationModule(build_model(cfg.model), WaveformL1(), lambda params: torch.optim.Adam(params, lr=1e-3),
                              sources=SOURCES, sample_rate=44100,
                              unlabeled={"dataset": ds, "proba": 1.0, "batch_size": 2})
    assert not module.automatic_optimization
    main_opt, extra = module.configure_optimizers()
    assert extra.param_groups[0]["lr"] == pytest.approx(1e-4)  # lr / 10
    module.setup("fit")
    before = [p.detach().clone() for p in module.net.parameters()]
    stems = torch.randn(2, 4, 2, 44100) * 0.1
    loss = module._unlabeled_loss(stems)
    assert torch.isfinite(loss)
    extra.zero_grad()
    loss.backward()
    extra.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, module.net.parameters()))


@pytest.mark.slow
def test_training_with_the_unlabeled_step(oracle_index, train_overrides):
    cfg = compose("train", train_overrides + ["module/unlabeled=remix", "module.unlabeled.proba=1.0", "test=false",
                                              f"module.unlabeled.dataset.index={oracle_index}", "debug=fdr"])
    metrics, objects = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/unlabeled_loss"]))
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert objects["trainer"].global_step == 2  # one regular + one extra optimiser step
