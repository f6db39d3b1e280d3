"""Golden tests of mss.metrics.bss_eval_v4 against museval 0.4.1 itself, on generated 16-bit signals.

Tolerances (per frame): SDR 1e-9 dB, ISR/SIR/SAR 1e-4 dB, identical NaN pattern. Most cases run museval's own
``bss_eval`` (what ``museval.evaluate`` calls) at 8 kHz with shorter distortion filters to stay fast; the
SiSEC18 configuration (44.1 kHz, 512 taps, 4 stereo sources, ``museval.evaluate``) runs once, marked slow.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.signal import butter, lfilter, sosfilt

from mss.metrics import (
    IllConditionedWarning,
    TrackScores,
    bss_eval_v3,
    bss_eval_v4,
    evaluate_track,
    frame_sdr,
    n_frames,
)
from mss.metrics.bss_eval import correlations, projections, toeplitz, v4

SR = 8000
TOL = {"SDR": 1e-9, "ISR": 1e-4, "SIR": 1e-4, "SAR": 1e-4}


def signals(n_src: int, seconds: float, channels: int = 2, sr: int = SR, seed: int = 0, bits: int | None = 16,
            silent: tuple[float, float] | None = None, est_silent: tuple[float, float] | None = None,
            ) -> tuple[np.ndarray, np.ndarray]:
    """Band-limited, amplitude-modulated noise sources ``(S, T, C)`` quantised to ``bits`` (TPDF dither), and float32
    estimates with leakage, noise at -26 dB and a short filter. ``silent``: seconds where reference 0 is exactly
    zero; ``est_silent``: seconds where the last estimate is exactly zero."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    refs = np.empty((n_src, n, channels))
    t = np.arange(n) / sr
    for j in range(n_src):
        lo = 0.02 + 0.6 * j / n_src
        sos = butter(4, [lo, lo + 0.15], btype="band", output="sos")
        x = sosfilt(sos, rng.standard_normal((n, channels)), axis=0) * (1 + 0.5 * np.sin(2 * np.pi * (0.5 + j) * t))[
            :, None]
        refs[j] = 0.1 * x / np.sqrt(np.mean(x**2))
    if bits:
        q = 2.0 ** (bits - 1)
        refs = np.round(refs * q + rng.uniform(-0.5, 0.5, refs.shape) + rng.uniform(-0.5, 0.5, refs.shape)) / q
    if silent is not None:
        refs[0, int(silent[0] * sr):int(silent[1] * sr)] = 0.0
    mix = refs.sum(0, keepdims=True)
    ests = refs + 0.1 * (mix - refs) + 0.005 * rng.standard_normal(refs.shape)
    ests = lfilter([0.9, 0.1], [1.0], ests, axis=1)
    if est_silent is not None:
        ests[-1, int(est_silent[0] * sr):int(est_silent[1] * sr)] = 0.0
    return refs, ests.astype(np.float32)


def museval_bss_eval(refs, ests, win, hop, filters_len):
    from museval import metrics

    sdr, isr, sir, sar, _ = metrics.bss_eval(refs, ests, window=win, hop=hop, compute_permutation=False,
                                             filters_len=filters_len, framewise_filters=False,
                                             bsseval_sources_version=False)
    return sdr, isr, sir, sar


def assert_matches(expected, ours) -> dict[str, float]:
    """Same NaN pattern, per-metric max |Δ| within :data:`TOL`; returns the max |Δ| per metric."""
    deltas = {}
    for name, a, b in zip(("SDR", "ISR", "SIR", "SAR"), expected, ours):
        b = b.cpu().numpy()
        assert a.shape == b.shape, name
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{name} NaN pattern")
        both = ~np.isnan(a)
        np.testing.assert_array_equal(np.isinf(a[both]), np.isinf(b[both]), err_msg=name)
        finite = both & np.isfinite(a)
        deltas[name] = float(np.abs(a[finite] - b[finite]).max()) if finite.any() else 0.0
        assert deltas[name] <= TOL[name], (name, deltas[name])
    return deltas


CASES = {
    # id: (sources, seconds, channels, win, hop, filters_len, silent reference 0, silent last estimate)
    "2src-mono-3.7s-silent": (2, 3.7, 1, SR, SR, 128, (0.9, 2.1), None),
    "4src-stereo-2.5s": (4, 2.5, 2, SR, SR, 48, None, None),
    "5src-stereo-2.2s-silent-est": (5, 2.2, 2, SR, SR, 24, None, (0.95, 2.05)),
    "3src-stereo-0.6s-one-frame": (3, 0.6, 2, SR, SR, 64, None, None),
    "2src-stereo-overlap-silent": (2, 3.3, 2, SR, SR // 2, 64, (0.5, 1.7), (2.0, 3.1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_museval(case):
    n_src, seconds, channels, win, hop, taps, silent, est_silent = CASES[case]
    refs, ests = signals(n_src, seconds, channels, silent=silent, est_silent=est_silent, seed=len(case))
    expected = museval_bss_eval(refs, ests, win, hop, taps)
    ours = bss_eval_v4(refs, ests, win, hop, filters_len=taps)
    assert ours.reliable and ours.cond < 1e11
    assert assert_matches(expected, ours)
    nwin, _ = n_frames(refs.shape[1], win, hop)
    assert ours.sdr.shape == (n_src, nwin) and ours.sdr.dtype == torch.float64
    if silent or est_silent:
        assert np.isnan(expected[0]).any() and not np.isnan(expected[0]).all()  # the NaN rule is exercised


def test_matches_museval_evaluate_with_padding_and_mono_2d():
    """``museval.evaluate`` itself (512 taps): estimates longer / shorter than the references are truncated /
    zero-padded; ``(S, T)`` input is mono."""
    import museval

    refs, ests = signals(2, 2.2, 1, seed=3, silent=(0.9, 2.05))
    for est in (np.concatenate([ests, ests[:, :1000]], axis=1), ests[:, :-700]):
        expected = museval.evaluate(refs, est, win=SR, hop=SR)
        assert_matches(expected, bss_eval_v4(refs, est, SR, SR))
    expected = museval.evaluate(refs[..., 0], ests[..., 0], win=SR, hop=SR)
    assert_matches(expected, bss_eval_v4(refs[..., 0], ests[..., 0], SR, SR))


def test_silent_stem_raises_like_museval():
    refs, ests = signals(3, 1.5, 2)
    for which in ("reference", "estimate"):
        r, e = refs.copy(), ests.copy()
        (r if which == "reference" else e)[1] = 0.0
        with pytest.raises(ValueError, match="non-silent"):
            museval_bss_eval(r, e, SR, SR, 32)
        with pytest.raises(ValueError, match=rf"{which} source\(s\) \[1\] are silent"):
            bss_eval_v4(r, e, SR, SR)


def test_sdr_only_and_frame_sdr_batched():
    refs, ests = signals(3, 3.2, 2, silent=(0.9, 2.1))
    full = bss_eval_v4(refs, ests, SR, SR, filters_len=32)
    fast = bss_eval_v4(refs, ests, SR, SR, sdr_only=True)
    torch.testing.assert_close(fast.sdr, full.sdr, equal_nan=True, rtol=0, atol=0)
    assert fast.isr.isnan().all() and math.isnan(fast.cond)
    # frame_sdr on (B, S, C, T) tensors: batch items are independent and equal the museval SDR
    r = torch.from_numpy(refs).permute(0, 2, 1)
    e = torch.from_numpy(ests).permute(0, 2, 1)
    batch = frame_sdr(torch.stack([r, r]), torch.stack([e, r + 0.5 * (e - r)]), SR, SR, chunk_frames=1)
    assert batch.shape == (2, 3, 3)
    torch.testing.assert_close(batch[0], full.sdr, equal_nan=True, rtol=0, atol=1e-9)  # other layout: other sum order
    expected = full.sdr + 20 * math.log10(2)  # half the error: +6.02 dB
    torch.testing.assert_close(batch[1], expected, equal_nan=True, rtol=0, atol=1e-9)


@pytest.mark.parametrize(("block_fft", "length", "lags", "chunk"),
                         [(256, 3001, 48, None), (128, 1000, 40, 1), (4096, 20000, 512, 3), (64, 500, 1, None)])
def test_correlations_are_exact(monkeypatch, block_fft, length, lags, chunk):
    """The block correlations (products within blocks, plus those straddling block boundaries) equal the direct
    sums, for several blocks per chunk, one block per chunk, and a partial last chunk."""
    monkeypatch.setattr(correlations, "_CORR_FFT", block_fft)
    rng = np.random.default_rng(0)
    refs = torch.from_numpy(rng.standard_normal((3, 2, length)))
    ests = torch.from_numpy(rng.standard_normal((3, 2, length)).astype(np.float32))
    r = correlations.cross_correlations([refs, ests], 6, lags, chunk).numpy()
    rows = np.concatenate([refs.reshape(6, -1).numpy(), ests.reshape(6, -1).double().numpy()])
    ext = lags - 1
    direct = np.stack([[np.correlate(x, y, "full")[length - 1 - ext:length + ext] for y in rows] for x in rows[:6]])
    np.testing.assert_allclose(r, direct, rtol=0, atol=1e-12 * np.abs(direct).max())


def test_block_toeplitz_factor_is_the_cholesky_factor():
    """On CPU the Gram matrix is factorised by the block Schur recursion without being formed: in tap-major order its
    factor is the dense Cholesky factor and its FFT products are the dense ones; a singular matrix (a duplicated
    channel) is refused, so the caller falls back to the dense path."""
    refs, _ = signals(3, 2.0, 2)
    stems = v4._as_stems(refs, "references")
    lags, x = 48, 6
    r = correlations.cross_correlations([stems], x, lags)
    gram = toeplitz.gram(r, lags)
    gram.diagonal().add_(toeplitz.EPS)
    order = torch.arange(x * lags).view(x, lags).T.flatten()  # tap-major
    gram = gram[order][:, order]
    upper = torch.from_numpy(toeplitz.schur_factor(r.numpy(), lags))
    chol = torch.linalg.cholesky(gram)
    torch.testing.assert_close(upper.triu().mT, chol, rtol=0, atol=1e-8 * float(chol.abs().max()))
    v = torch.randn(x * lags, 3, dtype=torch.float64)
    torch.testing.assert_close(toeplitz.toeplitz_apply(r, lags)(v), gram @ v, rtol=1e-10, atol=1e-12)
    # a batch (the own-source systems) is factorised and multiplied like its members, one at a time
    pairs = torch.stack([r[:2, :2], r[2:4, 2:4]])
    batched = toeplitz.schur_factor(pairs.numpy(), lags)
    w = torch.randn(2, 2 * lags, 3, dtype=torch.float64)
    for k in range(2):
        single = np.triu(toeplitz.schur_factor(pairs[k].numpy(), lags))
        np.testing.assert_allclose(np.triu(batched[k]), single, rtol=0, atol=1e-12 * np.abs(single).max())
        torch.testing.assert_close(toeplitz.toeplitz_apply(pairs, lags)(w)[k],
                                   toeplitz.toeplitz_apply(pairs[k], lags)(w[k]))
    twin = correlations.cross_correlations([stems[:, :1].repeat(1, 2, 1)], x, lags)
    assert toeplitz.schur_factor(twin.numpy(), lags) is None
    assert toeplitz.schur_factor(torch.stack([r, twin]).numpy(), lags) is None  # one singular member refuses the batch


def test_dense_path_gives_the_same_metrics(monkeypatch):
    """The dense Cholesky path (CUDA, or when the Schur recursion is refused) agrees with the block Toeplitz one."""
    refs, ests = signals(4, 2.5, 2, seed=1)
    fast = bss_eval_v4(refs, ests, SR, SR, filters_len=48)
    monkeypatch.setattr(projections, "toeplitz_solve", lambda *args, **kw: None)
    dense = bss_eval_v4(refs, ests, SR, SR, filters_len=48)
    for a, b in zip(fast, dense):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, equal_nan=True)
    assert fast.reliable and dense.reliable and abs(fast.cond / dense.cond - 1) < 0.05


def test_the_flag_follows_the_error_bound_not_the_condition_number():
    """Band-limited float references without a noise floor: cond(G) ~ 5e14, yet the solved normal equations bound
    the error of ISR/SIR/SAR below the flag's 0.01 dB, and the exact projection (explicit least squares) is within
    that bound: no warning. SDR never depends on the filters."""
    refs, ests = signals(2, 2.0, 2, bits=None)
    n = refs.shape[1]
    expected = museval_bss_eval(refs, ests, n, n, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = bss_eval_v4(refs, ests, n, n, filters_len=64)
    assert ours.cond > 1e14 and ours.reliable and (ours.error_db > 0).all()
    error = np.abs(np.stack([m[:, 0].numpy() for m in ours[1:]]) - exact_image_metrics(refs, ests, 64)).max(0)
    assert (error <= ours.error_db).all()
    np.testing.assert_allclose(ours.sdr.numpy(), expected[0], rtol=0, atol=1e-9)


def test_track_scores_json_is_museval_trackstore_json():
    import museval

    refs, ests = signals(3, 3.0, 2, silent=(0.9, 2.1))
    ours = evaluate_track(refs, ests, ["vocals", "drums", "bass"], "song", sample_rate=SR)
    store = museval.TrackStore(track_name="song", win=1.0, hop=1.0)
    for j, name in enumerate(["vocals", "drums", "bass"]):
        store.add_target(target_name=name, values={m: ours.values(m)[j].tolist() for m in ("SDR", "SIR", "ISR",
                                                                                             "SAR")})
    assert ours.json == store.json
    ours.validate()
    import pandas as pd

    pd.testing.assert_frame_equal(ours.df, store.df.reset_index(drop=True), check_dtype=False)
    back = TrackScores.from_json(ours.json, "song")
    assert back.json == ours.json and back.hop == 1.0


@pytest.mark.slow
def test_matches_museval_evaluate_sisec18_setting():
    """4 stereo 16-bit sources at 44.1 kHz, 3.5 s, 512 taps, one silent section: ``museval.evaluate`` defaults."""
    import museval

    refs, ests = signals(4, 3.5, 2, sr=44100, silent=(0.9, 2.1))
    expected = museval.evaluate(refs, ests)
    ours = bss_eval_v4(refs, ests)
    assert ours.reliable
    assert_matches(expected, ours)


def exact_image_metrics(refs: np.ndarray, ests: np.ndarray, taps: int) -> np.ndarray:
    """Oracle: ISR, SIR, SAR ``(3, S)`` of one whole-signal frame by least squares on the explicit matrix of delayed
    reference channels (``lstsq`` by SVD drops exactly dependent columns: the exact projection even where the Gram
    matrix is singular). Independent of museval and of mss; small signals only."""
    import scipy.linalg

    n_src, n, n_ch = refs.shape

    def delayed(x):  # (T,) -> (T + taps - 1, taps)
        return scipy.linalg.toeplitz(np.r_[x, np.zeros(taps - 1)], np.r_[x[0], np.zeros(taps - 1)])

    basis = np.concatenate([delayed(refs[j, :, c]) for j in range(n_src) for c in range(n_ch)], 1)
    pad = np.zeros((taps - 1, n_ch))
    out = []
    for e in range(n_src):
        s, est = np.r_[refs[e], pad], np.r_[ests[e], pad]
        own_basis = basis[:, e * n_ch * taps:(e + 1) * n_ch * taps]
        proj = basis @ np.linalg.lstsq(basis, est, rcond=None)[0]
        own = own_basis @ np.linalg.lstsq(own_basis, est, rcond=None)[0]
        db = lambda a, b: 10 * np.log10(np.sum(a**2) / np.sum(b**2))  # noqa: E731
        out.append((db(s, own - s), db(own, proj - own), db(proj, est - proj)))
    return np.array(out).T


def panned_mono_track(panned, bit_depth=16, seconds=3.0):
    """A generated 4-stem track at 8 kHz with panned-mono stems, and estimates with leakage and noise."""
    from mss.data.synth import render_track

    audio = render_track("test", 1, duration=seconds, sample_rate=SR, bit_depth=bit_depth, panned_mono=panned)
    scale = 2.0**15 if bit_depth == 16 else 1.0
    refs = np.stack([audio[s] / scale for s in ("drums", "bass", "other", "vocals")]).astype(np.float64)
    ests = refs + 0.3 * refs[[1, 2, 3, 0]] + 0.01 * np.random.default_rng(0).standard_normal(refs.shape)
    return refs, ests


@pytest.mark.parametrize(("panned", "copies"), [({"bass": 0.0, "vocals": 0.0}, [[], [1], [], [1]]),
                                                ({"bass": 0.3, "vocals": -0.2}, [[], [], [], []])])
def test_panned_mono_stems_are_exact_and_match_museval(panned, copies):
    """Bit-identical channels (centred mono, 16 bit) are left out of the singular systems as copies; scaled copies up
    to 16-bit rounding are kept (the rounding is signal). Both: the exact projection (explicit least squares) and
    museval within the usual tolerances, not flagged, with a small error bound."""
    refs, ests = panned_mono_track(panned)
    n = refs.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = bss_eval_v4(refs, ests, n, n, filters_len=32)
    assert ours.copies == copies and ours.reliable and (ours.error_db < 1e-3).all()
    assert_matches(museval_bss_eval(refs, ests, n, n, 32), ours)
    exact = exact_image_metrics(refs, ests, 32)
    np.testing.assert_allclose(np.stack([m[:, 0].numpy() for m in ours[1:]]), exact, rtol=0, atol=1e-6)


def test_exact_scaled_copies_silent_channels_and_the_error_bound():
    """Channels that are exact scaled copies in float64 (or silent) make museval's Gram matrix singular; mss leaves
    them out and gets the exact projection. Float references on a 2⁻²³ grid keep nearly dependent channels: the
    warning names the sources, and the actual error stays within the reported bound."""
    refs, ests = panned_mono_track(None)
    refs[1] = refs[1, :, :1] * np.array([0.8, -0.55])
    refs[2, :, 1] = 0.0
    n = refs.shape[1]
    ours = bss_eval_v4(refs, ests, n, n, filters_len=32)
    assert ours.copies == [[], [1], [1], []] and ours.reliable
    exact = exact_image_metrics(refs, ests, 32)
    np.testing.assert_allclose(np.stack([m[:, 0].numpy() for m in ours[1:]]), exact, rtol=0, atol=1e-6)

    refs, ests = panned_mono_track({"bass": 0.3, "vocals": -0.2}, bit_depth=32)
    with pytest.warns(IllConditionedWarning, match=r"source\(s\) .*dB"):
        ours = bss_eval_v4(refs, ests, n, n, filters_len=32)
    assert ours.unreliable and not ours.reliable and ours.copies == [[], [], [], []]
    error = np.abs(np.stack([m[:, 0].numpy() for m in ours[1:]]) - exact_image_metrics(refs, ests, 32)).max(0)
    assert (error <= ours.error_db).all() and (ours.error_db < 1.0).all()  # a bound, and not a vacuous one


def test_empty_signals_are_a_clear_error():
    with pytest.raises(ValueError, match="empty"):
        bss_eval_v4(np.zeros((2, 0, 2)), np.zeros((2, 0, 2)))


V3_CASES = {  # (sources, seconds, channels, win, hop, taps, silent reference 0)
    "stereo-3src-overlap": (3, 3.2, 2, SR, SR // 2, 32, None),
    "mono-2src-silent": (2, 3.0, 1, SR, SR, 32, (0.9, 2.1)),
    "short-one-frame": (2, 0.7, 2, SR, SR, 16, None),
}


@pytest.mark.parametrize("case", sorted(V3_CASES))
def test_v3_matches_museval_v3_mode(case):
    """Framewise filters (museval ``mode='v3'``, i.e. ``bss_eval(framewise_filters=True)``): same tolerances as v4;
    SDR equals v4's, and ISR/SIR/SAR differ from v4's (the filters are the difference)."""
    from museval import metrics

    n_src, seconds, channels, win, hop, taps, silent = V3_CASES[case]
    refs, ests = signals(n_src, seconds, channels, silent=silent, seed=3)
    expected = metrics.bss_eval(refs, ests, window=win, hop=hop, compute_permutation=False, filters_len=taps,
                                framewise_filters=True, bsseval_sources_version=False)[:4]
    ours = bss_eval_v3(refs, ests, win, hop, filters_len=taps)
    assert ours.reliable
    assert_matches(expected, ours)
    v4_result = bss_eval_v4(refs, ests, win, hop, filters_len=taps)
    torch.testing.assert_close(ours.sdr, v4_result.sdr, rtol=0, atol=1e-12, equal_nan=True)
    if refs.shape[1] > win:
        finite = ours.sir.isfinite()
        assert (ours.sir[finite] - v4_result.sir[finite]).abs().max() > 1e-3


def test_v3_leaves_out_copied_channels_per_frame():
    refs, ests = panned_mono_track({"bass": 0.0}, seconds=2.5)
    ours = bss_eval_v3(refs, ests, SR, SR, filters_len=16)
    from museval import metrics

    expected = metrics.bss_eval(refs, ests, window=SR, hop=SR, compute_permutation=False, filters_len=16,
                                framewise_filters=True, bsseval_sources_version=False)[:4]
    assert ours.copies == [[], [1], [], []]
    assert_matches(expected, ours)
