"""Statistics of mss.report.statistics on constructed per-track scores with known answers: identical methods are
not different, a constant shift lies inside its CI and is significant, the Wilcoxon statistic equals the rank sum
computed by hand, Holm's adjustment on a textbook example, NaN tracks dropped, seeded and level-dependent CIs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mss.report.statistics import bootstrap_ci, format_ci, holm, paired, summary

SOURCES = ["drums", "bass", "other", "vocals"]


def per_track(scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long table from ``method -> (tracks, sources)`` SDR arrays."""
    rows = [{"method": m, "track": f"t{t:02d}", "target": s, "metric": "SDR", "score": float(x[t, j])}
            for m, x in scores.items() for t in range(x.shape[0]) for j, s in enumerate(SOURCES)]
    return pd.DataFrame(rows)


def base(n: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(6.0, 2.0, size=(n, len(SOURCES)))


def test_identical_methods_are_not_different():
    a = base()
    table = paired(per_track({"A": a, "B": a.copy()}), resamples=2000)
    assert (table["difference"] == 0).all() and (table["low"] == 0).all() and (table["high"] == 0).all()
    assert not table["significant"].any() and (table["p_holm"] == 1).all()


def test_a_constant_shift_lies_inside_its_ci_and_is_significant():
    a = base()
    noise = np.random.default_rng(1).normal(0, 0.05, size=a.shape)
    table = paired(per_track({"A": a + 0.5 + noise, "B": a}), resamples=4000)
    assert ((table["low"] <= 0.5) & (0.5 <= table["high"])).all(), table
    assert (table["high"] - table["low"] < 0.2).all() and table["significant"].all()
    assert (table["n"] == 30).all()


def test_wilcoxon_statistic_is_the_smaller_signed_rank_sum():
    a, b = base(20, 2), base(20, 3)
    table = paired(per_track({"A": a, "B": b}), resamples=1000)
    diff = a[:, 1] - b[:, 1]
    ranks = stats.rankdata(np.abs(diff))
    expected = min(ranks[diff > 0].sum(), ranks[diff < 0].sum())
    assert table.loc[("A", "B", "bass"), "wilcoxon"] == pytest.approx(expected)
    assert table.loc[("A", "B", "bass"), "p"] == pytest.approx(stats.wilcoxon(diff).pvalue)


def test_holm_adjustment_on_a_textbook_example():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.2, np.nan, 0.9])
    assert np.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.4) and adjusted[2] == pytest.approx(0.9)


def test_summary_ci_covers_the_median_is_seeded_and_widens_with_the_level():
    x = base(50, 4)
    table = summary(per_track({"A": x}), resamples=4000, seed=3)
    row = table.loc[("A", "vocals")]
    assert row["estimate"] == pytest.approx(np.median(x[:, 3])) and row["low"] < row["estimate"] < row["high"]
    assert row["low"] < 6.0 < row["high"]  # the distribution's median
    assert table.equals(summary(per_track({"A": x}), resamples=4000, seed=3))
    wide = summary(per_track({"A": x}), resamples=4000, seed=3, level=0.99).loc[("A", "vocals")]
    assert wide["low"] < row["low"] and wide["high"] > row["high"]
    mean_row = table.loc[("A", "mean")]
    assert mean_row["estimate"] == pytest.approx(np.median(x.mean(1)))
    pct = bootstrap_ci(x[:, 0], method="percentile", resamples=4000)
    assert pct[1] < pct[0] < pct[2]


def test_nan_tracks_are_dropped_per_source_and_from_the_pairs():
    a, b = base(), base(seed=5)
    a[3, 0] = np.nan  # drums silent in one track: museval leaves it NaN
    s = summary(per_track({"A": a}), resamples=500)
    assert s.loc[("A", "drums"), "n"] == 29 and s.loc[("A", "bass"), "n"] == 30 and s.loc[("A", "mean"), "n"] == 29
    p = paired(per_track({"A": a, "B": b}), resamples=500)
    assert p.loc[("A", "B", "drums"), "n"] == 29 and p.loc[("A", "B", "vocals"), "n"] == 30


def test_bad_arguments_are_clear_errors_and_cis_print_compactly():
    with pytest.raises(ValueError, match="stat='mode'"):
        bootstrap_ci([1.0, 2.0], stat="mode")
    with pytest.raises(ValueError, match="two methods"):
        paired(per_track({"A": base()}))
    with pytest.raises(ValueError, match="no SIR scores"):
        summary(per_track({"A": base()}), metric="SIR")
    assert format_ci(9.1234, 8.9, 9.4, mark=True) == "9.12 [8.90, 9.40]*" and format_ci(np.nan, 0, 0) == "–"


def test_batched_bootstrap_equals_one_scipy_call_per_sample():
    """The vectorised bootstrap of a results table gives each sample exactly the interval of its own
    ``scipy.stats.bootstrap`` call on the sample's values in ascending order (same seed, so the same resampled
    indices; scipy resamples the values itself there), for both statistics and both methods, unequal sizes, NaN,
    constant and empty samples included; the order of the values (tracks) does not matter."""
    from scipy import stats as sps

    from mss.report.statistics import bootstrap_cis

    rng = np.random.default_rng(3)
    samples = [rng.normal(size=40) for _ in range(20)] + [rng.normal(size=31), [np.nan, 1.0, 2.0, 5.0], [2.0] * 5, []]
    for stat, fn in (("median", np.median), ("mean", np.mean)):
        for method in ("BCa", "percentile"):
            batched = bootstrap_cis(samples, stat, resamples=2000, seed=5, method=method)
            shuffled = bootstrap_cis([rng.permutation(x) for x in samples], stat, resamples=2000, seed=5,
                                     method=method)
            assert np.allclose(batched, shuffled, equal_nan=True, rtol=0, atol=1e-12)
            for x, (estimate, low, high) in zip(samples, batched):
                x = np.asarray(x, dtype=float)
                x = np.sort(x[np.isfinite(x)])
                if x.size == 0:
                    assert np.isnan(estimate) and np.isnan(low)
                    continue
                if np.all(x == x[0]):
                    assert estimate == low == high == x[0]
                    continue
                ref = sps.bootstrap((x,), lambda a, axis, fn=fn: fn(a, axis=axis), n_resamples=2000,
                                    vectorized=True, method=method, rng=np.random.default_rng(5))
                assert estimate == pytest.approx(fn(x))
                assert (low, high) == pytest.approx(tuple(ref.confidence_interval), abs=1e-12)


def test_vectorised_wilcoxon_equals_one_scipy_call_per_sample():
    """Exact-p samples, samples with zeros or tied magnitudes (normal approximation), unequal sizes, all-zero and
    empty samples: each gets the statistic and p of its own ``scipy.stats.wilcoxon`` call."""
    from mss.report.statistics import wilcoxon_tests

    rng = np.random.default_rng(4)
    diffs = [rng.normal(0.2, 1, 30) for _ in range(6)] + [rng.normal(size=12)]
    diffs += [np.round(rng.normal(0.5, 1, 30), 1) for _ in range(4)]  # ties and zeros
    diffs += [np.zeros(5), np.array([])]
    got = wilcoxon_tests(diffs)
    for d, (w, p) in zip(diffs[:-2], got):
        ref = stats.wilcoxon(d, zero_method="wilcox")
        assert (w, p) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-12)
    assert np.isnan(got[-2][0]) and got[-2][1] == 1.0 and np.isnan(got[-1]).all()
