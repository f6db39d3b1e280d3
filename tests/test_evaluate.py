"""mss.evaluate: oracles as evaluable models, backend=mss|museval, museval-readable JSON, resume, report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

import mss.evaluate as ev
from mss.run import compose


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """Two-source (vocals, accompaniment) 8 kHz synthetic dataset: museval runs on it in seconds."""
    from mss.data.synth import generate

    return generate(tmp_path_factory.mktemp("data") / "small", sources=["vocals", "accompaniment"], n_train=1,
                    n_valid=0, n_test=1, duration=4.0, sample_rate=8000, seed=3)


def _cfg(root, *overrides):
    return compose("evaluate", ["model=oracle_irm2", "data=synth", f"data.root={root}", "data.synth=null",
                                "data.sources=[vocals,accompaniment]", "data.sample_rate=8000",
                                "paths.output_dir=unused", *overrides])


def _json_scores(out, subset="test"):
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "museval" / subset).glob("*.json"))}


def test_oracle_evaluation_backends_agree_and_files(small_root, tmp_path):
    import museval

    cfg = _cfg(small_root)
    table = ev.evaluate(None, cfg.data, cfg.evaluation, tmp_path / "mss", model_cfg=cfg.model)
    assert list(table.index) == ["vocals", "accompaniment", "mean"]
    for name in ("results.md", "results.csv", "results.tex", "per_track.csv", "boxplot_SDR-v4.png",
                 "per-track_SDR-v4.png", "report.md"):
        assert (tmp_path / "mss" / name).stat().st_size > 0, name
    assert "BSS Eval v4" in (tmp_path / "mss" / "results.md").read_text()
    stamp = json.loads((tmp_path / "mss" / "protocol.json").read_text())
    assert stamp["frames"] == {"win": 1.0, "hop": 1.0} and stamp["subset"] == "test" and stamp["tracks"] == 1
    assert stamp["audio"]["sample_rate"] == 8000 and stamp["dataset"]["synthetic"]["sample_rate"] == 8000
    assert stamp["model"]["target"] == "mss.inference.oracle.Oracle" and stamp["mss_version"]
    assert f"1 tracks (list {stamp['track_list_sha1']})" in (tmp_path / "mss" / "results.md").read_text()
    assert r"\toprule" in (tmp_path / "mss" / "results.tex").read_text()

    cfg = _cfg(small_root, "evaluation.backend=museval", "evaluation.plots=false")
    ev.evaluate(None, cfg.data, cfg.evaluation, tmp_path / "museval", model_cfg=cfg.model)
    ours, ref = _json_scores(tmp_path / "mss"), _json_scores(tmp_path / "museval")
    assert sorted(ours) == sorted(ref) and len(ours) == 1
    for track in ours:
        for t_ours, t_ref in zip(ours[track]["targets"], ref[track]["targets"], strict=True):
            for f_ours, f_ref in zip(t_ours["frames"], t_ref["frames"], strict=True):
                for metric, value in f_ref["metrics"].items():
                    if math.isnan(value):
                        assert math.isnan(f_ours["metrics"][metric])
                    else:
                        assert f_ours["metrics"][metric] == pytest.approx(value, abs=1e-4 if metric != "SDR" else 1e-5)

    # museval's own tooling reads the files and aggregates to our table's numbers
    store = museval.MethodStore()
    store.add_eval_dir(tmp_path / "mss" / "museval")
    agg = store.agg_frames_tracks_scores()
    assert agg.loc[("museval", "vocals", "SDR")] == pytest.approx(table.loc["vocals", "SDR (median)"], abs=1e-9)
    track = next(iter(ours))
    reread = museval.TrackStore(track_name=track)
    reread.scores = json.loads((tmp_path / "mss" / "museval" / "test" / f"{track}.json").read_text())
    reread.validate()


def test_resume_skips_done_tracks(small_root, tmp_path, monkeypatch):
    cfg = _cfg(small_root, "evaluation.sdr_only=true", "evaluation.plots=false")
    calls = []
    real = ev._separate
    monkeypatch.setattr(ev, "_separate", lambda *a: calls.append(a[1]["name"]) or real(*a))
    first = ev.evaluate(None, cfg.data, cfg.evaluation, tmp_path, model_cfg=cfg.model)
    assert len(calls) == 1
    assert np.isnan(first.loc["vocals", "SIR (median)"])  # sdr_only: ISR/SIR/SAR not computed
    again = ev.evaluate(None, cfg.data, cfg.evaluation, tmp_path, model_cfg=cfg.model)
    assert len(calls) == 1  # done: skipped
    pd.testing.assert_frame_equal(first, again)
    (tmp_path / "track_info" / "test" / f"{calls[0]}.json").unlink()  # the track was "interrupted"
    ev.evaluate(None, cfg.data, cfg.evaluation, tmp_path, model_cfg=cfg.model)
    assert calls == [calls[0]] * 2
    # a different metric configuration is not reused
    cfg = _cfg(small_root, "evaluation.plots=false")
    ev.evaluate(None, cfg.data, cfg.evaluation, tmp_path, model_cfg=cfg.model)
    assert len(calls) == 3


def test_evaluate_needs_ckpt_or_model(tmp_path):
    cfg = compose("evaluate", ["paths.output_dir=unused"])
    with pytest.raises(ValueError, match="ckpt=PATH"):
        ev.evaluate(None, cfg.data, cfg.evaluation, tmp_path)


def test_whole_track_metrics_are_selectable(small_root, tmp_path):
    """``evaluation.metrics`` adds whole-track scores beside v4 + nSDR: per-track values in track_info, their mean
    over tracks in the table, equal to the metric functions on the saved estimates."""
    import soundfile as sf
    import torch

    from mss.metrics import si_sdr

    cfg = _cfg(small_root, "evaluation.metrics=[bss_eval_v4,nsdr,si_sdr,bleedless,fullness]",
               "evaluation.save_estimates=true", "evaluation.plots=false")
    table = ev.evaluate(None, cfg.data, cfg.evaluation, tmp_path, model_cfg=cfg.model)
    assert {"nSDR (mean)", "SI-SDR (mean)", "bleedless (mean)", "fullness (mean)"} <= set(table.columns)
    track = next((small_root / "test").iterdir())
    refs = torch.stack([torch.from_numpy(sf.read(track / f"{s}.wav", dtype="float32")[0].T)
                        for s in ("vocals", "accompaniment")])
    est = torch.stack([torch.from_numpy(sf.read(tmp_path / "estimates" / track.name / f"{s}.wav",
                                                dtype="float32")[0].T) for s in ("vocals", "accompaniment")])
    expected = si_sdr(refs, est).tolist()
    assert table.loc[["vocals", "accompaniment"], "SI-SDR (mean)"].tolist() == pytest.approx(expected, abs=1e-4)
    info = json.loads((tmp_path / "track_info" / "test" / f"{track.name}.json").read_text())
    assert set(info["whole_track"]) == {"SI-SDR", "bleedless", "fullness"}
    with pytest.raises(ValueError, match=r"unknown \['pesq'\]"):
        ev.evaluate(None, cfg.data, _cfg(small_root, "evaluation.metrics=[bss_eval_v4,nsdr,pesq]").evaluation,
                    tmp_path / "x", model_cfg=cfg.model)
    with pytest.raises(ValueError, match=r"must include \['bss_eval_v4', 'nsdr'\]"):
        ev.evaluate(None, cfg.data, _cfg(small_root, "evaluation.metrics=[si_sdr]").evaluation, tmp_path / "y",
                    model_cfg=cfg.model)
