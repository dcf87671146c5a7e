"""experiments.stats: bootstrap intervals of medians, the paired bootstrap and the one verdict rule."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments import stats
from experiments.stats import Interval, THRESHOLDS, combine, verdict


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_verdict_on_both_sides_of_every_threshold(name):
    t = stats.threshold(name)
    eps = max(abs(t) * 0.01, 1e-6)
    above = Interval(t + 2 * eps, t + eps, t + 3 * eps, 10)  # whole interval above
    below = Interval(t - 2 * eps, t - 3 * eps, t - eps, 10)  # whole interval below
    across = Interval(t, t - eps, t + eps, 10)  # contains the threshold
    assert verdict(above, name) == "agree" and verdict(below, name) == "disagree"
    assert verdict(above, name, above=False) == "disagree" and verdict(below, name, above=False) == "agree"
    assert verdict(across, name) == verdict(across, name, above=False) == "inconclusive"
    # an estimate above the threshold with an interval that reaches below it is not an agreement
    assert verdict(Interval(t + eps, t - eps, t + 2 * eps, 10), name) == "inconclusive"


def test_too_few_examples_give_no_interval_and_an_inconclusive_verdict():
    few = stats.median_ci([0.99] * (stats.MIN_N - 1))
    assert few.n == stats.MIN_N - 1 and np.isnan(few.low) and "too few" in str(few)
    assert verdict(few, "map_pcc") == "inconclusive"
    assert verdict(Interval(0.9, 0.85, 0.95, stats.MIN_N - 1), "map_pcc") == "inconclusive"
    enough = stats.median_ci([0.99] * stats.MIN_N)
    assert (enough.low, enough.high) == (0.99, 0.99) and verdict(enough, "map_pcc") == "agree"


def test_verdict_rejects_an_undeclared_threshold():
    with pytest.raises(KeyError, match="declared"):
        verdict(Interval(1, 0, 2, 10), "accuracy")


@settings(deadline=None, max_examples=30)
@given(st.lists(st.floats(-1e3, 1e3), min_size=stats.MIN_N, max_size=40))
def test_interval_brackets_the_median_within_the_data(values):
    ci = stats.median_ci(values)
    assert ci.estimate == pytest.approx(np.median(values))
    assert min(values) <= ci.low <= ci.high <= max(values)


def test_bootstrap_interval_covers_the_true_median_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = [(ci.low <= 0 <= ci.high) for ci in (stats.median_ci(rng.normal(size=40)) for _ in range(200))]
    assert 0.88 <= np.mean(covered) <= 0.995


def test_bootstrap_is_deterministic_so_the_report_can_be_rederived():
    v = np.random.default_rng(0).normal(size=20)
    assert stats.median_ci(v) == stats.median_ci(v)


def test_paired_bootstrap_sees_a_shift_that_unpaired_noise_hides():
    rng = np.random.default_rng(2)
    base = rng.normal(scale=5.0, size=30)  # large spread between examples
    a, b = base + 0.5, base  # every pair differs by +0.5
    paired = stats.paired_difference(a, b)
    assert paired.low == paired.high == pytest.approx(0.5) and verdict(paired, "difference") == "agree"
    unpaired_a, unpaired_b = stats.median_ci(a), stats.median_ci(b)
    assert unpaired_a.low < unpaired_b.high  # the two intervals overlap: unpaired, no conclusion
    assert verdict(stats.paired_difference(b, a), "difference") == "disagree"
    with pytest.raises(ValueError, match="same examples"):
        stats.paired_difference(a, b[:-1])


def test_paired_difference_with_the_mean():
    a, b = np.array([1.0, 0, 1, 1, 0, 1]), np.zeros(6)
    assert stats.paired_difference(a, b, np.mean).estimate == pytest.approx(4 / 6)


@pytest.mark.parametrize("parts,expected", [(["agree", "agree"], "agree"), (["agree", "inconclusive"], "inconclusive"),
                                            (["agree", "disagree"], "disagree"),
                                            (["inconclusive", "disagree"], "disagree")])
def test_combine(parts, expected):
    assert combine(parts) == expected


def test_describe_labels_percentiles_and_interval():
    text = stats.describe(np.arange(10.0))
    assert "95% CI" in text and "10th-90th percentile" in text and "n=10" in text


@given(st.lists(st.tuples(st.integers(0, 6), st.floats(-5, 5)), min_size=3, max_size=30))
@settings(max_examples=40, deadline=None)
def test_spearman_estimate_is_scipys(points):
    from scipy.stats import spearmanr

    x, y = (np.array(v, dtype=float) for v in zip(*points))
    ci = stats.spearman_ci(x, y)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return  # rho is undefined for a constant coordinate
    assert ci.estimate == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    if np.isfinite(ci.low):
        assert ci.low - 1e-12 <= ci.estimate <= ci.high + 1e-12 or ci.high - ci.low < 1e-9


def test_spearman_verdict_sees_a_trend_and_its_reverse_and_not_noise():
    """The depth study's verdict can fail: a falling quantity disagrees, pure noise is inconclusive."""
    depth = np.repeat([4, 8, 11, 13, 16, 19], 3).astype(float)
    noise = np.random.default_rng(0).normal(scale=0.3, size=depth.size)
    assert verdict(stats.spearman_ci(depth, depth / 10 + noise), "spearman") == "agree"
    assert verdict(stats.spearman_ci(depth, -depth / 10 + noise), "spearman") == "disagree"
    unrelated = np.random.default_rng(3).normal(size=depth.size)  # sample rho 0.03: no trend to find
    assert verdict(stats.spearman_ci(depth, unrelated), "spearman") == "inconclusive"
    assert not np.isfinite(stats.spearman_ci([1, 2, 3], [1, 2, 3]).low)  # fewer than MIN_N points: no interval
