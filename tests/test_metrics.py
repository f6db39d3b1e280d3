"""Tests for mss.metrics: nSDR / SI-SDR and the museval BSS Eval v4 wrappers.

museval is run on short, low-rate signals (8 kHz, 6.5 s, 3 stereo sources; ~2 s per evaluation) with a white-noise
floor on the references so that museval's reference Gram matrix is well conditioned.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from mss.metrics import aggregate, evaluate_track, nsdr, save_track_json, si_sdr, track_medians

SR = 8000
SOURCES = ["vocals", "drums", "bass"]
N_SAMPLES = int(6.5 * SR)  # 6 full 1-s frames; the trailing half second is dropped by museval
SILENT = slice(2 * SR, 4 * SR)  # vocals reference digitally silent in frames 2 and 3


def _signals(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """References and estimates ``(S, T, C)``; vocals silent over :data:`SILENT`."""
    rng = np.random.default_rng(seed)
    refs = np.empty((len(SOURCES), N_SAMPLES, 2))
    for j in range(len(SOURCES)):
        x = rng.standard_normal((N_SAMPLES, 2))
        b = np.ones(4 * (j + 1)) / (4 * (j + 1))  # different low-pass colours per source
        refs[j] = np.stack([np.convolve(x[:, c], b, mode="same") for c in range(2)], axis=1) * 0.1
    refs += 1e-3 * rng.standard_normal(refs.shape)  # noise floor: well-conditioned Gram matrix
    refs[0, SILENT] = 0.0
    ests = refs + 0.1 * (refs.sum(0, keepdims=True) - refs) + 0.01 * rng.standard_normal(refs.shape)
    return refs, ests.astype(np.float32)


@pytest.fixture(scope="module")
def evaluated() -> tuple[np.ndarray, np.ndarray, object]:
    refs, ests = _signals()
    store = evaluate_track(refs, ests, SOURCES, "track A", sample_rate=SR)
    return refs, ests, store


# ----------------------------------------------------------------------------------------------- nsdr / si_sdr


def test_nsdr_known_values() -> None:
    torch.manual_seed(0)
    ref = torch.randn(4, 2, 1000)
    assert torch.allclose(nsdr(ref, 0.5 * ref), torch.full((4,), 10 * math.log10(4.0)), atol=1e-4)
    assert float(nsdr(ref, 0.5 * ref)[0]) == pytest.approx(6.0206, abs=1e-4)
    perfect = nsdr(ref, ref)
    assert bool((perfect > 90).all())
    # silent reference with a non-silent estimate: strongly negative, never NaN
    silent = nsdr(torch.zeros(1, 2, 100), torch.ones(1, 2, 100))
    assert float(silent[0]) < -80


def test_nsdr_shapes_and_dtype() -> None:
    ref = torch.randn(3, 5, 4, 2, 200)
    est = ref + 0.1 * torch.randn_like(ref)
    out = nsdr(ref, est)
    assert out.shape == (3, 5, 4) and out.dtype == torch.float32
    assert nsdr(ref.double(), est.double()).dtype == torch.float64
    # batch elements are independent
    torch.testing.assert_close(out[1, 2], nsdr(ref[1, 2], est[1, 2]))
    with pytest.raises(ValueError, match="shape"):
        nsdr(ref, est[..., :-1])


def test_si_sdr() -> None:
    torch.manual_seed(0)
    ref = torch.randn(2, 3, 2, 500)
    noise = torch.randn_like(ref)
    base = si_sdr(ref, ref + 0.3 * noise)
    assert base.shape == (2, 3)
    # scale invariance: rescaling the estimate does not change the score
    torch.testing.assert_close(si_sdr(ref, 5.0 * (ref + 0.3 * noise)), base, atol=1e-4, rtol=0)
    # an estimate that is a scaled reference is perfect
    assert bool((si_sdr(ref, 0.5 * ref) > 70).all())
    # orthogonal error: SI-SDR equals the plain SNR
    r = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])
    e = torch.tensor([[[1.0, 0.5, 0.0, 0.0]]])
    assert float(si_sdr(r, e)[0]) == pytest.approx(10 * math.log10(1 / 0.25), abs=1e-5)


# ----------------------------------------------------------------------------------------------- museval


def _frame_snr(refs: np.ndarray, ests: np.ndarray) -> np.ndarray:
    """Independent v4 SDR: 10·log10(Σ s² / Σ (ŝ − s)²) per 1-s frame, both channels; ``(S, n_frames)``."""
    n_frames = refs.shape[1] // SR
    out = np.empty((refs.shape[0], n_frames))
    for t in range(n_frames):
        s = refs[:, t * SR : (t + 1) * SR].astype(np.float64)
        e = ests[:, t * SR : (t + 1) * SR].astype(np.float64) - s
        with np.errstate(divide="ignore"):  # silent frames give -inf; museval gives NaN there
            out[:, t] = 10 * np.log10((s**2).sum(axis=(1, 2)) / (e**2).sum(axis=(1, 2)))
    return out


def _scores(store, metric: str) -> np.ndarray:
    """``(S, n_frames)`` values of one metric from a TrackStore, in target order."""
    return np.array(
        [[float(f["metrics"][metric]) for f in t["frames"]] for t in store.scores["targets"]],
        dtype=np.float64,
    )


def test_evaluate_track_sdr_is_frame_snr_and_silent_frames_nan(evaluated) -> None:
    refs, ests, store = evaluated
    assert [t["name"] for t in store.scores["targets"]] == SOURCES
    expected = _frame_snr(refs, ests)
    nan_frames = [2, 3]  # vocals reference silent there -> NaN for *all* sources and metrics
    for metric in ("SDR", "SIR", "ISR", "SAR"):
        values = _scores(store, metric)
        assert values.shape == (3, 6)
        assert np.isnan(values[:, nan_frames]).all()
        assert np.isfinite(np.delete(values, nan_frames, axis=1)).all()
    sdr = _scores(store, "SDR")
    ok = [0, 1, 4, 5]
    np.testing.assert_allclose(sdr[:, ok], expected[:, ok], atol=1e-4, rtol=0)
    # the aggregation skips the NaN frames: per-track median == median of the valid frames
    med = track_medians([store]).set_index(["target", "metric"])["score"]
    for j, name in enumerate(SOURCES):
        assert med[(name, "SDR")] == pytest.approx(np.median(sdr[j, ok]), abs=1e-9)


def test_evaluate_track_json_roundtrip(evaluated, tmp_path) -> None:
    _, _, store = evaluated
    path = save_track_json(store, tmp_path / "test" / "track A.json")
    assert sorted(p.name for p in path.parent.iterdir()) == ["track A.json"]  # no temp file left behind
    text = path.read_text()
    assert "NaN" in text
    data = json.loads(text)  # Python's json accepts museval's NaN literals
    assert data["museval_version"]
    assert [t["name"] for t in data["targets"]] == SOURCES
    for target in data["targets"]:
        assert len(target["frames"]) == 6
        for i, frame in enumerate(target["frames"]):
            assert frame["time"] == pytest.approx(i * 1.0) and frame["duration"] == pytest.approx(1.0)
            assert set(frame["metrics"]) == {"SDR", "SIR", "SAR", "ISR"}
    sdr = _scores(store, "SDR")
    assert data["targets"][1]["frames"][0]["metrics"]["SDR"] == pytest.approx(sdr[1, 0])
    store.validate()  # museval's own JSON schema


def test_evaluate_track_errors() -> None:
    refs, ests = _signals()
    bad = refs.copy()
    bad[1] = 0.0
    with pytest.raises(ValueError, match=r"track 'tr'.*reference.*drums"):
        evaluate_track(bad, ests, SOURCES, "tr", sample_rate=SR)
    bad = ests.copy()
    bad[2] = 0.0
    with pytest.raises(ValueError, match=r"estimate.*bass"):
        evaluate_track(refs, bad, SOURCES, "tr", sample_rate=SR)
    with pytest.raises(ValueError, match="shape"):
        evaluate_track(refs, ests[:, :-1], SOURCES, "tr", sample_rate=SR)
    with pytest.raises(ValueError, match="source names"):
        evaluate_track(refs, ests, SOURCES[:2], "tr", sample_rate=SR)


def _store(name: str, sdr: dict[str, list[float]]):
    """Hand-built TrackStore: SDR values as given, other metrics = SDR + 1."""
    import museval

    store = museval.TrackStore(track_name=name, win=1.0, hop=1.0)
    for target, values in sdr.items():
        plus = [v + 1 for v in values]
        store.add_target(target_name=target, values={"SDR": values, "SIR": plus, "ISR": plus, "SAR": plus})
    return store


def test_aggregate_median_mean_semantics() -> None:
    import museval

    nan = math.nan
    stores = [
        _store("A", {"vocals": [1, 2, 3, nan], "bass": [0, 0, 0, 0]}),  # vocals median 2
        _store("B", {"vocals": [5, nan, 7], "bass": [1, 1, 1]}),  # 6
        _store("C", {"vocals": [10, 12], "bass": [4, 4]}),  # 11
        _store("D", {"vocals": [nan, nan], "bass": [nan, nan]}),  # all NaN: skipped
    ]
    per_track = track_medians(stores)
    assert len(per_track) == 4 * 2 * 4  # (track, target, metric)
    voc = per_track[(per_track.target == "vocals") & (per_track.metric == "SDR")].set_index("track")["score"]
    assert voc["A"] == 2 and voc["B"] == 6 and voc["C"] == 11 and math.isnan(voc["D"])

    agg = aggregate(stores)
    assert agg.loc[("vocals", "SDR"), "median"] == pytest.approx(6.0)
    assert agg.loc[("vocals", "SDR"), "mean"] == pytest.approx(19 / 3)
    assert agg.loc[("vocals", "SIR"), "mean"] == pytest.approx(19 / 3 + 1)
    assert agg.loc[("vocals", "SDR"), "n_tracks"] == 3
    assert agg.loc[("bass", "SDR"), "median"] == pytest.approx(1.0)
    assert agg.loc[("bass", "SDR"), "mean"] == pytest.approx(5 / 3)

    # same median-of-medians as museval's EvalStore; DataFrames (store.df) are accepted too
    evalstore = museval.EvalStore(frames_agg="median", tracks_agg="median")
    for s in stores:
        evalstore.add_track(s)
    reference = evalstore.agg_frames_tracks_scores()
    pd.testing.assert_series_equal(agg["median"], reference, check_names=False)
    pd.testing.assert_frame_equal(aggregate([s.df for s in stores]), agg)


def _tones(n: int = 8800, freqs=(220.5, 441.0, 882.0)) -> torch.Tensor:
    """Orthogonal stereo tones (whole periods at 44.1 kHz): ``(S, 2, n)``."""
    t = torch.arange(n, dtype=torch.float64) / 44100
    return torch.stack([torch.stack([torch.sin(2 * math.pi * f * t), torch.cos(2 * math.pi * f * t)]) for f in freqs])


def test_si_sir_sar_split_interference_from_artefacts():
    from mss.metrics import si_sir_sar

    refs = _tones()
    est = refs.clone()
    est[0] = refs[0] + 0.1 * refs[1]  # interference only: -20 dB
    noise = torch.sin(2 * math.pi * 2205.0 * torch.arange(8800, dtype=torch.float64) / 44100)
    est[2] = refs[2] + 0.01 * noise  # artefact only (orthogonal to every reference): -40 dB
    sir, sar = si_sir_sar(refs, est)
    assert sir[0].item() == pytest.approx(20.0, abs=1e-6) and sar[0].item() > 100
    assert sar[2].item() == pytest.approx(40.0, abs=1e-6) and sir[2].item() > 100
    assert sir[1].item() > 100 and sar[1].item() > 100


def test_bleedless_fullness_and_l1_freq_known_answers():
    from mss.metrics import bleedless_fullness, l1_freq

    refs = torch.randn(2, 2, 44100, generator=torch.Generator().manual_seed(0))
    bleedless, fullness = bleedless_fullness(refs, refs.clone(), 44100)
    assert bleedless.tolist() == [100.0, 100.0] and fullness.tolist() == [100.0, 100.0]
    bleedless, fullness = bleedless_fullness(refs, 0.5 * refs, 44100)  # every mel bin 6.02 dB down, none up
    assert bleedless.tolist() == [100.0, 100.0]
    assert fullness.tolist() == pytest.approx([100 / (1 + 20 * math.log10(2))] * 2, rel=1e-4)
    bleedless, _ = bleedless_fullness(refs, 2.0 * refs, 44100)
    assert bleedless.tolist() == pytest.approx([100 / (1 + 20 * math.log10(2))] * 2, rel=1e-4)
    assert l1_freq(refs, refs.clone()).tolist() == [100.0, 100.0]
    worse = l1_freq(refs, 0.9 * refs)
    assert (worse < 100).all() and (l1_freq(refs, 0.5 * refs) < worse).all()
    with pytest.raises(ValueError, match=r"\(S, C, T\)"):
        l1_freq(refs[0], refs[0])
